"""Every resource limit on what a user hands quantviz, in one place (the CLI and the app enforce them).

A file or a request beyond one of these is refused with a LimitError (a QuantvizError: one sentence,
exit status 2 on the command line, st.error in the app) BEFORE the memory or time is spent: sizes that
a file declares (an .npz member's shape, a histogram's bins, a JSON document's length) are checked
against these figures before anything of that size is allocated.

The figures are generous for real work (a 1000-image ImageNet calibration set in float32 is 600 MB;
statistics of a 5000-tensor model with 16384 fine bins are 650 MB) and small enough that one request
cannot take a 16 GB server down.
"""

from __future__ import annotations

from quantviz.errors import QuantvizError

MB = 1 << 20
GB = 1 << 30

# Uploads through the app (streamlit's server.maxUploadSize in .streamlit/config.toml says the same).
UPLOAD_LIMIT_MB = 1024
UPLOAD_BYTES = UPLOAD_LIMIT_MB * MB

# Calibration data (.npz / .npy): bytes one array may take once decompressed, and all arrays together.
DATA_ARRAY_BYTES = 4 * GB
DATA_TOTAL_BYTES = 4 * GB
# Statistics and review files (.npz): their arrays are histograms, far smaller than calibration data.
STATS_ARRAY_BYTES = 2 * GB
STATS_TOTAL_BYTES = 2 * GB
# Files and folders a calibration image folder may hold (--data / would walk the whole disk).
FOLDER_ENTRIES_MAX = 1_000_000
# One image file of a calibration folder or .zip, decompressed.
IMAGE_BYTES = 256 * MB
# A compressed .npz member that declares more than NPZ_RATIO_FREE_BYTES must not expand more than
# NPZ_RATIO_MAX times its compressed size: real calibration arrays compress 1-10x; a 3 MB member that
# expands to 3 GB is a zip bomb, refused before anything is decompressed. (Store such an array with
# np.savez, uncompressed, if it really is mostly zeros.)
NPZ_RATIO_MAX = 200
NPZ_RATIO_FREE_BYTES = 64 * MB
# Members of one .npz (a file with a million tiny members is a denial of service, not data).
NPZ_MEMBERS = 10_000

# Histograms: bins of the |x| and signed histograms, and of the fine |x| one KL re-bins.
HIST_BINS_MAX = 1 << 16
FINE_BINS_MAX = 1 << 18
# Candidates one EQ search may evaluate per layer (--eq-n), and its rounds. MSE, KL and percentile
# search over histogram bins, bounded by HIST_BINS_MAX and by the schema's check that a tensor's range
# lies inside its histograms (what a tampered file broke: see quantviz.schema).
SEARCH_CANDIDATES_MAX = 1 << 14
EQ_ROUNDS_MAX = 100
# Batches whose min/max a statistics file keeps per tensor, in order (16 bytes a batch: 64 KB a tensor
# at most, less than its fine histogram's 128 KB). With them, the moving-average min/max of merged
# statistics is recomputed bit for bit as one stream would have (quantviz.stats); a tensor that has
# seen more batches drops its record and merges its moving average to rounding only (the bound keeps
# a 400-tensor file under 26 MB more; at batch 8 it covers 32768 samples).
BATCH_RECORD_MAX = 4096
# Tensors one model, statistics file, review or table may hold.
TENSORS_MAX = 200_000
# Analysis runs a review file may hold (quantviz.runs; the app keeps the last few per model).
RUNS_MAX = 100

# JSON documents (tables, reviews, statistics headers, onnxruntime calibration.json).
JSON_BYTES = 256 * MB
JSON_DEPTH = 64
JSON_NUMBER_DIGITS = 400  # a double needs at most 17 significant digits; 400 covers any printed form

# Text tables (TensorRT cache, ncnn, CSV, onnxruntime cache) and ONNX files read for import.
TABLE_BYTES = 4 * GB  # a QDQ model is a table too (it holds the weights)
MODEL_BYTES = 4 * GB


class LimitError(QuantvizError):
    """A request or a file beyond one of quantviz's resource limits."""


def check_at_most(value: int, limit: int, sentence: str) -> None:
    """Raise LimitError(sentence) when value > limit (sentence may use {value} and {limit})."""
    if value > limit:
        raise LimitError(sentence.format(value=value, limit=limit))


def size_text(n: int) -> str:
    """Bytes for a message: 3.2 GB, 512 MB, 900 bytes."""
    if n >= GB:
        return f"{n / GB:.1f} GB"
    if n >= MB:
        return f"{n / MB:.0f} MB"
    return f"{n} bytes"
