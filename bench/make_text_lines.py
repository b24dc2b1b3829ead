"""Synthetic text-line images for OCR recognition models (PP-OCR rec: input [N, 3, 48, W]).

    .venv/bin/python bench/make_text_lines.py OUT.npz [--samples 64] [--height 48] [--width 320] [--input x]

Each sample: random words of letters and digits drawn with PIL (DejaVu if installed, else PIL's
default font) in a dark colour on a light, slightly noisy background, then normalised as PP-OCR's
recogniser expects, (x / 255 - 0.5) / 0.5, channels first. Seeded: the same file every time.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SEED = 0
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _font(size: int, k: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONTS[k % len(FONTS)]
    if Path(path).exists():
        return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def text_lines(samples: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    chars = string.ascii_letters + string.digits
    out = np.empty((samples, 3, height, width), np.float32)
    for s in range(samples):
        bg = int(rng.integers(190, 256))
        img = Image.new("RGB", (width, height), (bg, bg, bg))
        draw = ImageDraw.Draw(img)
        words = " ".join("".join(rng.choice(list(chars), int(rng.integers(2, 9)))) for _ in range(int(rng.integers(2, 5))))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text((int(rng.integers(2, 20)), int(rng.integers(2, 10))), words, fill=ink, font=_font(int(rng.integers(24, 34)), s))
        a = np.asarray(img, np.float32) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
        out[s] = ((np.clip(a, 0, 255) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--input", default="x", help="the model's input name (PP-OCR: x)")
    args = p.parse_args()
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(args.out, **{args.input: text_lines(args.samples, args.height, args.width)})  # type: ignore[arg-type]
    print(f"wrote {args.out}: {args.samples} text lines {args.height}x{args.width}")


if __name__ == "__main__":
    main()
