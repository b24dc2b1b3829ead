"""AppTests run the app in development mode: an unexpected error raises (AppTest shows it in
at.exception) instead of becoming one sentence and an id, as it does for visitors (ui/errors.py,
tested in tests/app/test_errors.py)."""

from __future__ import annotations

import pytest

from ui.config import ENV_DEBUG


@pytest.fixture(autouse=True)
def _debug_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DEBUG, "1")
