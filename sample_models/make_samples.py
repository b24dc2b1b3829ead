"""Make quantviz's bundled sample models and data from scikit-learn's digits data set.

Run (from the repository root, in a throwaway environment: PyTorch is needed only here, never by
quantviz itself):

    python3 -m venv /tmp/trainenv
    /tmp/trainenv/bin/pip install torch==2.13.0 scikit-learn onnx onnxruntime
    /tmp/trainenv/bin/python sample_models/make_samples.py

Writes, next to this file:

    digits_cnn.onnx      small CNN, input [batch,1,8,8]: Conv/BatchNormalization/Relu, residual
                         Add, Concat, MaxPool, GlobalAveragePool, Flatten, Gemm, Softmax
    digits_calib.npz     "input": float32 [256,1,8,8] (train split)
    digits_eval.npz      "input": float32 [M,1,8,8], "label": int64 [M] (eval split)
    digits_resnet.onnx   deep narrow ResNet, input [batch,1,32,32] (digits upsampled bilinearly)
    digits32_calib.npz   "input": float32 [256,1,32,32] (same 256 images as digits_calib.npz)
    digits32_eval.npz    "input": float32 [M,1,32,32], "label": int64 [M] (same images)
    README.md            how they were made, architectures, op counts, accuracies

Everything is seeded and runs on 2 CPU threads; it takes a few minutes. BatchNormalization is kept
as a separate node (not folded into Conv) on purpose: quantviz shows its output tensors.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 10  # onnxruntime 1.31 accepts IR <= 10 with these ops; onnx 1.23 would write a newer one
SPLIT_SEED = 0  # train/eval split (stratified)
CALIB_SEED = 1  # which 256 train images form the calibration set
CNN_SEED = 2  # weights init + batch order of digits_cnn
RESNET_SEED = 3  # weights init + batch order of digits_resnet
EVAL_FRACTION = 0.3
CALIB_SIZE = 256
BIG_SIZE = 32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Data


def load_data() -> dict[str, np.ndarray]:
    """Digits as float32 [N,1,8,8] in [0,1] (pixels / 16), split stratified 70/30."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, eval_idx = train_test_split(idx, test_size=EVAL_FRACTION, random_state=SPLIT_SEED, stratify=y)
    train_idx = np.sort(train_idx)
    eval_idx = np.sort(eval_idx)
    rng = np.random.default_rng(CALIB_SEED)
    calib_idx = np.sort(rng.choice(train_idx, size=CALIB_SIZE, replace=False))
    return {
        "x": x,
        "y": y,
        "train_idx": train_idx,
        "eval_idx": eval_idx,
        "calib_idx": calib_idx,
    }


def upsample(x: np.ndarray, size: int = BIG_SIZE) -> np.ndarray:
    """[N,1,8,8] -> [N,1,size,size], bilinear, align_corners=False (preprocessing, not in the graph)."""
    with torch.no_grad():
        t = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(t.numpy().astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Models


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 digits, one of each op quantviz cares about.

    stem   Conv3x3(1->16)-BN-ReLU                      [16,8,8]
    res    Conv3x3-BN-ReLU-Conv3x3-BN, Add(stem), ReLU  [16,8,8]
    split  a: Conv1x1(16->16)-BN-ReLU; b: Conv3x3(16->16)-BN-ReLU; Concat -> [32,8,8]
    pool   MaxPool2x2                                   [32,4,4]
    head   Conv3x3(32->32)-BN-ReLU, GlobalAveragePool, Flatten, Gemm(32->10), Softmax
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16)
        self.res1 = conv_bn(16, 16)
        self.res2 = conv_bn(16, 16)
        self.branch_a = conv_bn(16, 16, k=1)
        self.branch_b = conv_bn(16, 16, k=3)
        self.pool = nn.MaxPool2d(2)
        self.head = conv_bn(32, 32)
        self.fc = nn.Linear(32, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        r = F.relu(self.res1(s))
        r = F.relu(self.res2(r) + s)
        c = torch.cat([F.relu(self.branch_a(r)), F.relu(self.branch_b(r))], dim=1)
        h = F.relu(self.head(self.pool(c)))
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self.fc(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


class BasicBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN, Add(shortcut), ReLU; shortcut is Conv1x1-BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.conv2 = conv_bn(cout, cout)
        # Start each residual branch near zero (as torchvision's zero_init_residual) so that a deep
        # stack trains in a few epochs; training moves the scales away from zero.
        nn.init.constant_(self.conv2[1].weight, 0.0)
        self.shortcut = conv_bn(cin, cout, k=1, stride=stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)


RESNET_STAGES = ((16, 16, 1), (24, 20, 2), (32, 24, 2))  # (channels, blocks, stride of first block)


class DigitsResNet(nn.Module):
    """Deep, narrow ResNet for 32x32 (upsampled) digits.

    stem Conv3x3(1->16)-BN-ReLU, then stages of BasicBlocks (see RESNET_STAGES):
    16 ch at 32x32, 24 ch at 16x16, 32 ch at 8x8; GlobalAveragePool, Flatten, Gemm(32->10), Softmax.
    """

    def __init__(self, stages=RESNET_STAGES) -> None:
        super().__init__()
        self.stem = conv_bn(1, stages[0][0])
        blocks = []
        cin = stages[0][0]
        for cout, n, stride in stages:
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


# ----------------------------------------------------------------------------------------------
# Training


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment_shift: int,
    name: str,
) -> None:
    """AdamW + one-cycle schedule on cross-entropy of the logits; small random shifts as augmentation."""
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    steps_per_epoch = (len(xt) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25)
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for b in range(steps_per_epoch):
            bi = perm[b * batch_size : (b + 1) * batch_size]
            xb, yb = xt[bi], yt[bi]
            if augment_shift:
                # one random integer shift per batch (zero padded), cheap and deterministic
                dx, dy = torch.randint(-augment_shift, augment_shift + 1, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
                if dy > 0:
                    xb[:, :, :dy, :] = 0
                elif dy < 0:
                    xb[:, :, dy:, :] = 0
                if dx > 0:
                    xb[:, :, :, :dx] = 0
                elif dx < 0:
                    xb[:, :, :, dx:] = 0
            logits = model.logits(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(bi)
            correct += int((logits.detach().argmax(1) == yb).sum())
            total += len(bi)
        print(
            f"  [{name}] epoch {epoch + 1:2d}/{epochs} loss {loss_sum / total:.4f} "
            f"train-acc {correct / total:.4f} ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
    model.eval()


@torch.no_grad()
def torch_probs(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])


# ----------------------------------------------------------------------------------------------
# Export


def _inline_identity_of_initializers(model: onnx.ModelProto) -> None:
    """The TorchScript exporter deduplicates equal parameters (e.g. BatchNormalization scales that
    are all ones) and adds Identity nodes to fan them out; turn each such Identity back into a plain
    initializer so that the graph holds only real compute and every node output is an activation."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            g.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, doc: str, meta: dict) -> onnx.ModelProto:
    """Export with the TorchScript exporter, TrainingMode.PRESERVE on a model in eval() mode.

    Why not the defaults: in EVAL mode the exporter's eval peephole folds every BatchNormalization
    into the preceding Conv, and the torch.export-based exporter's optimizer does the same (and writes
    GlobalAveragePool/Flatten as ReduceMean/Reshape). PRESERVE keeps the module's own mode, which is
    eval: BatchNormalization is exported with training_mode=0 (running statistics) and one output.
    """
    model.eval()
    tmp = path.with_name(f".{path.stem}.export{os.getpid()}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["probs"],
            dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
        )
    m = onnx.load(str(tmp))
    tmp.unlink()
    _inline_identity_of_initializers(m)
    # Initializers are not graph inputs (IR >= 4): keeps tools from treating weights as inputs.
    init_names = {t.name for t in m.graph.initializer}
    kept_inputs = [i for i in m.graph.input if i.name not in init_names]
    del m.graph.input[:]
    m.graph.input.extend(kept_inputs)
    m.ir_version = IR_VERSION
    m.producer_name = "quantviz sample_models/make_samples.py"
    m.producer_version = f"torch {torch.__version__.split('+')[0]}"
    m.doc_string = doc
    del m.metadata_props[:]
    for k, v in meta.items():
        onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, k: v})
    # Give every node a stable, readable name (the exporter's are already unique; keep them).
    for i, node in enumerate(m.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    onnx.checker.check_model(m, full_check=True)
    replace_atomically(path, lambda tmp_path: onnx.save(m, str(tmp_path)))
    return m


def check_graph(m: onnx.ModelProto, required_ops: set[str]) -> None:
    ops = collections.Counter(n.op_type for n in m.graph.node)
    missing = required_ops - set(ops)
    assert not missing, f"missing ops {missing}"
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs.get("training_mode", 0) == 0, n.name
            assert len(n.output) == 1, n.name
    assert [i.name for i in m.graph.input] == ["input"], [i.name for i in m.graph.input]
    assert [o.name for o in m.graph.output] == ["probs"]
    for vi in (m.graph.input[0], m.graph.output[0]):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch", vi
    # BatchNormalization must directly follow a Conv and feed a Relu or Add (not folded anywhere)
    producers = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            assert producers[n.input[0]].op_type == "Conv", n.name


def float_node_outputs(m: onnx.ModelProto) -> tuple[int, int]:
    """(float32 node outputs, all node outputs) after shape inference."""
    inf = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    types = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.output) + list(inf.graph.input):
        types[vi.name] = vi.type.tensor_type.elem_type
    outs = [o for n in inf.graph.node for o in n.output if o]
    n_float = sum(1 for o in outs if types.get(o) == onnx.TensorProto.FLOAT)
    return n_float, len(outs)


def ort_probs(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["probs"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def replace_atomically(path: Path, write) -> None:
    """write(tmp_path), then rename over path: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    replace_atomically(path, write)
    with np.load(path, allow_pickle=False) as z:  # must load without pickle
        for k, v in arrays.items():
            assert z[k].dtype == v.dtype and z[k].shape == v.shape and np.array_equal(z[k], v), k


# ----------------------------------------------------------------------------------------------
# Main


def describe(
    path: Path, m: onnx.ModelProto, model: nn.Module, x_eval: np.ndarray, y_eval: np.ndarray, x_torch_check: np.ndarray
) -> dict:
    p_ort = ort_probs(path, x_eval)
    p_torch = torch_probs(model, x_eval)
    n_float, n_outs = float_node_outputs(m)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    # dynamic batch: batch of 1 and of 3 must both run
    p1 = ort_probs(path, x_torch_check[:1])
    p3 = ort_probs(path, x_torch_check[:3])
    assert p1.shape == (1, 10) and p3.shape == (3, 10)
    return {
        "acc_ort": float((p_ort.argmax(1) == y_eval).mean()),
        "acc_torch": float((p_torch.argmax(1) == y_eval).mean()),
        "max_abs_diff": float(np.abs(p_ort - p_torch).max()),
        "prob_sum_err": float(np.abs(p_ort.sum(1) - 1).max()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "n_nodes": len(m.graph.node),
        "n_float": n_float,
        "n_outs": n_outs,
        "n_params": n_params,
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def fmt_ops(ops: dict) -> str:
    lines = ["| op | count |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in ops.items()]
    return "\n".join(lines)


def write_readme(d: dict, cnn: dict, res: dict, files: dict, cfg: dict) -> None:
    n_train, n_eval = len(d["train_idx"]), len(d["eval_idx"])
    stages = ", ".join(f"{c} ch x {n} blocks (first stride {s})" for c, n, s in RESNET_STAGES)
    n_blocks = sum(n for _, n, _ in RESNET_STAGES)
    file_rows = "\n".join(f"| `{k}` | {v:,} |" for k, v in files.items())
    text = f"""# Sample models

Two small, **trained** ONNX models and their calibration / evaluation data, made from
scikit-learn's bundled *digits* data set (1,797 labelled 8x8 grey images of the digits 0-9; it
ships inside scikit-learn, so nothing is downloaded). quantviz uses them for its demo, tests and
benchmarks. PyTorch is needed only to (re)make these files, never when quantviz runs.

## How they were made

```
python3 -m venv /tmp/trainenv
/tmp/trainenv/bin/pip install torch==2.13.0 scikit-learn onnx onnxruntime
/tmp/trainenv/bin/python sample_models/make_samples.py
```

Versions used for the files here: Python {platform.python_version()}, torch {torch.__version__},
onnx {onnx.__version__}, onnxruntime {ort.__version__}, scikit-learn {sklearn.__version__},
numpy {np.__version__}. It runs on 2 CPU threads (`torch.set_num_threads(2)`,
`torch.use_deterministic_algorithms(True)`) in a few minutes. Seeds: split {SPLIT_SEED},
calibration subset {CALIB_SEED}, digits_cnn training {CNN_SEED}, digits_resnet training
{RESNET_SEED}. Two runs on the same machine with the same versions wrote byte-identical files;
another CPU or other library versions may change the bytes (and the last digits of the weights).

## Files

| file | bytes |
| --- | ---: |
{file_rows}

| file | keys |
| --- | --- |
| `digits_calib.npz` | `input`: float32 [{CALIB_SIZE},1,8,8] |
| `digits_eval.npz` | `input`: float32 [{n_eval},1,8,8], `label`: int64 [{n_eval}] |
| `digits32_calib.npz` | `input`: float32 [{CALIB_SIZE},1,32,32] |
| `digits32_eval.npz` | `input`: float32 [{n_eval},1,32,32], `label`: int64 [{n_eval}] |

All `.npz` files are written with `np.savez_compressed` and load with `allow_pickle=False`.

## Data

- Preprocessing: pixel values / 16.0 (so in [0, 1]), float32, NCHW `[N,1,8,8]`.
- For the 32x32 model the same images are upsampled to `[N,1,32,32]` with
  `torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)`;
  this happens in preprocessing, not in the graph.
- Split: `sklearn.model_selection.train_test_split(test_size={EVAL_FRACTION}, stratify=label,
  random_state={SPLIT_SEED})`: {n_train} train / {n_eval} eval images. Both models are trained on
  the train split only; the accuracies below are on the eval split.
- Calibration set: {CALIB_SIZE} images drawn without replacement from the train split
  (`numpy.random.default_rng({CALIB_SEED})`); the 8x8 and 32x32 calibration files hold the same images.
- Training: AdamW, one-cycle learning rate, cross-entropy on the logits (the exported graph ends
  in Softmax), random integer shifts of up to 1 pixel (8x8) / {cfg["resnet"]["augment_shift"]} pixels (32x32) per batch.
  digits_cnn: {cfg["cnn"]["epochs"]} epochs, batch {cfg["cnn"]["batch_size"]}, max lr {cfg["cnn"]["lr"]};
  digits_resnet: {cfg["resnet"]["epochs"]} epochs, batch {cfg["resnet"]["batch_size"]}, max lr {cfg["resnet"]["lr"]}.

## Models

Both: opset {OPSET}, IR version {IR_VERSION}, one input `input` and one output `probs`
(class probabilities, [batch,10]), batch dimension dynamic (`dim_param` "batch").
BatchNormalization is kept as a separate node after each Conv (inference semantics:
running statistics, `training_mode` 0, one output), not folded into the Conv weights.
Initializers are not listed as graph inputs.

### digits_cnn.onnx: small CNN, input [batch,1,8,8]

```
stem   Conv3x3(1->16)-BN-Relu                            [16,8,8]
res    Conv3x3-BN-Relu-Conv3x3-BN, Add(stem), Relu        [16,8,8]
split  a: Conv1x1(16->16)-BN-Relu   b: Conv3x3(16->16)-BN-Relu
       Concat(a, b) on channels                           [32,8,8]
pool   MaxPool 2x2                                         [32,4,4]
head   Conv3x3(32->32)-BN-Relu, GlobalAveragePool, Flatten, Gemm(32->10), Softmax
```

{cnn["n_nodes"]} nodes, {cnn["n_float"]} float node outputs (tensors; {cnn["n_outs"]} node outputs in all),
{cnn["n_params"]:,} parameters (initializer elements).

{fmt_ops(cnn["ops"])}

### digits_resnet.onnx: deep narrow ResNet, input [batch,1,32,32]

```
stem   Conv3x3(1->16)-BN-Relu                             [16,32,32]
{n_blocks} residual blocks: {stages}
       block: Conv3x3-BN-Relu-Conv3x3-BN, Add(shortcut), Relu;
       the shortcut is Conv1x1(stride 2)-BN where the shape changes, else the block's input
       -> [16,32,32] -> [24,16,16] -> [32,8,8]
head   GlobalAveragePool, Flatten, Gemm(32->10), Softmax
```

{res["n_nodes"]} nodes, {res["n_float"]} float node outputs (tensors; {res["n_outs"]} node outputs in all),
{res["n_params"]:,} parameters (initializer elements). Meant for benchmarks: several hundred
activation tensors per calibration pass.

{fmt_ops(res["ops"])}

## Float accuracy (onnxruntime, CPU, eval split of {n_eval} images)

| model | accuracy (onnxruntime) | accuracy (PyTorch) | max abs diff of probs, onnxruntime vs PyTorch |
| --- | ---: | ---: | ---: |
| digits_cnn.onnx | {cnn["acc_ort"]:.4f} | {cnn["acc_torch"]:.4f} | {cnn["max_abs_diff"]:.2e} |
| digits_resnet.onnx | {res["acc_ort"]:.4f} | {res["acc_torch"]:.4f} | {res["max_abs_diff"]:.2e} |

Each model passes `onnx.checker.check_model(full_check=True)` and runs in onnxruntime with batch
sizes 1, 3 and 256.
"""
    replace_atomically(OUT_DIR / "README.md", lambda tmp: tmp.write_text(text))


def main() -> None:
    global OUT_DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resnet-epochs", type=int, default=12)
    ap.add_argument("--cnn-epochs", type=int, default=40)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where to write the files (default: the folder of this script)")
    args = ap.parse_args()
    OUT_DIR = args.out_dir.resolve()
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    cfg = {
        "cnn": dict(epochs=args.cnn_epochs, batch_size=32, lr=3e-3, weight_decay=1e-4, augment_shift=1),
        "resnet": dict(epochs=args.resnet_epochs, batch_size=32, lr=3e-3, weight_decay=1e-4, augment_shift=2),
    }

    d = load_data()
    x, y = d["x"], d["y"]
    x_train, y_train = x[d["train_idx"]], y[d["train_idx"]]
    x_eval, y_eval = x[d["eval_idx"]], y[d["eval_idx"]]
    x_calib = x[d["calib_idx"]]
    print(f"data: {len(x_train)} train, {len(x_eval)} eval, {len(x_calib)} calibration", flush=True)

    files = {}
    save_npz(OUT_DIR / "digits_calib.npz", input=np.ascontiguousarray(x_calib))
    save_npz(OUT_DIR / "digits_eval.npz", input=np.ascontiguousarray(x_eval), label=y_eval)
    x32_train, x32_eval, x32_calib = upsample(x_train), upsample(x_eval), upsample(x_calib)
    save_npz(OUT_DIR / "digits32_calib.npz", input=x32_calib)
    save_npz(OUT_DIR / "digits32_eval.npz", input=x32_eval, label=y_eval)

    # a) small CNN
    seed_everything(CNN_SEED)
    cnn = DigitsCNN()
    train(cnn, x_train, y_train, seed=CNN_SEED, name="digits_cnn", **cfg["cnn"])
    cnn_path = OUT_DIR / "digits_cnn.onnx"
    m_cnn = export_onnx(
        cnn,
        torch.from_numpy(x_eval[:2]),
        cnn_path,
        doc="Small CNN for scikit-learn digits (8x8). Input: pixels/16, float32 [batch,1,8,8]. "
        "Output: class probabilities [batch,10].",
        meta={
            "dataset": "sklearn digits",
            "preprocessing": "pixels / 16.0, float32 NCHW [N,1,8,8]",
            "classes": "0,1,2,3,4,5,6,7,8,9",
        },
    )
    check_graph(
        m_cnn,
        {"Conv", "BatchNormalization", "Relu", "Add", "Concat", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"},
    )
    info_cnn = describe(cnn_path, m_cnn, cnn, x_eval, y_eval, x_calib)
    print(f"digits_cnn: {info_cnn}", flush=True)

    # b) deep narrow ResNet on 32x32
    seed_everything(RESNET_SEED)
    res = DigitsResNet()
    train(res, x32_train, y_train, seed=RESNET_SEED, name="digits_resnet", **cfg["resnet"])
    res_path = OUT_DIR / "digits_resnet.onnx"
    m_res = export_onnx(
        res,
        torch.from_numpy(x32_eval[:2]),
        res_path,
        doc="Deep narrow ResNet for scikit-learn digits upsampled to 32x32 (bilinear). Input: "
        "pixels/16 then bilinear upsampling, float32 [batch,1,32,32]. Output: class probabilities "
        "[batch,10].",
        meta={
            "dataset": "sklearn digits",
            "preprocessing": "pixels / 16.0, float32 NCHW [N,1,8,8], then bilinear "
            "(align_corners=False) upsampling to [N,1,32,32]",
            "classes": "0,1,2,3,4,5,6,7,8,9",
        },
    )
    check_graph(m_res, {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"})
    info_res = describe(res_path, m_res, res, x32_eval, y_eval, x32_calib)
    print(f"digits_resnet: {info_res}", flush=True)

    for name in [
        "digits_cnn.onnx",
        "digits_calib.npz",
        "digits_eval.npz",
        "digits_resnet.onnx",
        "digits32_calib.npz",
        "digits32_eval.npz",
    ]:
        files[name] = (OUT_DIR / name).stat().st_size
    # Check before writing the README, so that a failed run never leaves a README describing it.
    assert info_cnn["acc_ort"] > 0.95, info_cnn["acc_ort"]
    assert info_res["acc_ort"] > 0.90, info_res["acc_ort"]
    assert info_cnn["max_abs_diff"] < 1e-4 and info_res["max_abs_diff"] < 1e-3
    write_readme(d, info_cnn, info_res, files, cfg)
    print(f"done in {time.perf_counter() - t_start:.0f}s; wrote {OUT_DIR}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
