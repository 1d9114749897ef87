"""Dependency graphs in files: GraphML, GEXF, JSON (networkx node-link data) and DOT.

:meth:`DependencyGraph.save <captum_ssa.graph.DependencyGraph.save>` and
:meth:`DependencyGraph.load <captum_ssa.graph.DependencyGraph.load>` document
the formats; they call :func:`save` and :func:`read_state`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch
from torch import Tensor

from captum_ssa.graph._parts import json_compatible

if TYPE_CHECKING:
    from captum_ssa.graph.model import GraphData

# The graph-level attribute of a saved file that holds everything loading needs.
STATE_KEY = "dependency_graph"
LOADABLE = (".graphml", ".json")
SAVABLE = (".graphml", ".gexf", ".json", ".dot")
_TENSORS = ("neurons", "relevances", "relevance_matrices", "edges")


def save(graph: GraphData, path: Path) -> None:
    """Write ``graph`` to ``path`` in the format its extension names."""
    suffix = path.suffix.lower()
    if suffix not in SAVABLE:
        raise ValueError(f"cannot save as {suffix!r}; use one of {SAVABLE}")
    if suffix == ".dot":
        path.write_text(to_dot(graph))
        return
    labelled = labelled_networkx(graph)
    if suffix == ".gexf":
        nx.write_gexf(labelled, path)
    elif suffix == ".graphml":
        labelled.graph[STATE_KEY] = json.dumps(state_of(graph))
        nx.write_graphml(labelled, path)
    else:
        labelled.graph[STATE_KEY] = state_of(graph)
        path.write_text(json.dumps(nx.node_link_data(labelled, edges="edges")))


def read_state(path: Path) -> dict[str, Any]:
    """The constructor arguments of the graph saved in ``path`` (all but ``layers``)."""
    suffix = path.suffix.lower()
    if suffix not in LOADABLE:
        raise ValueError(
            f"cannot load {suffix!r} files: only {LOADABLE} carry the relevance "
            "vectors and matrices; save the graph in one of those formats"
        )
    if suffix == ".graphml":
        encoded = nx.read_graphml(path).graph.get(STATE_KEY)
        state = None if encoded is None else json.loads(encoded)
    else:
        state = json.loads(path.read_text()).get("graph", {}).get(STATE_KEY)
    if state is None:
        raise ValueError(
            f"{path} has no {STATE_KEY!r} graph attribute: it was not written "
            "by DependencyGraph.save"
        )
    arguments = {key: state[key] for key in ("layer_names", "target", "metadata")}
    for key in _TENSORS:
        arguments[key] = [_decode_tensor(t) for t in state[key]]
    return arguments


def state_of(graph: GraphData) -> dict[str, Any]:
    """Everything ``graph`` holds but its modules, as JSON-compatible values."""
    names = graph.layer_names
    pairs = list(zip(names[1:], names[:-1]))
    tensors = {
        "neurons": [graph.neurons(name) for name in names],
        "relevances": [graph.relevance(name) for name in names],
        "relevance_matrices": [graph.relevance_matrix(upper, lower) for upper, lower in pairs],
        "edges": [graph.edges(upper, lower) for upper, lower in pairs],
    }
    return {
        "layer_names": names,
        **{key: [_encode_tensor(t) for t in values] for key, values in tensors.items()},
        "target": graph.target,
        "metadata": json_compatible(graph.metadata),
    }


def labelled_networkx(graph: GraphData) -> nx.DiGraph:
    """:meth:`~captum_ssa.graph.DependencyGraph.to_networkx` with the string node
    ids ``"layer:index"`` that files can hold."""
    return nx.relabel_nodes(graph.to_networkx(), _node_label, copy=True)


def to_dot(graph: GraphData) -> str:
    """Graphviz text, written directly so that no pydot/pygraphviz is needed:
    one rank per layer, lowest at the bottom."""
    lines = ["digraph dependency_graph {", "  rankdir=BT;", "  node [shape=circle];"]
    labelled = labelled_networkx(graph)
    for depth, name in enumerate(graph.layer_names):
        lines.append(f"  subgraph {_dot_quote('layer ' + name)} {{")
        lines.append("    rank=same;")
        for node, data in labelled.nodes(data=True):
            if data["depth"] == depth:
                attributes = (
                    f"layer={_dot_quote(name)}, index={data['index']}, depth={depth}, "
                    f"relevance={data['relevance']!r}, label={_dot_quote(node)}"
                )
                lines.append(f"    {_dot_quote(node)} [{attributes}];")
        lines.append("  }")
    for source, sink, weight in labelled.edges(data="weight"):
        lines.append(f"  {_dot_quote(source)} -> {_dot_quote(sink)} [weight={weight!r}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_label(node: tuple[str, int]) -> str:
    layer, index = node
    return f"{layer}:{index}"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _encode_tensor(tensor: Tensor) -> dict[str, Any]:
    return {
        "dtype": str(tensor.dtype).split(".")[-1],
        "shape": list(tensor.shape),
        "values": tensor.reshape(-1).tolist(),
    }


def _decode_tensor(encoded: dict[str, Any]) -> Tensor:
    dtype = getattr(torch, encoded["dtype"])
    return torch.tensor(encoded["values"], dtype=dtype).reshape(encoded["shape"])
