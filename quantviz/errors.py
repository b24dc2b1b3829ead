"""One exception type for bad input: its message is a sentence the user can act on.

The app shows it with st.error, the command line prints it and exits with status 2.
"""

from __future__ import annotations


class QuantvizError(ValueError):
    """Bad input from the user (a file, a setting, a table): the message says what and how to fix it."""


class CancelledError(RuntimeError):
    """The user cancelled a long operation (collection, analysis)."""
