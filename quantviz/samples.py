"""The bundled sample models and their data (made by sample_models/make_samples.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"


@dataclass(frozen=True)
class Sample:
    key: str
    label: str
    model: Path
    calib: Path
    eval: Path


SAMPLES: dict[str, Sample] = {
    "digits_cnn": Sample(
        "digits_cnn",
        "digits_cnn: small CNN on 8x8 digits (26 tensors)",
        SAMPLE_DIR / "digits_cnn.onnx",
        SAMPLE_DIR / "digits_calib.npz",
        SAMPLE_DIR / "digits_eval.npz",
    ),
    "digits_resnet": Sample(
        "digits_resnet",
        "digits_resnet: 56-block ResNet on 32x32 digits (400+ tensors)",
        SAMPLE_DIR / "digits_resnet.onnx",
        SAMPLE_DIR / "digits32_calib.npz",
        SAMPLE_DIR / "digits32_eval.npz",
    ),
}
DEFAULT_SAMPLE = "digits_cnn"
