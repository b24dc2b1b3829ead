"""quantviz.data: every source feeds the arrays a hand computation expects; every mismatch is named."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from quantviz.data import CalibrationSource, ImagePreprocess, open_source
from quantviz.errors import QuantvizError
from quantviz.model import Dim, InputSpec

ONE = (InputSpec("x", ("N", 3, 4), "float32"),)
TWO = (InputSpec("a", ("N", 2), "float32"), InputSpec("b", (None, 3), "float32"))


def _all(source: CalibrationSource, batch_size: int = 3) -> dict[str, np.ndarray]:
    batches = list(source.batches(batch_size))
    assert all(next(iter(b.values())).shape[0] <= batch_size for b in batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_npz_keyed_by_input_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 2)).astype(np.float32), rng.standard_normal((7, 3))  # b float64: converted
    np.savez(tmp_path / "d.npz", a=a, b=b, extra=np.arange(3))
    src = open_source(tmp_path / "d.npz", TWO)
    assert src.num_samples == 7 and not src.synthetic
    got = _all(src)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b.astype(np.float32))
    assert got["b"].dtype == np.float32
    assert len(list(src.batches(3))) == 3  # 3 + 3 + 1
    limited = list(src.batches(2, limit=5))
    assert [x["a"].shape[0] for x in limited] == [2, 2, 1]
    # the same bytes as an upload
    raw = (tmp_path / "d.npz").read_bytes()
    up = open_source(raw, TWO, name="d.npz")
    np.testing.assert_array_equal(_all(up)["a"], a)
    assert up.data_id == src.data_id


def test_single_array_npz_for_single_input(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.savez(tmp_path / "d.npz", whatever=x)
    np.testing.assert_array_equal(_all(open_source(tmp_path / "d.npz", ONE))["x"], x)


def test_single_input_npz_with_labels_beside_the_data(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.savez(tmp_path / "d.npz", images=x, label=np.array([3, 7]))
    np.testing.assert_array_equal(_all(open_source(tmp_path / "d.npz", ONE))["x"], x)
    # two candidate arrays for one input: which one is meant cannot be guessed, the input is named
    np.savez(tmp_path / "e.npz", images=x, other=x, label=np.array([3, 7]))
    with pytest.raises(QuantvizError, match="no array for model input 'x' \\(it has: images, other, label\\)"):
        open_source(tmp_path / "e.npz", ONE)


def test_npy_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    modes: list[object] = []
    real_load = np.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        modes.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    src = open_source(tmp_path / "d.npy", ONE)
    assert modes == ["r"]
    np.testing.assert_array_equal(_all(src, 2)["x"], x)


def test_npy_needs_single_input(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(QuantvizError, match="one input only; this model has 2"):
        open_source(tmp_path / "d.npy", TWO)


# ------------------------------------------------------------------ images


def _pixels(seed: int, h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _expected(pixels: np.ndarray, pre: ImagePreprocess) -> np.ndarray:
    """Hand computation, float64, per pixel and channel: ((p * scale) - mean[c]) / std[c] in the chosen channel order."""
    h, w, _ = pixels.shape
    order = [2, 1, 0] if pre.color == "bgr" else [0, 1, 2]
    chans = 1 if pre.color == "gray" else 3
    out = np.zeros((chans, h, w))
    for c in range(chans):
        mean = pre.mean[c] if len(pre.mean) > 1 else pre.mean[0]
        std = pre.std[c] if len(pre.std) > 1 else pre.std[0]
        for i in range(h):
            for j in range(w):
                p: float
                if chans == 1:  # ITU-R 601-2 luma, as Pillow's convert("L") (integer result)
                    r, g, b = (int(v) for v in pixels[i, j])
                    p = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
                else:
                    p = float(pixels[i, j, order[c]])
                out[c, i, j] = (p * pre.scale - mean) / std
    return out if pre.layout == "nchw" else out.transpose(1, 2, 0)


CASES = [
    (ImagePreprocess(color="bgr", scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0)), ("N", 3, 4, 5)),
    (
        ImagePreprocess(color="rgb", scale=1.0, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), layout="nhwc"),
        ("N", 4, 5, 3),
    ),
    (ImagePreprocess(color="gray", scale=2.0, mean=(1.0,), std=(3.0,)), ("N", 1, 4, 5)),
]


@pytest.mark.parametrize(("pre", "shape"), CASES, ids=["bgr-nchw", "rgb-nhwc", "gray"])
def test_image_folder_and_zip(tmp_path: Path, pre: ImagePreprocess, shape: tuple[Dim, ...]) -> None:
    spec = (InputSpec("img", shape, "float32"),)
    pix = [_pixels(s) for s in range(3)]
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    names = ["a0.png", "b1.png", "sub/c2.png"]
    for name, p in zip(names, pix, strict=True):
        (folder / name).write_bytes(_png(p))
    (folder / "readme.txt").write_text("not an image")
    expected = np.stack([_expected(p, pre) for p in pix])
    src = open_source(folder, spec, preprocess=pre)
    assert src.num_samples == 3
    got = _all(src, 2)["img"]
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, p in zip(names, pix, strict=True):
            zf.writestr(name, _png(p))
        zf.writestr("notes.txt", "skip me")
    np.testing.assert_allclose(_all(open_source(zpath, spec, preprocess=pre), 2)["img"], expected, rtol=1e-5, atol=1e-5)
    up = open_source(zpath.read_bytes(), spec, name="imgs.zip", preprocess=pre)
    np.testing.assert_allclose(_all(up)["img"], expected, rtol=1e-5, atol=1e-5)


def test_image_resize_and_missing_size(tmp_path: Path) -> None:
    (tmp_path / "i.png").write_bytes(_png(_pixels(0, 9, 7)))
    pre = ImagePreprocess(size=(4, 5))
    got = _all(open_source(tmp_path, (InputSpec("img", ("N", 3, "H", "W"), "float32"),), preprocess=pre))["img"]
    assert got.shape == (1, 3, 4, 5)
    with pytest.raises(QuantvizError, match="Input 'img' has no fixed height and width"):
        open_source(tmp_path, (InputSpec("img", ("N", 3, "H", "W"), "float32"),))


def test_image_errors(tmp_path: Path) -> None:
    spec = (InputSpec("img", ("N", 3, 4, 5), "float32"),)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantvizError, match="holds no images"):
        open_source(tmp_path / "empty", spec)
    (tmp_path / "gray").mkdir()
    (tmp_path / "gray" / "g.png").write_bytes(_png(_pixels(0)))
    with pytest.raises(QuantvizError, match=r"Input 'img' expects shape \[N, 3, 4, 5\].*axis 1: 1 instead of 3"):
        open_source(tmp_path / "gray", spec, preprocess=ImagePreprocess(color="gray"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(QuantvizError, match="'x.png' is not a readable image"):
        open_source(tmp_path / "bad", spec)
    with pytest.raises(QuantvizError, match="one input only"):
        open_source(tmp_path / "gray", TWO)
    with pytest.raises(QuantvizError, match="not a readable .zip"):
        open_source(b"garbage", spec, name="x.zip")
    with pytest.raises(QuantvizError, match="divide by zero"):
        ImagePreprocess(std=(1.0, 0.0, 1.0))
    with pytest.raises(QuantvizError, match="Layout must be nchw or nhwc"):
        ImagePreprocess(layout="chw")


# ------------------------------------------------------------------ synthetic


def test_synthetic_flagged_and_reproducible() -> None:
    spec = (InputSpec("a", ("N", 2, 3), "float32"), InputSpec("b", (1, 2, 3), "float32"))
    src = open_source("synthetic:5", spec)
    assert src.synthetic and src.num_samples == 5 and "synthetic" in src.description and src.data_id == "synthetic:5"
    one = _all(src, 5)
    assert one["a"].shape == (5, 2, 3) and one["a"].dtype == np.float32
    assert not np.array_equal(one["a"], one["b"])  # inputs get different noise
    # the same samples whatever the batch size
    for bs in (1, 2, 3):
        got = _all(open_source("synthetic:5", spec), bs)
        np.testing.assert_array_equal(got["a"], one["a"])
        np.testing.assert_array_equal(got["b"], one["b"])
    assert 0.3 < float(one["a"].std()) < 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("synthetic:abc", "not synthetic:N with N a whole number"),
        ("synthetic:0", "needs N between 1"),
        ("synthetic:-3", "needs N between 1"),
    ],
)
def test_synthetic_bad_count(text: str, message: str) -> None:
    with pytest.raises(QuantvizError, match=message):
        open_source(text, ONE)


def test_synthetic_needs_fixed_dims() -> None:
    spec = (InputSpec("a", ("N", 2), "float32"), InputSpec("b", ("N", "seq"), "float32"))
    with pytest.raises(QuantvizError, match="Input 'b' has dynamic dimensions"):
        open_source("synthetic:2", spec)


# ------------------------------------------------------------------ mismatches


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    p = tmp_path / "d.npz"
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def test_missing_key_names_input(tmp_path: Path) -> None:
    p = _npz(tmp_path, a=np.zeros((2, 2), np.float32), c=np.zeros((2, 3), np.float32))
    with pytest.raises(QuantvizError, match="no array for model input 'b' \\(it has: a, c\\)"):
        open_source(p, TWO)


def test_wrong_shape_names_input_and_shapes(tmp_path: Path) -> None:
    p = _npz(tmp_path, x=np.zeros((2, 3, 5), np.float32))
    with pytest.raises(
        QuantvizError, match=r"Input 'x' expects shape \[N, 3, 4\] but 'd.npz' has shape \[2, 3, 5\] \(axis 2: 5 instead of 4\)"
    ):
        open_source(p, ONE)
    p = _npz(tmp_path, x=np.zeros((2, 12), np.float32))
    with pytest.raises(
        QuantvizError, match=r"Input 'x' expects shape \[N, 3, 4\] but 'd.npz' has shape \[2, 12\] \(2 dimensions instead of 3"
    ):
        open_source(p, ONE)


def test_wrong_dtype(tmp_path: Path) -> None:
    p = _npz(tmp_path, x=np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(QuantvizError, match="Input 'x' expects float32 values but 'd.npz' holds uint8"):
        open_source(p, ONE)


def test_different_sample_counts(tmp_path: Path) -> None:
    p = _npz(tmp_path, a=np.zeros((2, 2), np.float32), b=np.zeros((3, 3), np.float32))
    with pytest.raises(QuantvizError, match=r"different sample counts per input \(a: 2, b: 3\)"):
        open_source(p, TWO)


def test_no_samples(tmp_path: Path) -> None:
    p = _npz(tmp_path, x=np.zeros((0, 3, 4), np.float32))
    with pytest.raises(QuantvizError, match="holds no samples for input 'x'"):
        open_source(p, ONE)


def test_bad_suffix_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("1,2,3\n")
    with pytest.raises(QuantvizError, match="'d.csv' is not a calibration set quantviz reads"):
        open_source(p, ONE)
    with pytest.raises(QuantvizError, match="does not exist"):
        open_source(tmp_path / "nope.npz", ONE)


def test_pickled_object_arrays(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(QuantvizError, match="holds Python objects \\(pickles\\), which quantviz never loads"):
        open_source(p, ONE)
    q = tmp_path / "d.npy"
    np.save(q, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(QuantvizError, match="holds Python objects \\(pickles\\), which quantviz never loads"):
        open_source(q, ONE)


def test_not_numpy_files(tmp_path: Path) -> None:
    for name in ("d.npz", "d.npy"):
        p = tmp_path / name
        p.write_text("just some text")
        with pytest.raises(QuantvizError, match=f"'{name}' is not a readable .np[zy] file"):
            open_source(p, ONE)
    raw = io.BytesIO()
    np.savez(raw, x=np.zeros((4, 3, 4), np.float32))
    with pytest.raises(QuantvizError, match="not a readable .npz file"):
        open_source(raw.getvalue()[:100], ONE, name="cut.npz")
