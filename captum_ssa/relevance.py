"""Relevance functions: Step I of step-wise sensitivity analysis (SSA).

A relevance function says how much each neuron ``k`` of a lower layer matters to
a neuron ``n`` of the layer above, on each example: called as
``relevance(pair, upper_neurons, absolute)`` it returns a tensor shaped
``(len(upper_neurons), N, K)``. ``StepwiseSensitivity.attribute(relevance=...)``
takes a registered name (:func:`registered_relevances`), a :class:`Relevance`,
a Captum layer attribution (wrapped in :class:`CaptumRelevance`) or any callable
with that signature.

To write your own, subclass :class:`Relevance`, declare what SSA must know as
class attributes, and register it::

    from captum_ssa.relevance import Relevance, register_relevance

    @register_relevance("squared_activation")
    class SquaredActivation(Relevance):
        needs_gradients = False   # SSA then reads a dataset once for every layer pair
        absolute_applies = False  # absolute=False is an error, not ignored

        def __call__(self, pair, upper_neurons, absolute):
            values = pair.lower_output.detach().flatten(2).mean(2) ** 2
            return values.expand(len(upper_neurons), *values.shape)

    graph = ssa.attribute(loader, target=3, relevance="squared_activation")

The implementation lives with SSA in ``captum_ssa._core.stepwise_sensitivity``.
"""

from captum_ssa._core.stepwise_sensitivity.relevance import (
    BUILT_IN,
    PRESETS,
    CaptumRelevance,
    LayerPair,
    Relevance,
    RelevanceFunction,
    activation,
    gradient,
    gradient_x_activation,
    gradients,
    register_relevance,
    registered_relevances,
    resolve_relevance,
    weight,
    weight_abs,
    weight_activation,
    weight_matrix,
)

__all__ = [
    "BUILT_IN",
    "PRESETS",
    "CaptumRelevance",
    "LayerPair",
    "Relevance",
    "RelevanceFunction",
    "activation",
    "gradient",
    "gradient_x_activation",
    "gradients",
    "register_relevance",
    "registered_relevances",
    "resolve_relevance",
    "weight",
    "weight_abs",
    "weight_activation",
    "weight_matrix",
]
