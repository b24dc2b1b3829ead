"""Streamlit helpers shared by app.py and pages/: session keys and caches live here, once."""
