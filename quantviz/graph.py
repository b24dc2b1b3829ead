"""Walking an ONNX graph: which node produces a tensor, which nodes consume it (the one place these
indexes are built; empty names, ONNX's "optional input left out", are skipped), and the neighbourhood
of a layer (its producers and consumers a few hops each way) that the graph-context view draws."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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


# --- neighbourhoods: what feeds a layer and what it feeds, a few hops each way -------------------------

CONTEXT_HOPS = 2  # producers and consumers drawn each way around a layer
MAX_PER_LEVEL = 10  # nodes kept at one distance (a Concat of 40 inputs keeps 10, the rest counted)


@dataclass(frozen=True)
class GraphNode:
    """One operator as the neighbourhood needs it: name, op type, the float tensors it reads and writes."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class HoodNode:
    """A node of a neighbourhood at `level` hops from the centre (negative: upstream)."""

    name: str
    op_type: str
    level: int
    opens: str | None  # the tensor a click opens: the node's first output with statistics (None: none)


@dataclass(frozen=True)
class HoodEdge:
    """A tensor from one node of the neighbourhood to another."""

    source: str
    target: str
    tensor: str


@dataclass(frozen=True)
class Neighbourhood:
    """The nodes within `hops` of a centre node, and the tensors between them.

    centre: the node (layer) in the middle; for a graph input, a pseudo-node named after the input
    (op type "Input"). cut: per level, how many nodes were left out beyond MAX_PER_LEVEL."""

    centre: str
    tensor: str
    nodes: tuple[HoodNode, ...]
    edges: tuple[HoodEdge, ...]
    cut: dict[int, int]

    def level(self, k: int) -> list[HoodNode]:
        return [n for n in self.nodes if n.level == k]


class GraphIndex:
    """Producers and consumers of the float tensors of a graph, built once per model (or per
    statistics: quantviz.stats keeps each tensor's producer and consumers)."""

    def __init__(self, nodes: Iterable[GraphNode], tensors: Iterable[str]) -> None:
        self.tensors = frozenset(tensors)  # the tensors a click can open (those with statistics)
        self.nodes: dict[str, GraphNode] = {}
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        for n in nodes:
            self.nodes[n.name] = n
            for o in n.outputs:
                self.producer[o] = n.name
            for i in dict.fromkeys(n.inputs):  # a node reading a tensor twice is one consumer
                self.consumers.setdefault(i, []).append(n.name)

    @classmethod
    def from_onnx(cls, nodes: Iterable[onnx.NodeProto], tensors: Iterable[str]) -> GraphIndex:
        """From the model's nodes, following only the given (float, calibratable) tensors, so shape
        arithmetic (Shape -> Gather -> Concat -> Reshape) stays out of the picture: a node that writes
        none of them (Shape, ArgMax) has nothing to open and is left out. Unnamed nodes are named after
        their first output, as quantviz.model names producers."""
        keep = frozenset(tensors)
        made = [
            GraphNode(
                n.name or (n.output[0] if n.output else f"{n.op_type}_{k}"), n.op_type,
                tuple(i for i in n.input if i in keep), tuple(o for o in n.output if o in keep),
            )
            for k, n in enumerate(nodes)
        ]  # fmt: skip
        return cls((n for n in made if n.outputs), keep)

    @classmethod
    def from_infos(cls, infos: Mapping[str, Any]) -> GraphIndex:
        """From statistics alone (TensorInfo: producer, op_type, consumers): the graph of the float
        tensors, for a statistics or review file opened without its model."""
        ins: dict[str, list[str]] = {}
        outs: dict[str, list[str]] = {}
        ops: dict[str, str] = {}
        for name, info in infos.items():
            if info.producer:
                outs.setdefault(info.producer, []).append(name)
                ops[info.producer] = info.op_type
            for c in info.consumers:
                ins.setdefault(c, []).append(name)
                ops.setdefault(c, "")
        nodes = [GraphNode(n, ops[n], tuple(ins.get(n, ())), tuple(outs.get(n, ()))) for n in ops]
        return cls(nodes, infos)

    def opens(self, node: str) -> str | None:
        return next((o for o in self.nodes[node].outputs if o in self.tensors), None) if node in self.nodes else None

    def centre_of(self, tensor: str) -> str:
        """The node a tensor's neighbourhood is centred on: its producer, or the tensor itself when it is
        a graph input (a pseudo-node)."""
        return self.producer.get(tensor, tensor)

    def neighbourhood(self, tensor: str | None = None, node: str | None = None, hops: int = CONTEXT_HOPS) -> Neighbourhood:
        """Nodes up to `hops` producers upstream and `hops` consumers downstream of a node (a layer) or
        of the node producing a tensor; breadth first, each node at its shortest distance, upstream
        first where a node is both (a residual block's Add)."""
        if node is None:
            if tensor is None:
                raise ValueError("give a tensor or a node")
            node = self.centre_of(tensor)
        if tensor is None:
            tensor = self.opens(node) or node
        centre = self.nodes.get(node) or GraphNode(node, "Input", (), (node,))
        found: dict[str, HoodNode] = {centre.name: HoodNode(centre.name, centre.op_type, 0, self.opens(centre.name) or tensor)}
        cut: dict[int, int] = {}
        edges: list[HoodEdge] = []
        lookup = {**self.nodes, centre.name: centre}
        for direction in (-1, 1):
            frontier = [centre]
            for k in range(1, hops + 1):
                nxt: list[GraphNode] = []
                for n in frontier:
                    if direction < 0:
                        pairs = [(self.producer.get(i, i), i) for i in n.inputs]
                    else:
                        pairs = [(c, o) for o in n.outputs for c in self.consumers.get(o, ())]
                    for other, t in pairs:
                        if other not in found:
                            if sum(1 for f in found.values() if f.level == direction * k) >= MAX_PER_LEVEL:
                                cut[direction * k] = cut.get(direction * k, 0) + 1
                                continue
                            g = lookup.get(other) or GraphNode(other, "Input", (), (other,))
                            lookup[other] = g
                            opened = self.opens(other) or (other if other in self.tensors and other not in self.nodes else None)
                            found[other] = HoodNode(other, g.op_type, direction * k, opened)
                            nxt.append(g)
                        src, dst = (other, n.name) if direction < 0 else (n.name, other)
                        edge = HoodEdge(src, dst, t)
                        if edge not in edges:
                            edges.append(edge)
                frontier = nxt
        # edges among the nodes found that the walk did not take (a skip connection inside the window)
        for name in found:
            hood_node = lookup.get(name)
            if hood_node is None:
                continue
            for o in hood_node.outputs:
                for c in self.consumers.get(o, ()):
                    e = HoodEdge(name, c, o)
                    if c in found and e not in edges:
                        edges.append(e)
        return Neighbourhood(centre.name, tensor, tuple(found.values()), tuple(edges), cut)
