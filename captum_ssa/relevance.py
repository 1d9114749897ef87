"""Relevance functions: Step I of step-wise sensitivity analysis.

A relevance function says how much each neuron k of a lower layer matters to
a neuron n of the layer above, on each example. It is a plain callable

    relevance(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor

returning a tensor shaped ``(len(upper_neurons), N, K)``: row ``[j, i, k]`` is
the relevance of lower neuron ``k`` to upper neuron ``upper_neurons[j]`` on
example ``i``. The built-ins are reached by name (:data:`BUILT_IN`), among
them the four strategies of Dimanov and Jamnik's SSA paper (:data:`PRESETS`).
A function with the attribute ``absolute_after_aggregation = True`` returns
signed values whose absolute value SSA takes after Step II's mean over the
data (the paper's "absolute average activation"). A Captum
layer attribution (class or instance) is wrapped in :class:`CaptumRelevance`;
any other callable with this signature is used as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.hooks import neuron_axis
from captum_ssa._utils.segment import (
    activity_function,
    mean_gradient_magnitudes,
    mean_magnitude,
    spatial_mean,
)
from captum_ssa._utils.weighted_connection import (
    WeightedCall,
    connecting_layer,
    connection_weights,
)

__all__ = [
    "BUILT_IN",
    "PRESETS",
    "CaptumRelevance",
    "LayerPair",
    "RelevanceFunction",
    "activation",
    "gradient",
    "gradient_x_activation",
    "gradients",
    "resolve_relevance",
    "weight",
    "weight_abs",
    "weight_activation",
    "weight_matrix",
]


@dataclass
class LayerPair:
    """What Step I may need about two consecutive listed layers, from one forward pass.

    ``lower_output`` (N, K, *P) and ``upper_output`` (N, C, *Q) are the layers'
    outputs in the autograd graph of that pass; ``upper_input`` is the upper
    layer's input when it was observed (plain Linear/Conv layers), else None.
    ``forward_func``, ``inputs`` and ``additional_forward_args`` let a relevance
    function run the model again (Captum attributions do). ``neuron_dim`` is the
    axis of the layers' own outputs that holds their neurons (None: dim 1); the
    two outputs here already have it moved to dim 1, and a relevance function
    that runs the model again must move it the same way (``run_and_capture``
    does with ``neuron_dim``). ``weighted_calls`` are the calls of plain
    Linear/Conv modules seen in that pass (see
    ``weighted_connection.record_weighted_calls``), where the weight relevances look for
    the layer that connects the two.
    """

    lower_name: str
    upper_name: str
    lower_layer: Module
    upper_layer: Module
    lower_output: Tensor
    upper_output: Tensor
    upper_input: Optional[Tensor]
    forward_func: Callable[..., Any]
    inputs: tuple[Tensor, ...]
    additional_forward_args: Any = None
    neuron_dim: Optional[int] = None
    weighted_calls: dict[int, WeightedCall] = field(default_factory=dict)

    @property
    def axes_moved(self) -> bool:
        """Whether either layer's neurons were moved to dim 1 from another axis."""
        return self.neuron_dim is not None and any(
            neuron_axis(self.neuron_dim, output.dim()) != 1
            for output in (self.lower_output, self.upper_output)
        )


RelevanceFunction = Callable[[LayerPair, Tensor, bool], Tensor]


def _absolute_if(absolute: bool, tensor: Tensor) -> Tensor:
    return tensor.abs() if absolute else tensor


def gradient(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r"""Mean over positions p of :math:`|\partial a_n / \partial a_{k,p}|`."""
    return mean_gradient_magnitudes(
        pair.lower_output,
        pair.upper_layer,
        pair.upper_output,
        pair.upper_input,
        upper_neurons,
        absolute,
    )


def gradient_x_activation(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r"""Mean over positions p of :math:`|\partial a_n / \partial a_{k,p} \cdot a_{k,p}|`."""
    return mean_gradient_magnitudes(
        pair.lower_output,
        pair.upper_layer,
        pair.upper_output,
        pair.upper_input,
        upper_neurons,
        absolute,
        factor=pair.lower_output.detach(),
    )


def activation(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r""":math:`|\mathrm{mean}_p\, a_{k,p}|`, the same for every upper neuron."""
    values = _absolute_if(absolute, spatial_mean(pair.lower_output.detach()))
    return values.expand(len(upper_neurons), *values.shape)


def weight(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r""":math:`|W[n, k]|` of the Linear/Conv connecting the layers (see
    :func:`weight_matrix`), the same on every example."""
    rows = weight_matrix(pair, absolute, "weight")[upper_neurons.to(pair.lower_output.device)]
    batch_size = pair.lower_output.shape[0]
    return rows[:, None, :].expand(len(upper_neurons), batch_size, rows.shape[1])


def weight_activation(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r""":math:`|W[n, k]| \cdot |\mathrm{mean}_p\, a_{k,p}|`."""
    rows = weight_matrix(pair, absolute, "weight_activation")[
        upper_neurons.to(pair.lower_output.device)
    ]
    values = _absolute_if(absolute, spatial_mean(pair.lower_output.detach()))
    return rows[:, None, :] * values[None]


def weight_matrix(pair: LayerPair, absolute: bool, name: str) -> Tensor:
    r"""
    The (C, K) weights between upper neuron ``n`` and lower neuron ``k``.

    They are the weights of the one ``nn.Linear``/``nn.ConvNd`` module between
    the two listed layers. The listed layers may be the weighted layers
    themselves or activation modules: between the lower output and the
    weighted layer's input, and between its output and the upper output, only
    element-wise operations (ReLU, eval-mode batch norm, dropout, adding a
    constant), max/avg pooling and reshapes (flatten, squeeze) may lie, so
    that channel ``k`` below stays channel ``k`` at the weights. The entry is
    the mean of :math:`|W|` over the kernel for a conv, and over the ``F / K``
    input features a flattened channel occupies for a Linear: each channel
    has as many weights to each upper neuron, so this ranks like their sum.

    Raises a ValueError, naming ``name`` and what lies between, where the
    weights do not connect the two layers that way (two weighted layers, a
    residual sum, a moved neuron axis, ...).
    """
    problem = None
    if pair.axes_moved:
        problem = (
            f"neuron_dim={pair.neuron_dim} moves the neuron axis of {pair.lower_name!r} or "
            f"{pair.upper_name!r} away from dim 1, where the weights' input and output "
            "features are not"
        )
    else:
        try:
            call = connecting_layer(pair.upper_output, pair.lower_output, pair.weighted_calls)
            return connection_weights(call, pair.lower_output, pair.upper_output, absolute)
        except ValueError as error:
            problem = str(error)
    raise ValueError(
        f"relevance={name!r} needs the weights of one nn.Linear or nn.Conv1d/2d/3d module "
        f"connecting {pair.lower_name!r} to {pair.upper_name!r} through element-wise "
        f"operations, pooling and reshapes only, but {problem}. Use relevance='gradient' "
        "(which differentiates through whatever lies between), or list layers that one "
        "weighted layer connects."
    )


class _AbsoluteOfMean:
    """A paper preset whose absolute value comes after Step II's mean over the data.

    Step I gives the signed per-example values; :meth:`StepwiseSensitivity.attribute`
    takes the absolute value of their mean (``absolute_after_aggregation``).
    """

    absolute_after_aggregation = True

    def __init__(self, name: str, with_weights: bool) -> None:
        self.__name__ = name
        self.with_weights = with_weights

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        values = spatial_mean(pair.lower_output.detach())
        if not self.with_weights:
            return values.expand(len(upper_neurons), *values.shape)
        rows = weight_matrix(pair, True, self.__name__)[upper_neurons.to(values.device)]
        return rows[:, None, :] * values[None]


def weight_abs(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r"""The paper's *weight_abs*: :math:`|W[n, k]|` (see :func:`weight_matrix`)."""
    return weight(pair, upper_neurons, True)


def gradients(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r"""The paper's *gradients*: :math:`|\partial a_n / \partial a_{k,p}|`, averaged
    over positions here and over the data in Step II."""
    return gradient(pair, upper_neurons, True)


# The paper's four strategies (Dimanov and Jamnik 2018, Tables 2-4), with the
# absolute value where the paper puts it.
PRESETS: dict[str, RelevanceFunction] = {
    "weight_abs": weight_abs,
    "activations_abs": _AbsoluteOfMean("activations_abs", with_weights=False),
    "weight_act_abs": _AbsoluteOfMean("weight_act_abs", with_weights=True),
    "gradients": gradients,
}


BUILT_IN: dict[str, RelevanceFunction] = {
    "gradient": gradient,
    "activation": activation,
    "gradient_x_activation": gradient_x_activation,
    "weight": weight,
    "weight_activation": weight_activation,
    **PRESETS,
}


class CaptumRelevance:
    r"""
    A Captum layer attribution used as Step I between two hidden layers.

    The attribution is built with ``forward_func`` = "the activities of the
    upper layer's neurons" (spatial means for a conv) and ``layer`` = the lower
    layer, called with ``target=n`` for each upper neuron ``n``, and its
    result is reduced over the lower layer's positions like the built-ins
    (absolute value first when ``absolute``). Each call runs the model as the
    method does (e.g. ``n_steps`` forward passes for integrated gradients), one
    call per upper neuron.

    Args:
        method (type or Attribution): A Captum layer attribution class such as
                    :class:`captum.attr.LayerIntegratedGradients`, or an
                    instance of one, whose class and ``multiplies_by_inputs``
                    setting are reused for every layer pair.
        **attribute_kwargs: Passed to every ``attribute`` call, e.g.
                    ``n_steps=20`` or ``baselines``.

    Examples::

        >>> from captum.attr import LayerIntegratedGradients
        >>> relevance = CaptumRelevance(LayerIntegratedGradients, n_steps=16)
        >>> graph = StepwiseSensitivity(net, layers).attribute(x, target=3,
        ...                                                    relevance=relevance)
    """

    def __init__(self, method: Union[type, Attribution], **attribute_kwargs: Any) -> None:
        method_class = method if isinstance(method, type) else type(method)
        if not issubclass(method_class, LayerAttribution):
            raise TypeError(
                "a Captum relevance must be a layer attribution, one built from "
                f"(forward_func, layer) such as LayerIntegratedGradients; got "
                f"{method_class.__name__}"
            )
        self.method_class: type = method_class
        self.constructor_kwargs: dict[str, Any] = {}
        accepts = inspect.signature(method_class).parameters
        if not isinstance(method, type) and "multiply_by_inputs" in accepts:
            self.constructor_kwargs["multiply_by_inputs"] = method.multiplies_by_inputs
        self.attribute_kwargs = attribute_kwargs
        self.__name__ = method_class.__name__

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        forward = activity_function(
            pair.forward_func, pair.upper_layer, len(pair.inputs), pair.neuron_dim
        )
        method = self.method_class(forward, pair.lower_layer, **self.constructor_kwargs)
        inputs = tuple(t.detach() for t in pair.inputs)
        rows = []
        for neuron in upper_neurons.tolist():
            attribution = method.attribute(
                inputs,
                target=neuron,
                additional_forward_args=pair.additional_forward_args,
                **self.attribute_kwargs,
            )
            if not isinstance(attribution, Tensor):
                raise TypeError(
                    f"{self.__name__} returned {type(attribution).__name__}; a relevance "
                    "needs one tensor shaped like the lower layer's output"
                )
            if pair.neuron_dim is not None:  # shaped like the lower layer's own output
                axis = neuron_axis(pair.neuron_dim, attribution.dim(), pair.lower_name)
                attribution = attribution.movedim(axis, 1)
            rows.append(mean_magnitude(attribution.detach(), absolute))
        if not rows:
            return pair.lower_output.new_zeros(0, *pair.lower_output.shape[:2])
        return torch.stack(rows)


def resolve_relevance(relevance: Any) -> tuple[RelevanceFunction, str]:
    """The relevance function for ``relevance`` and the name it is recorded under."""
    if isinstance(relevance, str):
        if relevance not in BUILT_IN:
            raise ValueError(
                f"relevance must be one of {sorted(BUILT_IN)}, a Captum layer attribution "
                f"or a callable; got {relevance!r}"
            )
        return BUILT_IN[relevance], relevance
    if (isinstance(relevance, type) and issubclass(relevance, Attribution)) or isinstance(
        relevance, Attribution
    ):
        wrapped = CaptumRelevance(relevance)
        return wrapped, wrapped.__name__
    if callable(relevance):
        return relevance, getattr(relevance, "__name__", type(relevance).__name__)
    raise TypeError(
        f"relevance must be a name, a Captum layer attribution or a callable; got "
        f"{type(relevance).__name__}"
    )
