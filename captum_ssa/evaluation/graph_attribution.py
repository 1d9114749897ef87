"""An input-shaped map from SSA's class graphs, so that SSA can stand in the
input-level comparison: a gradient method run through the graph's neurons only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from captum.attr import InputXGradient
from torch import Tensor, nn

from captum_ssa import DependencyGraph, StepwiseSensitivity
from captum_ssa._utils._compat import (
    TensorOrTupleOfTensorsGeneric,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum_ssa._utils.hooks import modules_by_name
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

    def attribute(
        self, inputs: TensorOrTupleOfTensorsGeneric, target: Any = None, **kwargs: Any
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""
        One map per example, each through the graph of its own target class.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): The examples, one tensor per
                        model input, all with the examples along dim 0. A tuple
                        in gives a tuple out (Captum's convention, which its
                        ``infidelity`` and ``sensitivity_max`` rely on).
            target (int, list or Tensor): The class explained, one for all or one
                        per example; it picks the graph each example runs through.
            **kwargs: Passed to ``method.attribute`` (e.g. ``n_steps``).

        Returns:
            *Tensor* or *tuple[Tensor, ...]*, shaped and formed as ``inputs``.
        """
        is_inputs_tuple = _is_tuple(inputs)
        formatted = _format_tensor_into_tuples(inputs)
        targets = per_example_targets(target, len(formatted[0]), formatted[0].device)
        result = tuple(torch.zeros_like(tensor) for tensor in formatted)
        for label in targets.unique().tolist():
            if label not in self.graphs:
                raise ValueError(f"no SSA graph for class {label}")
            rows = targets == label
            selected = tuple(tensor[rows] for tensor in formatted)
            with self.graphs[label].mask(self.model):
                maps = self.method.attribute(selected, target=label, **kwargs)
            for tensor, rows_map in zip(result, maps):
                tensor[rows] = rows_map.detach()
        return _format_output(is_inputs_tuple, result)


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
        modules = modules_by_name(model)
        ssa = StepwiseSensitivity(model, [modules[name] for name in layer_names])
        graphs = ssa.class_graphs(reference_inputs, reference_labels, **class_graph_kwargs)
        return GraphMaskedAttribution(model, graphs, method)

    return Explainer(build)
