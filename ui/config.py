"""The app's own settings, each default once: memory limits of the stores, where paths may be typed,
and whether errors show their trace. The operator sets them with environment variables (README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SESSION_LIMIT_MB = 1024  # what one browser session may hold (its statistics, data, analyses, exports)
SHARED_MODELS_LIMIT_MB = 2048  # read-only models shared by content hash between sessions
LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")

ENV_SESSION_LIMIT = "QUANTVIZ_SESSION_LIMIT_MB"
ENV_SHARED_LIMIT = "QUANTVIZ_SHARED_MODELS_LIMIT_MB"
ENV_PATHS_UNDER = "QUANTVIZ_PATHS_UNDER"  # a folder whose files visitors may open by path on any binding
ENV_DEBUG = "QUANTVIZ_DEBUG"  # "1": unexpected errors show their trace in the page (development only)


@dataclass(frozen=True)
class AppConfig:
    session_limit_bytes: int = SESSION_LIMIT_MB * 2**20
    shared_models_limit_bytes: int = SHARED_MODELS_LIMIT_MB * 2**20
    paths_under: Path | None = None
    debug: bool = False


def _megabytes(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = default
    return max(value, 1) * 2**20


def app_config() -> AppConfig:
    """The settings as the environment gives them now."""
    root = os.environ.get(ENV_PATHS_UNDER, "").strip()
    return AppConfig(
        session_limit_bytes=_megabytes(ENV_SESSION_LIMIT, SESSION_LIMIT_MB),
        shared_models_limit_bytes=_megabytes(ENV_SHARED_LIMIT, SHARED_MODELS_LIMIT_MB),
        paths_under=Path(root).resolve() if root else None,
        debug=os.environ.get(ENV_DEBUG, "") == "1",
    )
