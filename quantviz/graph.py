"""Walking an ONNX graph: which node produces a tensor, which nodes consume it (the one place these
indexes are built; empty names, ONNX's "optional input left out", are skipped)."""

from __future__ import annotations

from collections.abc import Iterable

import onnx


def producers(nodes: Iterable[onnx.NodeProto]) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that outputs it."""
    return {o: n for n in nodes for o in n.output if o}


def consumers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order (a node reading it twice is listed twice)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out
