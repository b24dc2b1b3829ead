"""Calibration sources: .npz, .npy, a folder or .zip of images with preprocessing, synthetic:N.

A source yields batches (dict input name -> array, first axis = samples) and never needs the whole
set in memory at once: .npy files are memory-mapped, images are decoded one batch at a time. (An .npz
member is decompressed when first read: numpy offers no memory map into a zip.)
Every source is checked against the model's inputs; a mismatch names the input, the expected and the
given shape or dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quantviz.errors import CancelledError, QuantvizError
from quantviz.limits import DATA_ARRAY_BYTES, DATA_TOTAL_BYTES, FOLDER_ENTRIES_MAX, IMAGE_BYTES, LimitError, size_text
from quantviz.model import InputSpec, batch_dim
from quantviz.safeio import read_member, read_npy, read_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_SEED = 0
MAX_SYNTHETIC = 100_000

Batch = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class ImagePreprocess:
    """How images become a model input: x = ((pixels * scale) - mean) / std, per channel.

    size: (height, width), or None to take it from the model input's shape.
    color: "rgb", "bgr" or "gray". layout: "nchw" or "nhwc".
    """

    size: tuple[int, int] | None = None
    color: str = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.color not in ("rgb", "bgr", "gray"):
            raise QuantvizError(f"Colour order must be rgb, bgr or gray, not '{self.color}'.")
        if self.layout not in ("nchw", "nhwc"):
            raise QuantvizError(f"Layout must be nchw or nhwc, not '{self.layout}'.")
        if any(s == 0 for s in self.std):
            raise QuantvizError("A standard deviation of 0 would divide by zero; give std values other than 0.")


@dataclass(frozen=True)
class DataOrigin:
    """What open_source was given for a source it can open again: an absolute path or synthetic:N."""

    location: str
    preprocess: ImagePreprocess


# How each model input is fed (decided from the data's ranks against the model's, see _layout):
BATCHED = "batched"  # samples on the input's own first axis: runs take --batch-size samples
PER_SAMPLE = "per sample"  # one more leading axis than the input: each sample's value fed whole, batch 1
CONSTANT = "constant"  # a 0-d array for a 0-d input (a sample rate): the same value in every run


@dataclass(frozen=True)
class CalibrationSource:
    """A checked calibration set: samples are fetched by index range, one batch at a time.

    fetch(start, stop) returns the samples' arrays (samples on axis 0) of the batched and per-sample
    inputs; batches() turns them into what the model is fed: per-sample inputs indexed (every run is then
    one sample), constants added. layout: input name -> BATCHED, PER_SAMPLE or CONSTANT (empty: all batched).
    first: where sample 0 of this source lies in the data it was cut from (sample_range); description
    and data_id are the whole data's. origin: how to open the same data again (None for uploads).
    """

    description: str
    data_id: str
    num_samples: int
    synthetic: bool
    fetch: Callable[[int, int], Batch] = field(repr=False, compare=False)
    layout: Mapping[str, str] = field(default_factory=dict, compare=False)
    constants: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict, repr=False, compare=False)
    first: int = 0
    origin: DataOrigin | None = field(default=None, compare=False)

    @property
    def one_sample_per_run(self) -> bool:
        """True when an input is held per sample: every run then takes one sample, whatever the batch size."""
        return PER_SAMPLE in self.layout.values()

    def run_size(self, batch_size: int) -> int:
        return 1 if self.one_sample_per_run else batch_size

    def batches(self, batch_size: int, limit: int | None = None, first: int = 0) -> Iterator[Batch]:
        """Batches of the samples first..limit (all by default)."""
        n = self.num_samples if limit is None else min(limit, self.num_samples)
        step = self.run_size(batch_size)
        per_sample = [k for k, v in self.layout.items() if v == PER_SAMPLE]
        for start in range(first, n, step):
            batch = self.fetch(start, min(start + step, n))
            if per_sample or self.constants:
                batch = {**{k: (v[0] if k in per_sample else v) for k, v in batch.items()}, **self.constants}
            yield batch

    def samples_in(self, batch: Batch) -> int:
        """How many samples a batch from batches() holds."""
        if self.one_sample_per_run:
            return 1
        batched = [k for k in batch if self.layout.get(k, BATCHED) == BATCHED]
        return int(batch[batched[0]].shape[0]) if batched else 1


def sample_range(source: CalibrationSource, start: int, stop: int) -> CalibrationSource:
    """The samples start..stop-1 of a source as a source of their own (a shard: `collect --range`, the
    Ray collection); nothing is read until a batch is fetched."""
    if not 0 <= start < stop:
        raise QuantvizError(f"A sample range needs 0 <= START < STOP, not {start}:{stop}.")
    if start >= source.num_samples:
        raise QuantvizError(
            f"The sample range {start}:{stop} starts beyond the {source.num_samples} samples of {source.description}."
        )
    stop = min(stop, source.num_samples)
    parent = source.fetch

    def fetch(a: int, b: int) -> Batch:
        return parent(start + a, start + b)

    return dataclasses.replace(source, num_samples=stop - start, fetch=fetch, first=source.first + start)


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None or isinstance(d, str) else str(d) for d in shape) + "]"


def _dims_text(spec: InputSpec) -> str:
    return f"{len(spec.shape)} dimension{'s' if len(spec.shape) != 1 else ''}"


def _layout(spec: InputSpec, arr: np.ndarray, origin: str) -> str:
    """How an array feeds an input, from its rank against the input's (see BATCHED, PER_SAMPLE, CONSTANT)."""
    rank = len(spec.shape)
    if arr.ndim == 0:
        if rank == 0:
            return CONSTANT
        raise QuantvizError(
            f"Input '{spec.name}' expects shape {spec.shape_text()} but {origin} holds a single value (0-d) for it; "
            "give one array with the samples on its first axis."
        )
    if arr.ndim == rank + 1:
        return PER_SAMPLE
    if arr.ndim == rank or rank == 0:  # rank 0: a model that does not declare the shape
        return BATCHED
    raise QuantvizError(
        f"Input '{spec.name}' expects shape {spec.shape_text()} but {origin} has shape {_shape_text(arr.shape)} "
        f"({arr.ndim} dimensions instead of {rank}; the first axis indexes samples, or give {rank + 1} for a value per "
        "sample fed whole, e.g. a recurrent state)."
    )


def _check_array(spec: InputSpec, arr: np.ndarray, origin: str) -> str:
    """Raise QuantvizError naming the input when arr cannot feed spec; return its layout (_layout)."""
    layout = _layout(spec, arr, origin)
    if layout == BATCHED:
        pairs = [(axis, e, g) for axis, (e, g) in enumerate(zip(spec.shape, arr.shape, strict=False)) if axis > 0]
    elif layout == PER_SAMPLE:
        pairs = [(axis, e, g) for axis, (e, g) in enumerate(zip(spec.shape, arr.shape[1:], strict=True))]
    else:
        pairs = []
    for axis, e, g in pairs:
        if isinstance(e, int) and e > 0 and e != g:
            per = " per sample" if layout == PER_SAMPLE else ""
            given = arr.shape[1:] if layout == PER_SAMPLE else arr.shape
            raise QuantvizError(
                f"Input '{spec.name}' expects shape {spec.shape_text()} but {origin} has shape "
                f"{_shape_text(given)}{per} (axis {axis}: {g} instead of {e})."
            )
    want = np.dtype(spec.dtype)
    floats = np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating)
    # integers widen to the input's integer type (int32 token ids for an int64 input); never to floats,
    # where raw pixels would go in unnormalised
    ints = np.issubdtype(arr.dtype, np.integer) and np.issubdtype(want, np.integer) and np.can_cast(arr.dtype, want, "safe")
    if arr.dtype != want and not floats and not ints:
        raise QuantvizError(
            f"Input '{spec.name}' expects {want.name} values but {origin} holds {arr.dtype.name}; "
            f"convert the data to {want.name} (for images: scale and normalise as the model was trained)."
        )
    if layout != CONSTANT and arr.shape[0] == 0:
        raise QuantvizError(f"{origin} holds no samples for input '{spec.name}'.")
    return layout


LABEL_KEYS = ("label", "labels", "y", "target", "targets")  # arrays never fed to a model input


def _from_arrays(arrays: dict[str, np.ndarray], inputs: Sequence[InputSpec], origin: str, data_id: str) -> CalibrationSource:
    names = [i.name for i in inputs]
    keys = list(arrays)
    if len(inputs) == 1 and names[0] not in arrays:
        # one input: a lone array feeds it whatever its name, also beside a labels array
        data_keys = [k for k in keys if k.lower() not in LABEL_KEYS]
        if len(data_keys) == 1:
            arrays = {names[0]: arrays[data_keys[0]]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise QuantvizError(
            f"{origin} has no array for model input '{missing[0]}' (it has: {', '.join(keys) or 'nothing'}); "
            f"name the arrays after the model inputs: {', '.join(names)}."
        )
    layout = {spec.name: _check_array(spec, arrays[spec.name], origin) for spec in inputs}
    dtypes = {spec.name: np.dtype(spec.dtype) for spec in inputs}
    varying = [n for n in names if layout[n] != CONSTANT]
    if not varying:
        raise QuantvizError(f"{origin} holds only single values (0-d arrays): give at least one input with samples on its first axis.")
    counts = {n: int(arrays[n].shape[0]) for n in varying}
    if len(set(counts.values())) > 1:
        raise QuantvizError(
            f"{origin} has different sample counts per input ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
            "every input needs the same number of samples."
        )
    constants = {n: np.asarray(arrays[n], dtype=dtypes[n]) for n in names if layout[n] == CONSTANT}

    def fetch(start: int, stop: int) -> Batch:
        return {n: np.ascontiguousarray(arrays[n][start:stop], dtype=dtypes[n]) for n in varying}

    return CalibrationSource(origin, data_id, counts[varying[0]], False, fetch, layout, constants)


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_npz(raw: bytes | Path, origin: str) -> dict[str, np.ndarray]:
    """Every array, each member's declared size checked before it is allocated (quantviz.safeio)."""
    return read_npz(raw, origin, array_bytes=DATA_ARRAY_BYTES, total_bytes=DATA_TOTAL_BYTES)


def _load_npy(raw: bytes | Path, origin: str) -> np.ndarray:
    """A path is memory-mapped after its header is checked; an upload's bytes are read within limits."""
    return read_npy(raw, origin, array_bytes=DATA_ARRAY_BYTES, mmap=isinstance(raw, Path))


def _image_input(inputs: Sequence[InputSpec]) -> InputSpec:
    if len(inputs) != 1:
        raise QuantvizError(
            f"Images can feed a model with one input only; this model has {len(inputs)} "
            f"({', '.join(i.name for i in inputs)}): give an .npz with one array per input."
        )
    return inputs[0]


def _decode_image(data: bytes, name: str, spec: InputSpec, pre: ImagePreprocess) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with streamlit

    shape = spec.shape
    if pre.size is not None:
        h, w = pre.size
    elif len(shape) == 4:
        hw = shape[2:4] if pre.layout == "nchw" else shape[1:3]
        if not all(isinstance(d, int) for d in hw):
            raise QuantvizError(f"Input '{spec.name}' has no fixed height and width; give the image size (HxW).")
        h, w = int(hw[0]), int(hw[1])  # type: ignore[arg-type]
    else:
        raise QuantvizError(f"Input '{spec.name}' has shape {spec.shape_text()}, not an image batch (4 dimensions).")
    try:
        opened = Image.open(io.BytesIO(data))
        img = opened.convert("L" if pre.color == "gray" else "RGB").resize((w, h), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError) as exc:
        raise QuantvizError(f"'{name}' is not a readable image.") from exc
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if pre.color == "bgr":
        x = x[:, :, ::-1]
    x = x * np.float32(pre.scale)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    if mean.size not in (1, x.shape[2]) or std.size not in (1, x.shape[2]):
        raise QuantvizError(f"Mean and std need 1 or {x.shape[2]} values (one per channel).")
    x = (x - mean) / std
    if pre.layout == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.dtype(spec.dtype))


def _image_source(
    entries: list[tuple[str, Callable[[], bytes]]], inputs: Sequence[InputSpec], pre: ImagePreprocess, origin: str, data_id: str
) -> CalibrationSource:
    spec = _image_input(inputs)
    if not entries:
        raise QuantvizError(f"{origin} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    first = _decode_image(entries[0][1](), entries[0][0], spec, pre)
    _check_array(spec, first[None], origin)

    def fetch(start: int, stop: int) -> Batch:
        return {spec.name: np.stack([_decode_image(read(), name, spec, pre) for name, read in entries[start:stop]])}

    return CalibrationSource(origin, data_id, len(entries), False, fetch)


def _folder_entries(folder: Path) -> list[tuple[str, Callable[[], bytes]]]:
    """Image files under a folder; a walk that meets more than FOLDER_ENTRIES_MAX entries (--data /)
    is refused instead of scanning a whole file system. Symbolic links to folders are not followed."""
    found: list[Path] = []
    seen = 0
    for root, dirs, names in os.walk(folder, onerror=None):
        seen += len(dirs) + len(names)
        if seen > FOLDER_ENTRIES_MAX:
            raise LimitError(
                f"The folder '{folder}' holds more than {FOLDER_ENTRIES_MAX} files and folders: give the folder of the calibration images itself."
            )
        dirs.sort()
        found.extend(Path(root) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)
    files = sorted(p for p in found if p.is_file())
    return [(str(p.relative_to(folder)), p.read_bytes) for p in files]


def _zip_entries(raw: bytes | Path, origin: str) -> list[tuple[str, Callable[[], bytes]]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise QuantvizError(f"{origin} is not a readable .zip file.") from exc
    names = sorted(n for n in zf.namelist() if not n.endswith("/") and Path(n).suffix.lower() in IMAGE_SUFFIXES)
    # Member names are only used as keys to read from the archive, never as paths on disk; each image
    # is decompressed up to IMAGE_BYTES only (a zip bomb stops there).
    return [(n, functools.partial(read_member, zf, n, origin, IMAGE_BYTES)) for n in names]


def synthetic_source(n: int, inputs: Sequence[InputSpec]) -> CalibrationSource:
    """n samples of standard normal noise (seeded): for trying a model without data; flagged synthetic."""
    if n <= 0 or n > MAX_SYNTHETIC:
        raise QuantvizError(f"synthetic:N needs N between 1 and {MAX_SYNTHETIC}, not {n}.")
    shapes: dict[str, tuple[int, ...]] = {}
    # A fully fixed input beside one with a dynamic batch axis is taken as a state without a batch
    # axis (preflight says so): its whole shape is drawn per sample and fed whole, one sample a run.
    dynamic = any(spec.shape and batch_dim(spec) is None for spec in inputs)
    layout: dict[str, str] = {}
    for spec in inputs:
        whole = not spec.shape or (dynamic and batch_dim(spec) is not None)
        layout[spec.name] = PER_SAMPLE if whole else BATCHED
        rest = spec.shape if whole else spec.shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            raise QuantvizError(
                f"Input '{spec.name}' has dynamic dimensions {spec.shape_text()}; synthetic data needs fixed ones: give real data."
            )
        shapes[spec.name] = tuple(int(d) for d in rest)  # type: ignore[arg-type]
        per_sample = math.prod(shapes[spec.name]) * max(np.dtype(spec.dtype).itemsize, 8)  # drawn as float64
        if per_sample > DATA_ARRAY_BYTES:
            raise LimitError(
                f"Input '{spec.name}' declares {spec.shape_text()}: one synthetic sample would take {size_text(per_sample)}, "
                f"beyond quantviz's limit of {size_text(DATA_ARRAY_BYTES)} per array."
            )

    def fetch(start: int, stop: int) -> Batch:
        # One seed per (input, sample): every input gets its own noise, and sample i is the same
        # whatever the batch size (a cache keyed by data id and settings stays truthful).
        out: Batch = {}
        for k, spec in enumerate(inputs):
            shape = shapes[spec.name]
            x = np.stack([np.random.default_rng([SYNTHETIC_SEED, k, i]).standard_normal(shape) for i in range(start, stop)])
            out[spec.name] = x.astype(spec.dtype) if np.issubdtype(np.dtype(spec.dtype), np.floating) else np.zeros_like(x, dtype=spec.dtype)
        return out

    return CalibrationSource(f"synthetic:{n} (random normal data, not real)", f"synthetic:{n}", n, True, fetch, layout)


Progress = Callable[[int, int], object]  # (samples done, samples in all)
Cancel = Callable[[], bool]  # True: stop as soon as the current batch is done


def batch_loop(
    source: CalibrationSource,
    batch_size: int,
    total: int,
    what: str,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    then: Callable[[], int] | None = None,
) -> Iterator[tuple[int, Batch, int]]:
    """The one loop over batches that reports progress and can be cancelled (collection, analysis).

    Yields (samples before this batch, the batch, samples in it). progress(0, total) first, then
    progress(done, total) after each batch; before each batch, cancel() True raises CancelledError
    ("<what> cancelled after D of T samples."). With then, the first sample runs alone and then(),
    called once that batch is done, gives the batch size of the rest (quantviz.sensitivity sizes its
    batches from the first sample's outputs).
    """

    def batches() -> Iterator[Batch]:
        if then is None:
            yield from source.batches(batch_size, total)
            return
        yield from source.batches(1, min(1, total))
        yield from source.batches(then(), total, first=1)

    done = 0
    if progress:
        progress(0, total)
    for batch in batches():
        if cancel is not None and cancel():
            raise CancelledError(f"{what} cancelled after {done} of {total} samples.")
        n = source.samples_in(batch)
        yield done, batch, n
        done += n
        if progress:
            progress(done, total)


def open_source(
    source: str | Path | bytes,
    inputs: Sequence[InputSpec],
    *,
    name: str | None = None,
    preprocess: ImagePreprocess | None = None,
) -> CalibrationSource:
    """Open and check a calibration set against the model inputs.

    source: a path (.npz, .npy, .zip, a folder of images), "synthetic:N", or the bytes of an upload
    (then name gives its file name, used only for its suffix and in messages). A path or synthetic:N
    is kept as the source's origin (another process opens the same data from it: the Ray collection).
    """
    opened = _open(source, inputs, name, preprocess or ImagePreprocess())
    if isinstance(source, bytes | bytearray | memoryview):
        return opened
    where = str(source) if str(source).startswith(SYNTHETIC_PREFIX) else str(Path(source).resolve())
    return dataclasses.replace(opened, origin=DataOrigin(where, preprocess or ImagePreprocess()))


def _open(source: str | Path | bytes, inputs: Sequence[InputSpec], name: str | None, pre: ImagePreprocess) -> CalibrationSource:
    if isinstance(source, str) and source.startswith(SYNTHETIC_PREFIX):
        try:
            n = int(source[len(SYNTHETIC_PREFIX) :])
        except ValueError as exc:
            raise QuantvizError(f"'{source}' is not synthetic:N with N a whole number.") from exc
        return synthetic_source(n, inputs)
    if isinstance(source, bytes | bytearray | memoryview):
        content = bytes(source)
        raw: bytes | Path = content
        label = name or "the uploaded file"
        suffix = Path(name or "").suffix.lower()
        data_id = hashlib.sha256(content).hexdigest()
        origin = f"'{label}'"
    else:
        path = Path(source)
        if not path.exists():
            raise QuantvizError(f"The calibration data '{path}' does not exist.")
        origin = f"'{path.name}'"
        if path.is_dir():
            entries = _folder_entries(path)
            h = hashlib.sha256()
            for rel, _ in entries:
                st = (path / rel).stat()
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode())
            h.update(repr(pre).encode())
            return _image_source(entries, inputs, pre, f"folder {origin}", h.hexdigest())
        raw = path
        suffix = path.suffix.lower()
        data_id = _sha_file(path)
    if suffix == ".npz":
        return _from_arrays(_load_npz(raw, origin), inputs, origin, data_id)
    if suffix == ".npy":
        arr = _load_npy(raw, origin)
        if len(inputs) != 1:
            raise QuantvizError(f"A .npy file can feed a model with one input only; this model has {len(inputs)}: use an .npz.")
        return _from_arrays({inputs[0].name: arr}, inputs, origin, data_id)
    if suffix == ".zip":
        return _image_source(_zip_entries(raw, origin), inputs, pre, origin, hashlib.sha256((data_id + repr(pre)).encode()).hexdigest())
    raise QuantvizError(
        f"{origin} is not a calibration set quantviz reads: give an .npz, an .npy, a .zip or folder of images, or synthetic:N."
    )


# ---------------------------------------------------------------------------------------------
# Labels (the accuracy of an analysis)


DEFAULT_LABEL_KEY = "label"


def read_labels(spec: str | Path) -> npt.NDArray[Any]:
    """Labels from "FILE.npz:key", "FILE.npz" (key "label") or "FILE.npy": one class index per sample."""
    text = str(spec)
    path, key = Path(text), None
    if not path.exists() and ":" in text:
        head, _, tail = text.rpartition(":")
        path, key = Path(head), tail
    if not path.exists():
        raise QuantvizError(f"The labels file '{path}' does not exist.")
    what = f"The labels file '{path.name}'"
    if path.suffix.lower() == ".npy":
        return read_npy(path, what, array_bytes=DATA_ARRAY_BYTES)
    name = key or DEFAULT_LABEL_KEY
    arrays = read_npz(path, what, array_bytes=DATA_ARRAY_BYTES, total_bytes=DATA_TOTAL_BYTES, only=lambda k: k == name)
    if name not in arrays:
        raise QuantvizError(f"'{path.name}' has no array '{name}'; give FILE.npz:KEY with KEY one of its arrays.")
    return arrays[name]


def default_labels(data: str | Path | bytes) -> npt.NDArray[Any] | None:
    """The "label" array of a data .npz (a path, or an upload's bytes) when it has one
    (digits_eval.npz does), else None."""
    if not isinstance(data, bytes):
        path = Path(str(data))
        if path.suffix.lower() != ".npz" or not path.is_file():
            return None
    try:
        arrays = read_npz(
            data, "the calibration data", array_bytes=DATA_ARRAY_BYTES, total_bytes=DATA_TOTAL_BYTES,
            only=lambda k: k == DEFAULT_LABEL_KEY,
        )  # fmt: skip
    except QuantvizError:
        return None  # not an .npz (a .npy upload), or unreadable: the data reader says why
    return arrays.get(DEFAULT_LABEL_KEY)
