"""Relevance functions: Step I of step-wise sensitivity analysis.

A relevance function says how much each neuron k of a lower layer matters to
a neuron n of the layer above, on each example. It is a plain callable

    relevance(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor

returning a tensor shaped ``(len(upper_neurons), N, K)``: row ``[j, i, k]`` is
the relevance of lower neuron ``k`` to upper neuron ``upper_neurons[j]`` on
example ``i``. The built-ins are reached by name (:data:`BUILT_IN`); a Captum
layer attribution (class or instance) is wrapped in :class:`CaptumRelevance`;
any other callable with this signature is used as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.hooks import neuron_axis
from captum_ssa._utils.segment import (
    activity_function,
    connection_weights,
    connects_directly,
    is_weighted_layer,
    mean_gradient_magnitudes,
    mean_magnitude,
    spatial_mean,
    weights_fit,
)


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
    does with ``neuron_dim``).
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
    r""":math:`|W[n, k]|` (mean over the kernel for a conv), the same on every example."""
    rows = direct_weights(pair, absolute, "weight")[upper_neurons.to(pair.lower_output.device)]
    batch_size = pair.lower_output.shape[0]
    return rows[:, None, :].expand(len(upper_neurons), batch_size, rows.shape[1])


def weight_activation(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
    r""":math:`|W[n, k]| \cdot |\mathrm{mean}_p\, a_{k,p}|`."""
    rows = direct_weights(pair, absolute, "weight_activation")[
        upper_neurons.to(pair.lower_output.device)
    ]
    values = _absolute_if(absolute, spatial_mean(pair.lower_output.detach()))
    return rows[:, None, :] * values[None]


def direct_weights(pair: LayerPair, absolute: bool, name: str) -> Tensor:
    """The upper layer's (C, K) weights, or a clear error where they mean nothing."""
    if pair.axes_moved:
        problem = (
            f"neuron_dim={pair.neuron_dim} moves the neuron axis of {pair.lower_name!r} or "
            f"{pair.upper_name!r} away from dim 1, where the weights' input and output "
            "features are not"
        )
    elif not is_weighted_layer(pair.upper_layer):
        problem = (
            f"{pair.upper_name!r} is a {type(pair.upper_layer).__name__}, not a nn.Linear "
            "or nn.Conv1d/2d/3d"
        )
    elif not connects_directly(pair.upper_input, pair.lower_output):
        problem = (
            f"the input of {pair.upper_name!r} is not the output of {pair.lower_name!r}: "
            "there is more than element-wise operations and reshapes between them "
            "(pooling, another layer, a residual sum, ...)"
        )
    elif pair.upper_input is not None and not weights_fit(
        pair.upper_layer, pair.upper_input, pair.lower_output
    ):
        problem = (
            f"the input features of {pair.upper_name!r} do not line up with the neurons "
            f"of {pair.lower_name!r}"
        )
    else:
        return connection_weights(pair.upper_layer, pair.lower_output, absolute)
    raise ValueError(
        f"relevance={name!r} needs the upper layer's weights to connect the two layers "
        f"directly, but {problem}. Use relevance='gradient' (which differentiates "
        "through whatever lies between), or list directly connected layers."
    )


BUILT_IN: dict[str, RelevanceFunction] = {
    "gradient": gradient,
    "activation": activation,
    "gradient_x_activation": gradient_x_activation,
    "weight": weight,
    "weight_activation": weight_activation,
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
