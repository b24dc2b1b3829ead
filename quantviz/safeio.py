"""Bounded readers and checked writers for every file a user hands quantviz or asks it to write.

Why not np.load for .npz: it decompresses each member whole and allocates whatever shape the member's
header declares, so a 3 MB zip bomb grows to gigabytes and a 308-byte file declaring a 256 TiB array
ends in a MemoryError. Here every member's .npy header is read first, its declared size checked against
quantviz.limits BEFORE the array is allocated, and the member is then decompressed in chunks into that
array, never past the declared size (more data than declared, or less, is a damaged file). Object
arrays (pickles) are refused from the header alone.

JSON: the size, the nesting depth (counted before parsing, so the decoder never recurses deeply) and
the length of every number (parse_int / parse_float hooks: Python's int() of a 5000-digit string is
refused by the interpreter itself with a ValueError) are bounded.

Output paths are checked before the work starts (the folder exists, is a folder, can be written; the
path is not a folder) and the bytes are written exactly at the path given, through a temporary file in
the same folder and a rename, so a failed write never leaves half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from quantviz.errors import QuantvizError
from quantviz.limits import (
    JSON_BYTES,
    JSON_DEPTH,
    JSON_NUMBER_DIGITS,
    NPZ_MEMBERS,
    NPZ_RATIO_FREE_BYTES,
    NPZ_RATIO_MAX,
    LimitError,
    size_text,
)

CHUNK = 1 << 22  # bytes decompressed at a time
NPY_HEADER_MAX = 10_000  # numpy's own default bound on an .npy header

Source = str | Path | bytes | bytearray | memoryview | BinaryIO


# --- .npy / .npz ------------------------------------------------------------------------------------


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= int(d)  # Python ints: no overflow however large the declared dimensions
    return n


def _read_header(fp: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise QuantvizError(f"{what} is not a readable .npy file (it is not in numpy's format: {_short(exc)}).") from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=NPY_HEADER_MAX)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=NPY_HEADER_MAX)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        raise QuantvizError(f"{what} is damaged: an array header cannot be read ({_short(exc)}).") from None
    if dtype.hasobject:
        raise QuantvizError(f"{what} holds Python objects (pickles), which quantviz never loads: save plain numeric arrays.")
    if any(int(d) < 0 for d in shape):
        raise QuantvizError(f"{what} is damaged: an array declares a negative dimension {shape}.")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _short(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0]
    return (text[:120] + "...") if len(text) > 120 else (text or type(exc).__name__)


def _read_body(fp: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype, what: str) -> np.ndarray:
    """The array's bytes, read in chunks into an array of the declared size: never more."""
    nbytes = _declared_bytes(shape, dtype)
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        chunk = fp.read(min(CHUNK, nbytes - got))
        if not chunk:
            raise QuantvizError(f"{what} is damaged: an array holds fewer bytes than its header declares (truncated file).")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    if fp.read(1):
        raise QuantvizError(f"{what} is damaged: an array holds more bytes than its header declares.")
    arr = np.frombuffer(buf, dtype=dtype)
    if fortran:
        return arr.reshape(shape[::-1]).transpose()
    return arr.reshape(shape)


def read_npy(source: Source, what: str, *, array_bytes: int, mmap: bool = False) -> np.ndarray:
    """One .npy: its header checked (no pickles, declared size <= array_bytes) before the data is read.
    mmap=True with a path maps the file instead of reading it (no allocation at all)."""
    if isinstance(source, str | Path):
        p = Path(source)
        try:
            with p.open("rb") as f:
                shape, fortran, dtype = _read_header(f, what)
                _check_size(shape, dtype, array_bytes, what)
                if mmap:
                    need = f.tell() + _declared_bytes(shape, dtype)
                    if p.stat().st_size < need:
                        raise QuantvizError(f"{what} is damaged: it holds fewer bytes than its header declares (truncated file).")
                    mapped: np.ndarray = np.load(p, allow_pickle=False, mmap_mode="r")
                    return mapped
                return _read_body(f, shape, fortran, dtype, what)
        except OSError as exc:
            raise QuantvizError(f"{what} cannot be read ({exc.strerror or _short(exc)}).") from None
    stream = _as_stream(source)
    shape, fortran, dtype = _read_header(stream, what)
    _check_size(shape, dtype, array_bytes, what)
    return _read_body(stream, shape, fortran, dtype, what)


def _check_size(shape: tuple[int, ...], dtype: np.dtype, limit: int, what: str, name: str = "") -> int:
    nbytes = _declared_bytes(shape, dtype)
    if nbytes > limit:
        label = f"its array '{name}'" if name else "its array"
        raise LimitError(
            f"{what} is refused: {label} declares shape {shape} of {dtype}, {size_text(nbytes)} once decompressed, "
            f"beyond quantviz's limit of {size_text(limit)} per array."
        )
    return nbytes


def _as_stream(source: Source) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    return source  # type: ignore[return-value]


def read_npz(
    source: Source,
    what: str,
    *,
    array_bytes: int,
    total_bytes: int,
    only: Callable[[str], bool] | None = None,
    kind: str = ".npz file",
) -> dict[str, np.ndarray]:
    """Every array of an .npz (name without '.npy'), each member's declared size checked against
    array_bytes and the running total against total_bytes before it is allocated; decompression is
    bounded by the declared size. only: read just the members whose name it accepts."""
    try:
        zf = zipfile.ZipFile(Path(source) if isinstance(source, str) else _as_stream(source))
    except FileNotFoundError:
        raise QuantvizError(f"{what} does not exist.") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise QuantvizError(
            f"{what} is not a readable {kind} (it may be truncated or another file type: {_short(exc)})."
        ) from None
    out: dict[str, np.ndarray] = {}
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > NPZ_MEMBERS:
            raise LimitError(f"{what} is refused: it holds {len(infos)} members, beyond quantviz's limit of {NPZ_MEMBERS}.")
        for info in infos:
            if info.is_dir():
                continue
            key = info.filename.removesuffix(".npy")
            if only is not None and not only(key):
                continue
            if key in out:
                raise QuantvizError(f"{what} is damaged: it holds the array '{key}' twice.")
            try:
                with zf.open(info) as member:
                    shape, fortran, dtype = _read_header(member, f"{what} (array '{key}')")
                    nbytes = _check_size(shape, dtype, array_bytes, what, key)
                    if info.compress_type != zipfile.ZIP_STORED and nbytes > NPZ_RATIO_FREE_BYTES and nbytes > NPZ_RATIO_MAX * info.compress_size:
                        raise LimitError(
                            f"{what} is refused: its array '{key}' would expand from {size_text(info.compress_size)} to "
                            f"{size_text(nbytes)}, more than {NPZ_RATIO_MAX} times (a zip bomb?); save real data with np.savez."
                        )
                    total += nbytes
                    if total > total_bytes:
                        raise LimitError(
                            f"{what} is refused: its arrays take more than {size_text(total_bytes)} once decompressed "
                            "(quantviz's limit for one file)."
                        )
                    out[key] = _read_body(member, shape, fortran, dtype, f"{what} (array '{key}')")
            except QuantvizError:
                raise
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                raise QuantvizError(f"{what} is damaged: the array '{key}' cannot be decompressed ({_short(exc)}).") from None
    return out


def read_member(zf: zipfile.ZipFile, name: str, what: str, limit: int) -> bytes:
    """One member of a zip, decompressed up to limit bytes: beyond it the member is refused."""
    try:
        with zf.open(name) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise QuantvizError(f"{what} is damaged: '{name}' cannot be decompressed ({_short(exc)}).") from None
    if len(data) > limit:
        raise LimitError(
            f"{what} is refused: '{name}' decompresses to more than {size_text(limit)} (quantviz's limit per image)."
        )
    return data


# --- JSON -------------------------------------------------------------------------------------------

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of [ and { outside strings (counted in numpy, linear in the size)."""
    body = _STRINGS.sub(b'""', raw)
    a = np.frombuffer(body, dtype=np.uint8)
    step = np.zeros(a.size, dtype=np.int32)
    step[(a == ord("[")) | (a == ord("{"))] = 1
    step[(a == ord("]")) | (a == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


def _number_hook(kind: type, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > JSON_NUMBER_DIGITS:
            raise LimitError(
                f"{what} is refused: it holds a number written with {len(text)} characters, beyond quantviz's limit of {JSON_NUMBER_DIGITS}."
            )
        return kind(text)

    return parse


def load_json(data: str | bytes, what: str, *, max_bytes: int = JSON_BYTES) -> Any:
    """json.loads with limits on size, nesting depth and number length; every failure is one sentence."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise LimitError(
            f"{what} is refused: it is {size_text(len(raw))}, beyond quantviz's limit of {size_text(max_bytes)} for JSON."
        )
    depth = json_depth(raw)
    if depth > JSON_DEPTH:
        raise LimitError(f"{what} is refused: it nests {depth} levels deep, beyond quantviz's limit of {JSON_DEPTH}.")
    try:
        text = data if isinstance(data, str) else raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QuantvizError(f"{what} is not UTF-8 text (byte {exc.start} cannot be decoded).") from None
    try:
        return json.loads(text, parse_int=_number_hook(int, what), parse_float=_number_hook(float, what))
    except QuantvizError:
        raise
    except json.JSONDecodeError as exc:
        raise QuantvizError(f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    except RecursionError:
        raise LimitError(f"{what} is refused: it nests too deeply.") from None
    except ValueError as exc:  # the interpreter's own limit on int digits, surrogates
        raise QuantvizError(f"{what} is not valid JSON ({_short(exc)}).") from None


def finite_float(value: Any, where: str) -> float:
    """A JSON number as a float (bools and text refused); not checked for finiteness (see schema)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuantvizError(f"{where} must be a number, not {json.dumps(value)[:40]}.")
    try:
        v = float(value)
    except OverflowError:
        raise QuantvizError(f"{where} is a number too large for a double.") from None
    if not math.isfinite(v):
        raise QuantvizError(f"{where} must be a finite number, not {v}.")
    return v


# --- output paths -----------------------------------------------------------------------------------


def check_output(path: str | Path, what: str = "output file", *, folder_ok: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder (unless folder_ok),
    a missing or non-folder parent, a parent where no file can be created, an existing non-file.
    Returns the path unchanged."""
    p = Path(path)
    if (str(path) == "" or p.name in ("", ".", "..")) and not folder_ok:
        raise QuantvizError(f"The {what} '{path}' names a folder, not a file: give a file name.")
    if p.is_dir():
        if folder_ok:
            _check_writable_folder(p, what, path)
            return p
        raise QuantvizError(f"The {what} '{path}' is an existing folder: give a file name (for example '{p / 'out'}').")
    if str(path).endswith(("/", os.sep)):
        raise QuantvizError(f"The {what} '{path}' names a folder, not a file: give a file name.")
    parent = p.parent
    if not parent.exists():
        raise QuantvizError(f"The folder of the {what} '{path}' does not exist: create it or choose another path.")
    if not parent.is_dir():
        raise QuantvizError(f"The {what} '{path}' is inside '{parent}', which is not a folder.")
    if p.exists() and not p.is_file():
        raise QuantvizError(f"The {what} '{path}' exists and is not a regular file: choose another path.")
    _check_writable_folder(parent, what, path)
    return p


def _check_writable_folder(folder: Path, what: str, path: str | Path) -> None:
    try:  # os.access says yes to root everywhere; creating a file is the real test
        fd, probe = tempfile.mkstemp(prefix=".quantviz-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise QuantvizError(
            f"The {what} '{path}' cannot be written: no file can be created in '{folder}' ({exc.strerror or exc})."
        ) from None


def write_bytes(path: str | Path, data: bytes, what: str = "output file") -> Path:
    """Write data at exactly this path (never a changed name), through a temporary file and a rename."""
    p = Path(path)
    check_output(path, what)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:40]}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        tmp = None
    except OSError as exc:
        raise QuantvizError(f"The {what} '{path}' cannot be written ({exc.strerror or exc}).") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return p


def write_text(path: str | Path, text: str, what: str = "output file") -> Path:
    return write_bytes(path, text.encode("utf-8"), what)


def read_input_bytes(path: str | Path, what: str, limit: int) -> bytes:
    """A file's bytes, refused when missing, a folder, unreadable or larger than limit."""
    p = Path(path)
    if not p.exists():
        raise QuantvizError(f"The {what} '{path}' does not exist.")
    if not p.is_file():
        raise QuantvizError(f"The {what} '{path}' is not a file.")
    try:
        size = p.stat().st_size
        if size > limit:
            raise LimitError(
                f"The {what} '{path}' is refused: it is {size_text(size)}, beyond quantviz's limit of {size_text(limit)}."
            )
        return p.read_bytes()
    except OSError as exc:
        raise QuantvizError(f"The {what} '{path}' cannot be read ({exc.strerror or exc}).") from None
