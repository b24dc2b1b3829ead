"""Table formats: one module per format, each with write_* and read_*."""
