"""Layered influence: explanations from the most influential hidden layer (Ho, *Layered
Explanations*), scored with the monotone influence measure of Sliwinski, Strobel and Zick."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils._compat import (
    TensorOrTupleOfTensorsGeneric,
    _format_output,
    _is_tuple,
)
from captum_ssa._utils.deconvolution import deconvolve_from_layer
from captum_ssa._utils.hooks import (
    check_layers_in_model,
    model_of,
    run_and_capture,
    unique_layer_names,
)
from captum_ssa._utils.influence_measure import (
    DEFAULT_POINTS_PER_CHUNK,
    Alpha,
    check_alpha,
    monotone_influence,
)
from captum_ssa._utils.layer_selection import (
    gini_coefficient,
    linear_probe_accuracy,
    lowest_within_tolerance,
    neuron_activities,
)
from captum_ssa._utils.model_state import (
    WeightsFingerprint,
    check_fit_current,
    untouched_model,
    weights_fingerprint,
)
from captum_ssa._utils.segment import observe_layer_calls
from captum_ssa._utils.validation import positive_int, prepare_inputs, reference_batches

_CRITERIA = ("linear", "dispersion")
LayerChoice = Union[Module, str, None]
ClassTarget = Union[int, Tensor, np.ndarray, Sequence[int], None]


@dataclass
class _LayerReference:
    """One candidate layer's activations on the reference set, centred."""

    activations: Tensor  # (M, units): h(y) - mean, one row per reference point
    mean: Tensor  # (units,)
    shape: tuple[int, ...]  # the layer output's shape per example


class LayeredInfluence(NeuronAttribution, GradientAttribution):
    r"""
    Layered explanations: pick an influential hidden layer, score its units
    with a monotone influence measure on data, and project the most
    influential units back to the input with DeconvNet.

    1. :meth:`fit` runs the model on a reference set :math:`R` (e.g. the
       training data), keeps every candidate layer's activations and the
       model's own labels :math:`f(y)`, and chooses the layer: with
       ``criterion="linear"`` the *lowest* layer whose cross-validated linear
       probe (logistic regression on the neuron activities, predicting the
       model's labels) is within ``tolerance`` of the best layer's; with
       ``criterion="dispersion"`` the layer whose units' mean :math:`|\phi|`
       is most unequal (Gini coefficient).
    2. :meth:`influence` scores every unit :math:`u` (every element of the
       layer output, channel x position for a conv) for an input :math:`x`
       and the class :math:`t` it is explained as (``target``, by default
       the model's prediction :math:`f(x)`):

       .. math::
           \phi(x) = \sum_{y \in R,\ f(y) \ne t}
                     \alpha(\lVert h(x) - h(y) \rVert)\, (h(x) - h(y)),

       where :math:`h` is the layer's output and :math:`\alpha \ge 0` is
       non-increasing, by default :math:`\alpha(r) = 1/r^2` (pairs at
       :math:`r = 0` are skipped). A unit points *away* from the reference
       points outside class :math:`t` near :math:`x`: large :math:`|\phi_u|`
       means the unit separates :math:`x` from the other classes. Reference
       points very close to :math:`x` are summed from their exact difference,
       so rounding neither drops nor mis-weighs them.
    3. :meth:`attribute` keeps the top units by :math:`|\phi_u(x)|` and
       backpropagates their raw activation values (all other units zero) to
       the input with DeconvNet (Captum's :class:`~captum.attr.Deconvolution`
       rule on every ``nn.ReLU`` module); the result equals Captum's
       :class:`~captum.attr.NeuronDeconvolution` seeded with those values.
       Like Captum's neuron methods it explains hidden units and returns
       input-shaped attributions.

    The labels are the model's predictions (argmax over dim 1; a single
    output is read as a logit, label ``output > 0``). :meth:`fit` must be
    called again after the model's weights change: :meth:`influence` and
    :meth:`attribute` raise a ``RuntimeError`` on a stale fit.

    The measure is the Monotone Influence Measure family of Sliwinski,
    Strobel and Zick, *Axiomatic Characterization of Data-Driven Influence
    Measures for Classification* (AAAI 2019; arXiv:1708.02153), as we read
    it; the paper's exact normalisation could not be checked, so
    :math:`\alpha` is pluggable.

    Paper: Xuan-Vinh Ho, *Layered Explanations: Interpreting Neural Networks
    with Numerical Influence Measures* (National University of Singapore).
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: Union[Module, Sequence[Module]],
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or a bound method of it, or any
                        function of the inputs that runs it. :meth:`attribute`
                        needs the ``nn.Module`` (DeconvNet overrides its
                        ``nn.ReLU`` modules); :meth:`fit` and :meth:`influence`
                        work with any callable.
            layers (torch.nn.Module or list[torch.nn.Module]): The candidate
                        layers, any order; "lowest" means the first to run. The
                        output layer is a candidate only if listed.
        """
        candidates = [layers] if isinstance(layers, Module) else list(layers)
        if not candidates:
            raise ValueError("layers is empty: give at least one candidate layer")
        check_layers_in_model(forward_func, candidates)
        if len({id(layer) for layer in candidates}) < len(candidates):
            raise ValueError("layers lists the same module more than once")
        # Captum's neuron methods take one layer; ours keeps all the candidates
        NeuronAttribution.__init__(self, forward_func, candidates)
        GradientAttribution.__init__(self, forward_func)
        self._candidates = candidates
        self._names = unique_layer_names(model_of(forward_func), candidates)
        self._references: Optional[list[_LayerReference]] = None
        self._reference_labels: Optional[Tensor] = None
        self._chosen = 0
        self._scores: dict[str, float] = {}
        self._fingerprint: Optional[WeightsFingerprint] = None

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @property
    def chosen_layer(self) -> Module:
        r"""The layer :meth:`fit` chose (or was given). Available after :meth:`fit`."""
        self._fitted_references()
        return self._candidates[self._chosen]

    @property
    def chosen_layer_name(self) -> str:
        r"""The name of :attr:`chosen_layer` in the model."""
        self._fitted_references()
        return self._names[self._chosen]

    @property
    def layer_scores(self) -> dict[str, float]:
        r"""
        The per-layer score table of the last :meth:`fit`, layer name to score
        (probe accuracy for ``"linear"``, Gini coefficient for
        ``"dispersion"``), from the lowest layer to the highest; empty when
        :meth:`fit` was given a ``layer`` or there is a single candidate.
        """
        self._fitted_references()
        return dict(self._scores)

    @property
    def reference_size(self) -> int:
        r"""The number of reference points seen by :meth:`fit`."""
        return 0 if self._reference_labels is None else len(self._reference_labels)

    def fit(
        self,
        reference: Any,
        batch_size: Optional[int] = None,
        criterion: str = "linear",
        tolerance: float = 0.02,
        layer: LayerChoice = None,
        additional_forward_args: Any = None,
    ) -> LayeredInfluence:
        r"""
        Record the reference activations and labels, and choose the layer.

        Args:
            reference (Tensor, tuple, or Iterable): The reference set :math:`R`:
                        a tensor (a tuple of tensors for a multi-input model),
                        or an iterable of batches such as a ``DataLoader``
                        yielding tensors or ``(x, y)`` pairs (``y`` is ignored:
                        the labels are the model's predictions). Every
                        candidate layer's activations are kept, so memory grows
                        with ``len(R)`` times the layers' sizes.
            batch_size (int, optional): Run the model on at most this many
                        reference points at a time. Default: None (each batch
                        as given)
            criterion (str, optional): ``"linear"``: the lowest layer whose
                        cross-validated logistic-regression probe on the neuron
                        activities (a unit's value, a conv channel's spatial
                        mean) predicts the model's labels within ``tolerance``
                        of the best layer's accuracy. ``"dispersion"``: the
                        layer with the largest Gini coefficient of its units'
                        mean :math:`|\phi|` over the reference points (default
                        :math:`\alpha`). Default: ``"linear"``
            tolerance (float, optional): The accuracy a layer may lose to the
                        best one and still be chosen (``"linear"`` only).
                        Default: 0.02
            layer (torch.nn.Module or str, optional): Use this candidate layer
                        (a module or its name) and skip the scoring, as with a
                        single candidate. Default: None
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs of every batch.
                        Default: None

        Returns:
            *LayeredInfluence*: ``self``, with :attr:`chosen_layer`,
            :attr:`chosen_layer_name` and :attr:`layer_scores` set.

        Examples::

            >>> explainer = LayeredInfluence(net, [net.conv1, net.conv2, net.fc1])
            >>> explainer.fit(train_x)
            >>> explainer.layer_scores   # {'conv1': 0.97, 'conv2': 0.99, ...}
            >>> explainer.chosen_layer_name
            'conv2'
        """
        if criterion not in _CRITERIA:
            raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
        if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
            raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
        batch_size = positive_int("batch_size", batch_size)
        given = None if layer is None else self._candidate_index(layer)
        with untouched_model(self.forward_func), torch.no_grad():
            references, labels, call_order = self._run_reference(
                reference, batch_size, additional_forward_args
            )
        classes = labels.unique()
        if classes.numel() < 2:
            raise ValueError(
                f"the model predicts one class ({classes.tolist()}) for every "
                "reference point: the influence measure compares each point with "
                "differently-labelled points, so the reference set needs at "
                "least two predicted classes"
            )
        if given is not None or len(self._candidates) == 1:
            chosen, table = (0 if given is None else given), {}
        else:
            scores = []
            for position in call_order:  # a loop, so warnings point at the caller
                scores.append(_layer_score(references[position], labels, criterion))
            best = (
                lowest_within_tolerance(scores, tolerance)
                if criterion == "linear"
                else max(range(len(scores)), key=scores.__getitem__)
            )
            chosen = call_order[best]
            table = {self._names[p]: s for p, s in zip(call_order, scores)}
        # set only now, so a failed fit leaves the previous one intact
        self._references, self._reference_labels = references, labels
        self._chosen, self._scores = chosen, table
        # taken last and outside untouched_model: what the stored statistics describe
        self._fingerprint = weights_fingerprint(self.forward_func)
        return self

    def influence(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: ClassTarget = None,
        additional_forward_args: Any = None,
        layer: LayerChoice = None,
        alpha: Optional[Alpha] = None,
        points_per_chunk: Optional[int] = None,
    ) -> Tensor:
        r"""
        The influence :math:`\phi(x)` of every unit of the layer.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): The inputs :math:`x`;
                        dimension 0 is the batch.
            target (int, Tensor, numpy.ndarray or list[int], optional): The
                        class :math:`t` whose region is explained: the sum
                        runs over the reference points the model labels
                        :math:`f(y) \ne t`. An int for every example, or one
                        class per example (a 1-D tensor, array or list of
                        ``N`` ints). Classes are the model output's columns
                        (``0`` and ``1`` for a single logit). Default: None
                        (each example's prediction :math:`f(x)`)
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            layer (torch.nn.Module or str, optional): A candidate layer (module
                        or name). Default: None (:attr:`chosen_layer`)
            alpha (Callable, optional): The weighting :math:`\alpha(r)`, applied
                        elementwise to a tensor of distances
                        :math:`r = \lVert h(x) - h(y) \rVert > 0`; it must be
                        non-negative and non-increasing, and its weights are
                        cast to the activations' dtype. Default: None, which
                        is :math:`\alpha(r) = 1/r^2`. The paper's exact
                        normalisation of the measure could not be checked,
                        which is why :math:`\alpha` is pluggable; e.g.
                        ``lambda r: torch.exp(-r)`` or ``lambda r: r.pow(-1)``.
            points_per_chunk (int, optional): The most query points and the
                        most reference points in one block of the computation;
                        memory grows with it, not with the reference set.
                        Default: None (1024)

        Returns:
            *Tensor* of **influence** shaped like the layer's output,
            ``(N, *layer_shape)``.

        Examples::

            >>> phi = explainer.influence(test_x[:4])
            >>> phi.shape     # like the chosen layer's output
            >>> # against the points the model does not call class 3
            >>> phi = explainer.influence(test_x[:4], target=3)
            >>> phi = explainer.influence(test_x[:4], alpha=lambda r: torch.exp(-r))
        """
        position = self._layer_position(layer)
        check_alpha(alpha)
        points_per_chunk = positive_int("points_per_chunk", points_per_chunk)
        prepared = prepare_inputs(inputs)
        with untouched_model(self.forward_func), torch.no_grad():
            output, (activation,) = run_and_capture(
                self.forward_func,
                prepared,
                [self._candidates[position]],
                additional_forward_args,
            )
            return self._influence_of(
                activation, class_targets(output, target), position, alpha, points_per_chunk
            )

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: ClassTarget = None,
        additional_forward_args: Any = None,
        top_fraction: float = 0.013,
        top_k: Optional[int] = None,
        layer: LayerChoice = None,
        alpha: Optional[Alpha] = None,
        points_per_chunk: Optional[int] = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""
        DeconvNet reconstruction of the input from the most influential units.

        For each example the units with the largest :math:`|\phi_u(x)|` keep
        their activation value, every other unit is set to zero, and this is
        backpropagated to the input with DeconvNet (the backward of each
        ``nn.ReLU`` module is the ReLU of the incoming gradient; max-pool
        routes through its switches). Functional ReLUs (``F.relu``) and other
        activation modules (``nn.GELU``, ``nn.LeakyReLU``, ...) keep their
        ordinary gradient: a warning says so.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Input to explain; dimension
                        0 is the batch.
            target (int, Tensor, numpy.ndarray or list[int], optional): The
                        class whose region is explained: the influence is
                        taken against the reference points the model does not
                        label with it (see :meth:`influence`). An int for
                        every example, or one class per example. Default:
                        None (each example's prediction)
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            top_fraction (float, optional): Keep the smallest number of units
                        covering this fraction of the layer,
                        :math:`\lceil q \cdot U \rceil` (at least one).
                        Default: 0.013 (1.3%, as in the paper)
            top_k (int, optional): Keep exactly this many units instead of a
                        fraction. Default: None
            layer (torch.nn.Module or str, optional): A candidate layer (module
                        or name). Default: None (:attr:`chosen_layer`)
            alpha (Callable, optional): The weighting :math:`\alpha(r)` of
                        :meth:`influence`. Default: None (:math:`1/r^2`)
            points_per_chunk (int, optional): Block size, in query and
                        reference points, of the influence computation (see
                        :meth:`influence`). Default: None (1024)

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, shaped like
            ``inputs``: the DeconvNet reconstructions.

        Examples::

            >>> explainer = LayeredInfluence(net, [net.conv1, net.conv2]).fit(train_x)
            >>> reconstruction = explainer.attribute(test_x[:4], top_fraction=0.025)
            >>> reconstruction.shape == test_x[:4].shape
            True
            >>> # what sets each example apart from the points not labelled y
            >>> reconstruction = explainer.attribute(test_x[:4], target=test_y[:4])
        """
        position = self._layer_position(layer)
        check_alpha(alpha)
        points_per_chunk = positive_int("points_per_chunk", points_per_chunk)
        model = model_of(self.forward_func)
        if model is None:
            raise TypeError(
                "attribute needs forward_func to be an nn.Module or a bound "
                "method of one: DeconvNet overrides the model's nn.ReLU modules"
            )
        layer_module = self._candidates[position]
        prepared = prepare_inputs(inputs)
        with untouched_model(self.forward_func):
            with torch.no_grad():
                output, (activation,) = run_and_capture(
                    self.forward_func, prepared, [layer_module], additional_forward_args
                )
                influence = self._influence_of(
                    activation, class_targets(output, target), position, alpha, points_per_chunk
                )
                seed = top_unit_seed(activation, influence, top_fraction, top_k)
            reconstruction = deconvolve_from_layer(
                model,
                self.forward_func,
                prepared,
                layer_module,
                seed,
                additional_forward_args,
            )
        return _format_output(_is_tuple(inputs), reconstruction)

    def _fitted_references(self) -> list[_LayerReference]:
        if self._references is None:
            raise RuntimeError(
                "LayeredInfluence is not fitted: call fit(reference) with "
                "reference data (e.g. the training set) first"
            )
        return self._references

    def _candidate_index(self, layer: Union[Module, str]) -> int:
        for position, (candidate, name) in enumerate(zip(self._candidates, self._names)):
            if layer is candidate or (isinstance(layer, str) and layer == name):
                return position
        shown = layer if isinstance(layer, str) else type(layer).__name__
        raise ValueError(
            f"layer {shown!r} is not one of the candidate layers {self._names}; "
            "pass one of them (a module or its name) or add it to layers"
        )

    def _layer_position(self, layer: LayerChoice) -> int:
        """The candidate to use, once the fit is known to be there and current."""
        self._fitted_references()
        check_fit_current(self._fingerprint, self.forward_func, type(self).__name__)
        return self._chosen if layer is None else self._candidate_index(layer)

    def _run_reference(
        self, reference: Any, batch_size: Optional[int], additional_forward_args: Any
    ) -> tuple[list[_LayerReference], Tensor, list[int]]:
        """Every candidate's centred activations, the labels, and the order in
        which the candidates run (lowest first)."""
        activations: list[list[Tensor]] = [[] for _ in self._candidates]
        shapes: list[Optional[tuple[int, ...]]] = [None] * len(self._candidates)
        labels: list[Tensor] = []
        call_order: list[int] = []
        first_shapes: Optional[list[tuple[int, ...]]] = None
        for index, batch in enumerate(reference_batches(reference)):
            batch_shapes = [tuple(t.shape[1:]) for t in batch]
            first_shapes = first_shapes or batch_shapes
            if batch_shapes != first_shapes:
                raise ValueError(
                    f"reference batch {index} holds inputs shaped {_shown(batch_shapes)} "
                    f"per example, batch 0 {_shown(first_shapes)}: every reference "
                    "point is compared with every other in the layer, so give "
                    "reference inputs of one shape"
                )
            step = batch[0].shape[0] if batch_size is None else batch_size
            for start in range(0, batch[0].shape[0], step):
                part = tuple(t[start : start + step] for t in batch)
                no_inputs_kept = [False] * len(self._candidates)
                with observe_layer_calls(self._candidates, no_inputs_kept) as calls:
                    output, outputs = run_and_capture(
                        self.forward_func, part, self._candidates, additional_forward_args
                    )
                call_order = call_order or calls.order
                labels.append(model_labels(output))
                for position, layer_output in enumerate(outputs):
                    shape = tuple(layer_output.shape[1:])
                    if shapes[position] not in (None, shape):
                        raise ValueError(
                            f"layer {self._names[position]} outputs {shape} per "
                            f"example in one reference batch and {shapes[position]} "
                            "in another; give reference inputs of one shape"
                        )
                    shapes[position] = shape
                    activations[position].append(
                        layer_output.detach().reshape(len(layer_output), -1)
                    )
        if not labels:
            raise ValueError("the reference data is empty: fit needs reference points")
        references = [
            _centred(torch.cat(parts), shape)
            for parts, shape in zip(activations, shapes)
            if shape is not None
        ]
        return references, torch.cat(labels), call_order

    def _influence_of(
        self,
        activation: Tensor,
        labels: Tensor,
        position: int,
        alpha: Optional[Alpha],
        points_per_chunk: Optional[int],
    ) -> Tensor:
        reference = self._fitted_references()[position]
        reference_labels = self._reference_labels
        assert reference_labels is not None
        if tuple(activation.shape[1:]) != reference.shape:
            raise ValueError(
                f"layer {self._names[position]} outputs {tuple(activation.shape[1:])} "
                f"per example here but {reference.shape} in fit(); fit on inputs "
                "shaped like these"
            )
        device = activation.device
        queries = activation.detach().reshape(len(activation), -1)
        queries = queries.to(reference.activations.dtype) - reference.mean.to(device)
        influence = monotone_influence(
            queries,
            labels.to(device),
            reference.activations.to(device),
            reference_labels.to(device),
            alpha=alpha,
            points_per_chunk=points_per_chunk,
        )
        return influence.reshape(activation.shape)


def _layer_score(reference: _LayerReference, labels: Tensor, criterion: str) -> float:
    """Probe accuracy ("linear") or Gini coefficient of mean |phi| ("dispersion")."""
    if criterion == "linear":
        layer_output = reference.activations.reshape(-1, *reference.shape)
        return linear_probe_accuracy(neuron_activities(layer_output), labels)
    mean_abs_influence = torch.zeros_like(reference.mean)
    # the reference points are the queries, a block at a time to bound memory
    for start in range(0, len(labels), DEFAULT_POINTS_PER_CHUNK):
        block = slice(start, start + DEFAULT_POINTS_PER_CHUNK)
        influence = monotone_influence(
            reference.activations[block], labels[block], reference.activations, labels
        )
        mean_abs_influence += influence.abs().sum(0) / len(labels)
    return gini_coefficient(mean_abs_influence)


def model_labels(output: Any) -> Tensor:
    """The model's labels: argmax over dim 1, or ``output > 0`` for one logit."""
    if _class_count(output) == 2 and (output.dim() == 1 or output.shape[1] == 1):
        return (output.reshape(-1) > 0).long()
    return output.argmax(1)


def _class_count(output: Any) -> int:
    """The number of classes of a classifier output: its columns, 2 for one logit."""
    if not isinstance(output, Tensor) or output.dim() == 0:
        raise TypeError(
            "LayeredInfluence labels points by the model's prediction, so the "
            "model must return a tensor of scores shaped (N, classes) or (N,); "
            f"got {type(output).__name__}"
        )
    if output.dim() > 2:
        raise ValueError(
            "LayeredInfluence needs a classifier output shaped (N, classes) or "
            f"(N,), got {tuple(output.shape)}"
        )
    return 2 if output.dim() == 1 or output.shape[1] == 1 else output.shape[1]


def class_targets(output: Tensor, target: ClassTarget) -> Tensor:
    """One class per example: ``target`` in any of Captum's forms for an
    ``(N, classes)`` output, or the model's prediction where it is None."""
    if target is None:
        return model_labels(output)
    classes, count = _class_count(output), len(output)
    if isinstance(target, (numbers.Integral, np.ndarray)) and not isinstance(target, bool):
        target = torch.as_tensor(target)
    elif isinstance(target, list) and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target
    ):
        target = torch.tensor(target, dtype=torch.long)
    if (
        not isinstance(target, Tensor)
        or target.dtype == torch.bool
        or target.is_floating_point()
        or target.is_complex()
        or target.dim() > 1
    ):
        raise ValueError(
            "target must be a class index: an int, or one int per example (a 1-D "
            f"tensor, array or list of {count}); got {target!r}"
        )
    if target.dim() == 1 and len(target) != count:
        raise ValueError(
            f"target gives {len(target)} classes for {count} examples; give one "
            "class per example or a single int"
        )
    if bool(((target < 0) | (target >= classes)).any()):
        raise ValueError(
            f"target must be a class from 0 to {classes - 1} (the model output has "
            f"{classes} classes), got {target.tolist()}"
        )
    return target.to(device=output.device, dtype=torch.long).expand(count)


def top_unit_seed(
    activation: Tensor, influence: Tensor, top_fraction: float, top_k: Optional[int]
) -> Tensor:
    """The activation at each example's top units by |influence|, zero elsewhere."""
    units = influence[0].numel()
    if top_k is None:
        if not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
        # the tiny margin keeps e.g. 0.025 * 1000 = 25.000000000000004 at 25
        top_k = max(1, math.ceil(top_fraction * units - 1e-9))
    elif isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= units:
        raise ValueError(
            f"top_k must be an integer from 1 to the layer's {units} units, got {top_k!r}"
        )
    scores = influence.reshape(len(influence), -1).abs()
    top = scores.topk(top_k, dim=1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
    flat_activation = activation.detach().reshape(len(activation), -1)
    seed = torch.where(keep, flat_activation, torch.zeros_like(flat_activation))
    return seed.reshape(activation.shape)


def _shown(shapes: list[tuple[int, ...]]) -> str:
    """Per-example input shapes as a user wrote them: one, or a tuple of them."""
    return str(shapes[0]) if len(shapes) == 1 else str(tuple(shapes))


def _centred(activations: Tensor, shape: tuple[int, ...]) -> _LayerReference:
    mean = activations.mean(0)
    return _LayerReference(activations - mean, mean, shape)
