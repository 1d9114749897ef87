"""Relevance functions: Step I of step-wise sensitivity analysis.

A relevance function says how much each neuron k of a lower layer matters to
a neuron n of the layer above, on each example. It is called as

    relevance(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor

and returns a tensor shaped ``(len(upper_neurons), N, K)``: entry ``[j, i, k]``
is the relevance of lower neuron ``k`` to upper neuron ``upper_neurons[j]`` on
example ``i``.

The extension point is :class:`Relevance`: a subclass declares, as class
attributes, what SSA must know about it (whether it takes gradients, whether
its absolute value comes after Step II's mean, whether ``absolute=False``
means anything to it), and :func:`register_relevance` gives it a name that
``StepwiseSensitivity.attribute(relevance="name")`` finds. The built-ins are
registered the same way, among them the four strategies of Dimanov and
Jamnik's SSA paper (:data:`PRESETS`). A Captum layer attribution (class or
instance) is wrapped in :class:`CaptumRelevance`; any other callable with the
signature above is used as it is, as one that needs gradients.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, TypeVar, Union

import torch
from captum.attr import LRP, Attribution, LayerAttribution
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.stepwise_sensitivity.segment import (
    activity_function,
    mean_gradient_magnitudes,
    mean_magnitude,
)
from captum_ssa._core.stepwise_sensitivity.weighted_connection import (
    WeightedCall,
    connecting_layer,
    connection_weights,
)
from captum_ssa._utils.hooks import model_of, neuron_axis, spatial_mean


@dataclass
class LayerPair:
    """What Step I may need about two consecutive listed layers, from one forward pass.

    ``lower_output`` ``(N, K, *P)`` and ``upper_output`` ``(N, C, *Q)`` are the layers'
    outputs in the autograd graph of that pass; ``upper_input`` is the upper
    layer's input when it was observed (plain Linear/Conv layers), else None.
    ``forward_func``, ``inputs`` and ``additional_forward_args`` let a relevance
    function run the model again (Captum attributions do); ``forward_func`` is the
    model as SSA runs it (the original module of a compiled model, returning the
    tensor the explainer's ``output=`` selects). ``neuron_dim`` is the
    axis of the layers' own outputs that holds their neurons (None: dim 1); the
    two outputs here already have it moved to dim 1, and a relevance function
    that runs the model again must move it the same way (``run_and_capture``
    does with ``neuron_dim``). ``weighted_calls`` are the calls of plain
    Linear/Conv modules seen in that pass (see
    ``weighted_connection.record_weighted_calls``), where the weight relevances look for
    the layer that connects the two.

    ``mask`` is the examples' mask (``mask=`` of the call, or the batches'), or
    None; it is then also the first of ``additional_forward_args``, as the model
    receives it. ``lower_weights`` and ``upper_weights`` are the layers' position
    weights ``(N, P)`` under it, None for a layer whose positions all count (no
    mask, or no token axis): a relevance function reduces positions with
    :meth:`position_mean`, which leaves the pads out.
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
    mask: Optional[Tensor] = None
    lower_weights: Optional[Tensor] = None
    upper_weights: Optional[Tensor] = None

    def position_mean(self, values: Tensor, leading_dims: int = 1) -> Tensor:
        """The mean of ``values`` ``(..., N, K, *P)``, shaped like the lower output
        after ``leading_dims - 1`` leading dims, over the lower layer's positions
        ``P``: ``(..., N, K)``, over the valid positions only under a mask."""
        return spatial_mean(values, leading_dims, self.lower_weights)

    @property
    def axes_moved(self) -> bool:
        """Whether either layer's neurons were moved to dim 1 from another axis."""
        return self.neuron_dim is not None and any(
            neuron_axis(self.neuron_dim, output.dim()) != 1
            for output in (self.lower_output, self.upper_output)
        )


RelevanceFunction = Callable[[LayerPair, Tensor, bool], Tensor]


class Relevance:
    r"""
    Base class of Step I's relevance functions: the call, and what SSA must know.

    A subclass implements :meth:`__call__` and declares, as class attributes:

    - ``needs_gradients`` (default True): whether the relevance takes gradients.
      Without them its cost does not grow by a backward pass per upper neuron,
      so SSA reads a dataset once for every layer pair (``passes="auto"``
      chooses ``"single"``) rather than once per pair.
    - ``absolute_after_aggregation`` (default False): the relevance returns
      signed per-example values and SSA takes the absolute value of their
      mean after Step II (the paper's "absolute average activation"); it then
      needs ``aggregation="mean"``.
    - ``absolute_applies`` (default True): whether ``absolute=False`` (signed
      relevances) means anything to it. Where it does not, ``absolute=False``
      is an error rather than ignored.

    Registered with :func:`register_relevance`, it is found by name. It must
    be constructible without arguments to be found by name; an instance (with
    any arguments) may always be passed as ``relevance=`` itself.

    Examples::

        >>> from captum_ssa.relevance import Relevance, register_relevance
        >>> @register_relevance("squared_activation")
        ... class SquaredActivation(Relevance):
        ...     needs_gradients = False
        ...     absolute_applies = False
        ...     def __call__(self, pair, upper_neurons, absolute):
        ...         values = pair.position_mean(pair.lower_output.detach()) ** 2
        ...         return values.expand(len(upper_neurons), *values.shape)
        >>> graph = ssa.attribute(loader, target=3, relevance="squared_activation")
    """

    needs_gradients: ClassVar[bool] = True
    absolute_after_aggregation: ClassVar[bool] = False
    absolute_applies: ClassVar[bool] = True
    # the name it is registered (and recorded in a graph's metadata) under
    name: ClassVar[Optional[str]] = None

    @property
    def __name__(self) -> str:
        return self.name or str(type(self).__name__)

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_REGISTRY: dict[str, type[Relevance]] = {}
R = TypeVar("R", bound=type[Relevance])


def register_relevance(name: str) -> Callable[[R], R]:
    """Class decorator: ``relevance=name`` finds the :class:`Relevance` subclass.

    Raises a ValueError for a name already taken (by a built-in or an earlier
    registration) and a TypeError for a class that is not a :class:`Relevance`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a relevance is registered under a non-empty string, got {name!r}")

    def register(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Relevance)):
            raise TypeError(
                f"register_relevance takes a subclass of Relevance, got {cls!r}; wrap a "
                "plain function by passing it as relevance= directly"
            )
        if name in _REGISTRY:
            raise ValueError(
                f"a relevance named {name!r} is registered already "
                f"({_REGISTRY[name].__qualname__}); choose another name"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def registered_relevances() -> list[str]:
    """The names ``relevance=`` accepts, sorted."""
    return sorted(_REGISTRY)


def _absolute_if(absolute: bool, tensor: Tensor) -> Tensor:
    return tensor.abs() if absolute else tensor


@register_relevance("gradient")
class Gradient(Relevance):
    r"""Mean over positions p of :math:`|\partial a_n / \partial a_{k,p}|`."""

    def factor(self, pair: LayerPair) -> Optional[Tensor]:
        """What the gradient is multiplied by before the mean over positions."""
        return None

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return mean_gradient_magnitudes(
            pair.lower_output,
            pair.upper_layer,
            pair.upper_output,
            pair.upper_input,
            upper_neurons,
            absolute,
            factor=self.factor(pair),
            lower_weights=pair.lower_weights,
            upper_weights=pair.upper_weights,
        )


@register_relevance("gradient_x_activation")
class GradientXActivation(Gradient):
    r"""Mean over positions p of :math:`|\partial a_n / \partial a_{k,p} \cdot a_{k,p}|`."""

    def factor(self, pair: LayerPair) -> Optional[Tensor]:
        return pair.lower_output.detach()


@register_relevance("activation")
class Activation(Relevance):
    r""":math:`|\mathrm{mean}_p\, a_{k,p}|`, the same for every upper neuron."""

    needs_gradients = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        values = _absolute_if(absolute, pair.position_mean(pair.lower_output.detach()))
        return values.expand(len(upper_neurons), *values.shape)


@register_relevance("weight")
class Weight(Relevance):
    r""":math:`|W[n, k]|` of the Linear/Conv connecting the layers (see
    :func:`weight_matrix`), the same on every example."""

    needs_gradients = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        rows = weight_matrix(pair, absolute, self.__name__)[
            upper_neurons.to(pair.lower_output.device)
        ]
        batch_size = pair.lower_output.shape[0]
        return rows[:, None, :].expand(len(upper_neurons), batch_size, rows.shape[1])


@register_relevance("weight_activation")
class WeightActivation(Relevance):
    r""":math:`|W[n, k]| \cdot |\mathrm{mean}_p\, a_{k,p}|`."""

    needs_gradients = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        rows = weight_matrix(pair, absolute, self.__name__)[
            upper_neurons.to(pair.lower_output.device)
        ]
        values = _absolute_if(absolute, pair.position_mean(pair.lower_output.detach()))
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


# The paper's four strategies (Dimanov and Jamnik 2018, Tables 2-4), with the
# absolute value where the paper puts it: absolute=False does not apply to them.


@register_relevance("weight_abs")
class WeightAbs(Weight):
    r"""The paper's *weight_abs*: :math:`|W[n, k]|` (see :func:`weight_matrix`)."""

    absolute_applies = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return super().__call__(pair, upper_neurons, True)


@register_relevance("gradients")
class Gradients(Gradient):
    r"""The paper's *gradients*: :math:`|\partial a_n / \partial a_{k,p}|`, averaged
    over positions here and over the data in Step II."""

    absolute_applies = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return super().__call__(pair, upper_neurons, True)


@register_relevance("activations_abs")
class ActivationsAbs(Relevance):
    r"""The paper's *activations_abs*, "the absolute average activation of a neuron
    over the target data": :math:`|\mathrm{mean}_i\, \mathrm{mean}_p\, a_{k,p}(x_i)|`.
    Step I gives the signed per-example means; SSA takes the absolute value after
    Step II's mean over the data."""

    needs_gradients = False
    absolute_after_aggregation = True
    absolute_applies = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        values = pair.position_mean(pair.lower_output.detach())
        return values.expand(len(upper_neurons), *values.shape)


@register_relevance("weight_act_abs")
class WeightActAbs(Relevance):
    r"""The paper's *weight_act_abs*: :math:`|W[n, k]|` times the signed per-example
    activation, whose absolute value SSA takes after Step II's mean (as
    :class:`ActivationsAbs`)."""

    needs_gradients = False
    absolute_after_aggregation = True
    absolute_applies = False

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        values = pair.position_mean(pair.lower_output.detach())
        rows = weight_matrix(pair, True, self.__name__)[upper_neurons.to(values.device)]
        return rows[:, None, :] * values[None]


gradient = Gradient()
gradient_x_activation = GradientXActivation()
activation = Activation()
weight = Weight()
weight_activation = WeightActivation()
weight_abs = WeightAbs()
gradients = Gradients()

PRESETS: dict[str, Relevance] = {
    "weight_abs": weight_abs,
    "activations_abs": ActivationsAbs(),
    "weight_act_abs": WeightActAbs(),
    "gradients": gradients,
}

BUILT_IN: dict[str, Relevance] = {
    "gradient": gradient,
    "activation": activation,
    "gradient_x_activation": gradient_x_activation,
    "weight": weight,
    "weight_activation": weight_activation,
    **PRESETS,
}


class CaptumRelevance(Relevance):
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

    @property
    def __name__(self) -> str:
        return self.method_class.__name__

    def __repr__(self) -> str:
        return f"CaptumRelevance({self.method_class.__name__})"

    def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        forward = activity_function(
            pair.forward_func,
            pair.upper_layer,
            len(pair.inputs),
            pair.neuron_dim,
            masked=pair.mask is not None,
        )
        rules: dict[Module, Any] = {}
        if issubclass(self.method_class, LRP):
            # LRP walks model.modules() to attach its rules, so it needs a Module
            # that holds the model's layers, not a plain function
            model = model_of(pair.forward_func)
            if model is None:
                raise TypeError(
                    f"{self.__name__} needs the model to be an nn.Module (LRP attaches "
                    f"rules to its layers); got {type(pair.forward_func).__name__}"
                )
            forward = _ActivityModule(model, forward)
            # LRP deletes every layer's `rule` when an attribution ends, the user's
            # too: those are put back after each call, or the next neuron's would
            # fail (no default rule for e.g. Flatten) or silently use another rule
            rules = {layer: layer.rule for layer in model.modules() if getattr(layer, "rule", None)}
        method = self.method_class(forward, pair.lower_layer, **self.constructor_kwargs)
        inputs = tuple(t.detach() for t in pair.inputs)
        rows = []
        for neuron in upper_neurons.tolist():
            try:
                attribution = method.attribute(
                    inputs,
                    target=neuron,
                    additional_forward_args=pair.additional_forward_args,
                    **self.attribute_kwargs,
                )
            finally:
                for layer, rule in rules.items():
                    layer.rule = rule
            if not isinstance(attribution, Tensor):
                raise TypeError(
                    f"{self.__name__} returned {type(attribution).__name__}; a relevance "
                    "needs one tensor shaped like the lower layer's output"
                )
            if pair.neuron_dim is not None:  # shaped like the lower layer's own output
                axis = neuron_axis(pair.neuron_dim, attribution.dim(), pair.lower_name)
                attribution = attribution.movedim(axis, 1)
            rows.append(mean_magnitude(attribution.detach(), absolute, weights=pair.lower_weights))
        if not rows:
            return pair.lower_output.new_zeros(0, *pair.lower_output.shape[:2])
        return torch.stack(rows)


class _ActivityModule(Module):
    """The upper layer's activities as a Module whose only child is the model.

    LRP's rules are found and attached through ``modules()``/``children()``;
    the wrapper itself has no parameters and no rule of its own.
    """

    def __init__(self, model: Module, activity: Callable[..., Tensor]) -> None:
        super().__init__()
        self.model = model
        self.activity = activity

    def forward(self, *arguments: Any) -> Tensor:
        return self.activity(*arguments)


def resolve_relevance(relevance: Any) -> tuple[RelevanceFunction, str]:
    """The relevance function for ``relevance`` and the name it is recorded under.

    ``relevance`` is a registered name, a :class:`Relevance` subclass or
    instance, a Captum layer attribution class or instance, or a callable.
    """
    if isinstance(relevance, str):
        if relevance not in _REGISTRY:
            raise ValueError(
                f"relevance must be one of {registered_relevances()}, a Relevance, a Captum "
                f"layer attribution or a callable; got {relevance!r}"
            )
        return _REGISTRY[relevance](), relevance
    if isinstance(relevance, type) and issubclass(relevance, Relevance):
        relevance = relevance()
    if isinstance(relevance, Relevance):
        return relevance, relevance.__name__
    if (isinstance(relevance, type) and issubclass(relevance, Attribution)) or isinstance(
        relevance, Attribution
    ):
        wrapped = CaptumRelevance(relevance)
        return wrapped, wrapped.__name__
    if callable(relevance):
        if getattr(relevance, "absolute_after_aggregation", False):
            raise TypeError(
                "a plain function cannot declare absolute_after_aggregation; subclass "
                "captum_ssa.relevance.Relevance and set absolute_after_aggregation = True "
                "as a class attribute"
            )
        return relevance, getattr(relevance, "__name__", type(relevance).__name__)
    raise TypeError(
        f"relevance must be a name, a Relevance, a Captum layer attribution or a callable; "
        f"got {type(relevance).__name__}"
    )


def needs_gradients(relevance: RelevanceFunction) -> bool:
    """What ``relevance`` declares (a plain callable: True)."""
    return relevance.needs_gradients if isinstance(relevance, Relevance) else True


def absolute_after_aggregation(relevance: RelevanceFunction) -> bool:
    """What ``relevance`` declares (a plain callable: False)."""
    return isinstance(relevance, Relevance) and relevance.absolute_after_aggregation


def absolute_applies(relevance: RelevanceFunction) -> bool:
    """What ``relevance`` declares (a plain callable: True)."""
    return not isinstance(relevance, Relevance) or relevance.absolute_applies
