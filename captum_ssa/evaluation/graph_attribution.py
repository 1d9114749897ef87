"""An input-shaped map from SSA's class graphs, so that SSA can stand in the
input-level comparison: a gradient method run through the graph's neurons only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from captum.attr import InputXGradient
from torch import Tensor, nn

from captum_ssa import DependencyGraph, StepwiseSensitivity
from captum_ssa.evaluation._perturb import per_example_targets
from captum_ssa.evaluation.explainers import Explainer


class GraphMaskedAttribution:
    r"""
    Attributions of the class logit computed on the network reduced to that
    class's SSA dependency graph: every hidden neuron outside the graph of the
    explained class outputs zero (:meth:`DependencyGraph.mask`), and ``method``
    (a Captum class, by default ``InputXGradient``) explains the reduced network.
    A faithful graph keeps the evidence; a graph that misses it gives a map that
    fails the perturbation tests.

    Args:
        model (nn.Module): The model the graphs were built on.
        graphs (dict): class -> :class:`DependencyGraph` (e.g.
                    ``StepwiseSensitivity.class_graphs``).
        method (type, optional): A Captum attribution class taking the model.

    Examples::

        >>> graphs = StepwiseSensitivity(net, [net.conv1, net.conv2, net.fc1, net.fc2]
        ...                              ).class_graphs(x_train, y_train)
        >>> GraphMaskedAttribution(net, graphs).attribute(x, target=y)
    """

    def __init__(
        self,
        model: nn.Module,
        graphs: Mapping[int, DependencyGraph],
        method: Callable[[nn.Module], Any] = InputXGradient,
    ) -> None:
        self.model = model
        self.graphs = dict(graphs)
        self.method = method(model)

    def attribute(self, inputs: Any, target: Any = None, **kwargs: Any) -> Any:
        """One map per example, each through the graph of its own target class (a
        one-tensor tuple in gives a one-tensor tuple out, as in Captum)."""
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise ValueError("GraphMaskedAttribution explains models of one input")
            return (self.attribute(inputs[0], target, **kwargs),)
        targets = per_example_targets(target, len(inputs), inputs.device)
        result = torch.zeros_like(inputs)
        for label in targets.unique().tolist():
            if label not in self.graphs:
                raise ValueError(f"no SSA graph for class {label}")
            rows = targets == label
            with self.graphs[label].mask(self.model):
                result[rows] = self.method.attribute(inputs[rows], target=label, **kwargs).detach()
        return result


def ssa_explainer(
    layer_names: Sequence[str],
    reference_inputs: Tensor,
    reference_labels: Tensor,
    method: Callable[[nn.Module], Any] = InputXGradient,
    **class_graph_kwargs: Any,
) -> Explainer:
    r"""
    An :class:`Explainer` that builds SSA class graphs on any model (the trained
    one, or a randomised copy in the sanity check) and explains through them
    with :class:`GraphMaskedAttribution`.

    Args:
        layer_names (list[str]): The SSA layers, lowest first, top = the output.
        reference_inputs, reference_labels: The data the class graphs are built on.
        method (type, optional): The Captum method run through the graph.
        **class_graph_kwargs: Passed to ``StepwiseSensitivity.class_graphs``.

    Examples::

        >>> compare(net, {"SSA": ssa_explainer(["conv1", "conv2", "fc1", "fc2"],
        ...                                    x_train, y_train)}, x, y)
    """

    def build(model: nn.Module) -> GraphMaskedAttribution:
        modules = dict(model.named_modules())
        ssa = StepwiseSensitivity(model, [modules[name] for name in layer_names])
        graphs = ssa.class_graphs(reference_inputs, reference_labels, **class_graph_kwargs)
        return GraphMaskedAttribution(model, graphs, method)

    return Explainer(build)
