"""quantviz: look inside INT8 post-training quantization.

The engine (this package) never imports streamlit: the app (app.py, pages/) and the command line
(``python -m quantviz``) are two front ends over the same functions.
"""

from __future__ import annotations

__version__ = "0.1.0"
