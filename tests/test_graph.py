"""Graph neighbourhoods (quantviz.graph.GraphIndex) on constructed graphs, from ONNX nodes and from
the statistics' tensor infos alike."""

from __future__ import annotations

from onnx import helper

from quantviz.graph import MAX_PER_LEVEL, GraphIndex, HoodEdge, Neighbourhood
from quantviz.model import TensorInfo

# in -> A(Conv) -a-> B(Relu) -b-> C(Conv) -c-> D(Add: c + b) -d-> E(Relu) -e-> F(Conv) -f->
#                               \________________b_______/
NODES = [
    helper.make_node("Conv", ["in", "wA"], ["a"], name="A"),
    helper.make_node("Relu", ["a"], ["b"], name="B"),
    helper.make_node("Conv", ["b", "wC"], ["c"], name="C"),
    helper.make_node("Add", ["c", "b"], ["d"], name="D"),
    helper.make_node("Relu", ["d"], ["e"], name="E"),
    helper.make_node("Conv", ["e", "wF"], ["f"], name="F"),
    helper.make_node("Shape", ["e"], ["shape_e"], name="S"),  # shape arithmetic: not a float tensor
]
FLOAT = ["in", "a", "b", "c", "d", "e", "f"]


def _levels(hood: Neighbourhood) -> dict[str, int]:
    return {n.name: n.level for n in hood.nodes}


def _infos() -> dict[str, TensorInfo]:
    producer = {o: n for n in NODES for o in n.output}
    out: dict[str, TensorInfo] = {}
    for t in FLOAT:
        p = producer.get(t)
        consumers = tuple(n.name for n in NODES if t in n.input and n.op_type != "Shape")
        out[t] = TensorInfo(t, "input" if p is None else "activation", p.name if p else "", p.op_type if p else "Input", (), "float32", consumers)
    return out


def test_two_hops_each_way_around_the_layer_producing_a_tensor() -> None:
    for index in (GraphIndex.from_onnx(NODES, FLOAT), GraphIndex.from_infos(_infos())):
        hood = index.neighbourhood("c")
        assert hood.centre == "C" and hood.tensor == "c"
        assert _levels(hood) == {"C": 0, "B": -1, "A": -2, "D": 1, "E": 2}
        edges = set(hood.edges)
        assert edges == {
            HoodEdge("B", "C", "b"), HoodEdge("A", "B", "a"), HoodEdge("C", "D", "c"),
            HoodEdge("D", "E", "d"), HoodEdge("B", "D", "b"),  # the skip connection inside the window
        }  # fmt: skip
        # each node opens its own output tensor
        assert {n.name: n.opens for n in hood.nodes} == {"C": "c", "B": "b", "A": "a", "D": "d", "E": "e"}
        assert hood.cut == {}


def test_a_residual_add_sits_at_its_shortest_distance_and_shape_ops_stay_out() -> None:
    index = GraphIndex.from_onnx(NODES, FLOAT)
    hood = index.neighbourhood(node="B")
    # D reads b directly: one hop downstream, although it is two hops through C
    assert _levels(hood) == {"B": 0, "A": -1, "in": -2, "C": 1, "D": 1, "E": 2}
    assert _levels(index.neighbourhood("e")) == {"E": 0, "D": -1, "C": -2, "B": -2, "F": 1}


def test_a_graph_input_is_a_pseudo_node_that_opens_itself() -> None:
    index = GraphIndex.from_onnx(NODES, FLOAT)
    hood = index.neighbourhood("in")
    assert hood.centre == "in" and _levels(hood) == {"in": 0, "A": 1, "B": 2}
    assert next(n for n in hood.nodes if n.name == "in").op_type == "Input"
    assert next(n for n in hood.nodes if n.name == "in").opens == "in"
    assert _levels(index.neighbourhood("a", hops=1)) == {"A": 0, "in": -1, "B": 1}


def test_a_wide_concat_keeps_the_first_nodes_of_a_level_and_counts_the_rest() -> None:
    k = MAX_PER_LEVEL + 3
    nodes = [helper.make_node("Relu", ["x"], [f"r{i}"], name=f"R{i}") for i in range(k)]
    nodes.append(helper.make_node("Concat", [f"r{i}" for i in range(k)], ["cat"], name="Cat", axis=1))
    tensors = ["x", "cat"] + [f"r{i}" for i in range(k)]
    hood = GraphIndex.from_onnx(nodes, tensors).neighbourhood("cat")
    assert len(hood.level(-1)) == MAX_PER_LEVEL and hood.cut == {-1: 3}
    assert [n.name for n in hood.level(-2)] == ["x"]
    # upstream of one Relu: the input, then downstream the Concat and nothing beyond it
    assert _levels(GraphIndex.from_onnx(nodes, tensors).neighbourhood("r0")) == {"R0": 0, "x": -1, "Cat": 1}
