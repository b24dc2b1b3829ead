"""No traceback ever reaches a visitor: an unexpected error shows one sentence and an id, and its
trace goes to the server's log under that id. Bad input (QuantvizError) shows its own sentence.

On a server that listens beyond this machine, paths of the server are cut out of messages (only the
file's name is kept), unless the operator named a folder visitors may open (ui.config).
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import streamlit as st

from quantviz.errors import QuantvizError
from ui.config import LOCAL_ADDRESSES, app_config

LOG = logging.getLogger("quantviz.app")
P = ParamSpec("P")
R = TypeVar("R")
# an absolute path (POSIX or Windows) inside a message: keep its last part
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()]+){2,}")


def _local() -> bool:
    return str(st.get_option("server.address") or "") in LOCAL_ADDRESSES


def public(message: str) -> str:
    """The message as a visitor may see it: server paths reduced to file names off localhost."""
    if _local():
        return message
    return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], message)


def unexpected(exc: BaseException) -> str:
    """Log the trace under a new id; the sentence the page shows."""
    error_id = uuid.uuid4().hex[:8]
    LOG.error("unexpected error %s", error_id, exc_info=exc)
    return (
        f"Something went wrong here (error id {error_id}); what you did before is kept, and the server's log "
        "has the details under that id."
    )


def run_guarded(run: Callable[[], object]) -> None:
    """Run a page: bad input shows its sentence, anything else one sentence and an id."""
    try:
        run()
    except QuantvizError as exc:
        st.error(public(str(exc)))
    except Exception as exc:
        if app_config().debug:
            raise
        st.error(unexpected(exc))


def callback(fn: Callable[P, R]) -> Callable[P, R | None]:
    """A widget callback guarded like a page (callbacks run before the page, outside run_guarded)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        from ui.state import flash

        try:
            return fn(*args, **kwargs)
        except QuantvizError as exc:
            flash("error", public(str(exc)))
        except Exception as exc:
            if app_config().debug:
                raise
            flash("error", unexpected(exc))
        return None

    return wrapper
