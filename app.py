"""quantviz: the app's entry point. It names the pages (Home first, so the sidebar says "Home" and not
the file's name) and runs the one the browser asked for, guarded: a visitor never sees a traceback
(ui/errors.py). Home (pages/0_Home.py) chooses the model and the calibration set and runs the
collection; the other pages read the statistics collected there."""

from __future__ import annotations

import streamlit as st

from ui.config import app_config
from ui.errors import run_guarded

st.set_page_config(page_title="quantviz", page_icon=":material/insights:", layout="wide")
if not app_config().debug:  # whatever escapes the guards shows Streamlit's generic sentence, no trace
    st.set_option("client.showErrorDetails", "none")
PAGES = [
    st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Distributions.py", title="Distributions", icon=":material/bar_chart:"),
    st.Page("pages/2_KL_curves.py", title="KL curves", icon=":material/show_chart:"),
    st.Page("pages/3_Layer_sensitivity.py", title="Layer sensitivity", icon=":material/troubleshoot:"),
    st.Page("pages/4_Export.py", title="Export", icon=":material/download:"),
    st.Page("pages/5_Mixed_precision.py", title="Mixed precision", icon=":material/tune:"),
]
run_guarded(st.navigation(PAGES).run)
