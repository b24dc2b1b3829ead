"""A compute-heavier benchmark model than the samples: random weights, many wide 3x3 convolutions.

    .venv/bin/python bench/make_wide_model.py OUT_DIR [--blocks 50] [--channels 64] [--size 24] [--samples 64]

Writes OUT_DIR/wide_resnet.onnx (input "input" [N, 3, size, size]; a stem conv, then `blocks` residual
blocks of Conv-BN-ReLU-Conv-BN + Add + ReLU, global average pool, Gemm to 10 classes) and
OUT_DIR/wide_calib.npz (`samples` standard-normal inputs). He-initialised, seeded weights: the
activations have realistic spread, the accuracy means nothing. About 6 float tensors per block.

Why: digits_resnet has 16 to 64 channels, so onnxruntime spends few FLOPs per activation value and
any per-value statistics cost weighs heavily against its float inference. Real models (and this one)
spend far more FLOPs per value; the bench's ratio to float inference depends on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
CLASSES = 10


def build(blocks: int, channels: int, size: int) -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def conv_bn(x: str, cin: int, cout: int, name: str, relu: bool) -> str:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b"))
        nodes.append(
            helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.conv"], name=f"{name}.conv", pads=[1, 1, 1, 1])
        )
        for p, v in (("scale", 1.0 + 0.1 * rng.standard_normal(cout)), ("bias", 0.1 * rng.standard_normal(cout)),
                     ("mean", 0.1 * rng.standard_normal(cout)), ("var", 1.0 + 0.1 * rng.random(cout))):  # fmt: skip
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{name}.{p}"))
        bn_in = [f"{name}.conv", f"{name}.scale", f"{name}.bias", f"{name}.mean", f"{name}.var"]
        nodes.append(helper.make_node("BatchNormalization", bn_in, [f"{name}.bn"], name=f"{name}.bn"))
        if not relu:
            return f"{name}.bn"
        nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    x = conv_bn("input", 3, channels, "stem", relu=True)
    for b in range(blocks):
        y = conv_bn(x, channels, channels, f"b{b}.1", relu=True)
        y = conv_bn(y, channels, channels, f"b{b}.2", relu=False)
        nodes.append(helper.make_node("Add", [x, y], [f"b{b}.add"], name=f"b{b}.add"))
        nodes.append(helper.make_node("Relu", [f"b{b}.add"], [f"b{b}.out"], name=f"b{b}.out"))
        x = f"b{b}.out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    fc = (rng.standard_normal((CLASSES, channels)) * np.sqrt(1.0 / channels)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "wide_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--blocks", type=int, default=50)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=24)
    p.add_argument("--samples", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build(args.blocks, args.channels, args.size), str(out / "wide_resnet.onnx"))
    x = np.random.default_rng(SEED + 1).standard_normal((args.samples, 3, args.size, args.size)).astype(np.float32)
    np.savez(out / "wide_calib.npz", input=x)
    print(f"wrote {out / 'wide_resnet.onnx'} and {out / 'wide_calib.npz'}")


if __name__ == "__main__":
    main()
