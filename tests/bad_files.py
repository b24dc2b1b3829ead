"""Valid files of every kind quantviz reads, and ways to damage them (for the bad-input corpus, the
fuzzing and the memory-capped tests). Everything is built from a tiny Conv-BN-Relu model in a folder."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.export.registry import ExportOptions, export_bytes
from quantviz.model import load_model
from quantviz.review import Review, review_bytes
from quantviz.stats import CalibrationStats, save_stats
from quantviz.table import calibrate, calibrate_model
from tests import graphs

BINS = 64
FINE_BINS = 256


@dataclass(frozen=True)
class Valid:
    """Valid files of every kind, in one folder."""

    dir: Path
    model: Path
    data: Path
    stats: Path
    table: Path
    stats_obj: CalibrationStats
    files: dict[str, bytes]  # format name -> valid bytes (json, csv, trt, ort-json, ort-cache, ort-flatbuffers, ncnn, qdq)


def build(folder: Path) -> Valid:
    proto = graphs.conv_bn_relu(seed=9)
    model_path = folder / "m.onnx"
    onnx.save_model(proto, str(model_path))
    # a model whose input declares 4e12 values per sample (synthetic data must refuse it)
    onnx.save_model(graphs.identity_graph(["N", 100000, 100000, 100]), str(folder / "huge_input.onnx"))
    x = np.random.default_rng(9).standard_normal((6, 3, 8, 8)).astype(np.float32)
    data = folder / "d.npz"
    np.savez(data, x=x)
    model = load_model(model_path)
    stats = collect(model, open_source(data, model.inputs), CollectConfig(bins=BINS, fine_bins=FINE_BINS, batch_size=3))
    stats_path = folder / "s.npz"
    save_stats(stats, stats_path)
    table = calibrate_model(model, stats, "minmax")
    opts = ExportOptions(model=model)
    files = {fmt: export_bytes(table, fmt, opts) for fmt in ("json", "csv", "trt", "ort-json", "ort-cache", "ort-flatbuffers", "ncnn", "qdq")}
    files["stats"] = stats_path.read_bytes()
    files["review"] = review_bytes(stats, Review().with_choice("relu_out", override=1.5, note="n"))
    table_path = folder / "t.json"
    table_path.write_bytes(files["json"])
    # a plain table without the model's parts, for formats that need no model
    files["json-plain"] = export_bytes(calibrate(stats, "minmax"), "json")
    return Valid(folder, model_path, data, stats_path, table_path, stats, files)


# --- .npz surgery ---------------------------------------------------------------------------------


def npz_arrays(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def npz(arrays: dict[str, np.ndarray], compressed: bool = True) -> bytes:
    buf = io.BytesIO()
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def header_of(arrays: dict[str, np.ndarray], key: str = "header") -> dict[str, Any]:
    header: dict[str, Any] = json.loads(str(arrays[key]))
    return header


def with_header(raw: bytes, change: Callable[[dict[str, Any]], object], key: str = "header") -> bytes:
    a = npz_arrays(raw)
    h = header_of(a, key)
    change(h)
    a[key] = np.array(json.dumps(h))
    return npz(a)


def with_header_text(raw: bytes, text: str, key: str = "header") -> bytes:
    a = npz_arrays(raw)
    a[key] = np.array(text)
    return npz(a)


def with_arrays(raw: bytes, change: Callable[[dict[str, np.ndarray]], object]) -> bytes:
    a = npz_arrays(raw)
    change(a)
    return npz(a)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_of(members: dict[str, bytes], deflate: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def huge_declared(name: str = "x") -> bytes:
    """A tiny .npz whose member declares a 256 TiB float32 array."""
    return zip_of({f"{name}.npy": npy_header((1 << 46,))})


class _ZeroBlocks:
    """A deflate compressor for zipfile that compresses each 16 MB block of zeros once: every block is
    ended with a full flush, so its compressed bytes do not depend on what came before and can be
    repeated. The stream stays a valid deflate stream that really expands to every zero."""

    def __init__(self, zero: bytes) -> None:
        self._c = zlib.compressobj(9, zlib.DEFLATED, -15)
        self._zero = zero
        self._block: bytes | None = None
        self._flushed = False

    def compress(self, data: bytes) -> bytes:
        if data is self._zero and self._block is not None:
            return self._block
        out = self._c.compress(data) + self._c.flush(zlib.Z_FULL_FLUSH)
        if data is self._zero and self._flushed:  # the first flush also emits what came before
            self._block = out
        self._flushed = True
        return out

    def flush(self) -> bytes:
        return self._c.flush()


def zip_bomb(name: str = "x", gib: float = 3.0) -> bytes:
    """A few MB of .npz whose one member declares (and really decompresses to) gib GiB of zeros, built
    in about a second without ever holding the whole in memory."""
    zero = bytes(1 << 24)
    per_sample = 3 * 8 * 8 * 4
    samples = (int(gib * (1 << 30)) // len(zero)) * len(zero) // per_sample
    body = samples * per_sample
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        f._compressor = _ZeroBlocks(zero)  # type: ignore[attr-defined]  # noqa: SLF001 - see _ZeroBlocks
        f.write(npy_header((samples, 3, 8, 8)))
        for _ in range(body // len(zero)):
            f.write(zero)
    return buf.getvalue()


def flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at % len(b)] ^= 0xFF
    return bytes(b)


def member_data_middle(raw: bytes, member: str) -> int:
    """Offset of the middle of a zip member's compressed data (after its local header)."""
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo(member)
    lengths: tuple[int, int] = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    name_len, extra_len = lengths
    return info.header_offset + 30 + name_len + extra_len + info.compress_size // 2


def trt_line(hex_scale: str) -> bytes:
    return f"TRT-8601-EntropyCalibration2\nrelu_out: {hex_scale}\n".encode()


def f32_hex(v: float) -> str:
    return struct.pack(">f", v).hex()
