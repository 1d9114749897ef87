"""Layered influence: explanations from the most influential hidden layer (Ho, *Layered
Explanations*), scored with the monotone influence measure of Sliwinski, Strobel and Zick."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.layered_influence.deconvnet import deconvolve_from_layer, top_unit_seed
from captum_ssa._core.layered_influence.fit import Fit, current_fit, fit_reference, fitted
from captum_ssa._core.layered_influence.influence import Alpha, check_alpha
from captum_ssa._core.layered_influence.labels import ClassTarget
from captum_ssa._core.layered_influence.layer_choice import (
    CandidateLayers,
    LayerChoice,
    check_choice_options,
)
from captum_ssa._utils._compat import TensorOrTupleOfTensorsGeneric, _format_output, _is_tuple
from captum_ssa._utils.embedding_layer import attributed_inputs, checked_embedding_layer
from captum_ssa._utils.hooks import model_of, no_grad_capture
from captum_ssa._utils.model_output import OutputSelector, ReadsModelOutput, checked_output
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.no_convergence_delta import NoConvergenceDelta
from captum_ssa._utils.sequence_mask import (
    checked_mask,
    forward_args_with_mask,
    token_flags,
    warn_if_mask_in_forward_args,
)
from captum_ssa._utils.validation import (
    IndexSelector,
    device_ids_checked,
    positive_int,
    prepare_inputs,
    selected_units,
)


class LayeredInfluence(
    ReadsModelOutput, NoConvergenceDelta, NeuronAttribution, GradientAttribution
):
    r"""
    Layered explanations: pick an influential hidden layer, score its units
    with a monotone influence measure on data, and project the most
    influential units back to the input with DeconvNet.

    1. :meth:`fit` runs the model on a reference set :math:`R` (e.g. the
       training data), labels it with the model's own predictions
       :math:`f(y)`, chooses the layer, and keeps that layer's activations
       only (the other candidates are read as small probe features): with
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
       input-shaped attributions; ``neuron_selector`` projects chosen units
       instead of the top ones. It has no convergence delta:
       ``compute_convergence_delta`` raises.

    Token ids: :meth:`fit` and :meth:`influence` take no gradient and read them
    as they are. DeconvNet needs one, so :meth:`attribute` takes ids only with
    ``embedding_layer=`` (the model's embedding module), and projects back to
    that layer's output instead of the input, as Captum's
    ``LayerIntegratedGradients`` attributes to a layer.

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
    with Numerical Influence Measures* (National University of Singapore;
    undated manuscript, no arXiv version). DeconvNet: Zeiler and Fergus,
    *Visualizing and Understanding Convolutional Networks*, ECCV 2014,
    arXiv:1311.2901. The three steps and our choices:
    ``docs/layered_influence.md``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: Union[Module, Sequence[Module]],
        device_ids: Optional[list[int]] = None,
        embedding_layer: Optional[Module] = None,
        output: OutputSelector = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or a bound method of it, or any
                        function of the inputs that runs it. :meth:`attribute`
                        needs the ``nn.Module`` (DeconvNet overrides its
                        ``nn.ReLU`` modules); :meth:`fit` and :meth:`influence`
                        work with any callable. A ``torch.compile``d model is
                        explained through its original module (``_orig_mod``,
                        whose modules the layers are), a
                        ``DistributedDataParallel`` through its ``module``.
            layers (torch.nn.Module or list[torch.nn.Module]): The candidate
                        layers, any order; "lowest" means the first to run. The
                        output layer is a candidate only if listed.
            device_ids (list[int], optional): Captum's argument for the CUDA
                        devices of a ``DataParallel`` model, checked and stored
                        as ``self.device_ids``. A forward that runs this
                        method's layers in several replicas at once (two or
                        more GPUs) is refused: explain ``model.module``.
                        Default: None
            embedding_layer (torch.nn.Module, optional): For a model that takes
                        token ids: its embedding module (e.g. an
                        ``nn.Embedding``). :meth:`attribute` then takes the ids
                        and projects the units back to the *output* of this
                        layer, as Captum's ``LayerIntegratedGradients``
                        attributes to a layer: the reconstruction is shaped
                        like the embeddings, e.g. (N, T, D). :meth:`fit` and
                        :meth:`influence` take the ids as they are, with or
                        without it. Without it, integer inputs to
                        :meth:`attribute` are an error. Default: None
            output (str, int or Callable, optional): Which tensor of the
                        model's output holds the class scores the model's
                        labels are read from, for a model that returns a
                        ``ModelOutput``, a dict, a tuple or a namedtuple: a
                        key or attribute name, an index, or a callable
                        ``raw_output -> tensor``. Default: None (a tensor as
                        it is, else its ``logits`` where it has them; anything
                        else is an error that lists what the model returns)
        """
        self._candidates = CandidateLayers.of(forward_func, layers)
        self.embedding_layer = checked_embedding_layer(forward_func, embedding_layer)
        # Captum's neuron methods take one layer; ours keeps all the candidates
        NeuronAttribution.__init__(
            self, forward_func, self._candidates.layers, device_ids_checked(device_ids)
        )
        GradientAttribution.__init__(self, forward_func)
        self.output = checked_output(output)
        self._fit: Optional[Fit] = None  # replaced whole by each fit

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @property
    def chosen_layer(self) -> Module:
        r"""The layer :meth:`fit` chose (or was given). Available after :meth:`fit`."""
        return fitted(self._fit).layer

    @property
    def chosen_layer_name(self) -> str:
        r"""The name of :attr:`chosen_layer` in the model."""
        return fitted(self._fit).name

    @property
    def layer_scores(self) -> dict[str, float]:
        r"""
        The per-layer score table of the last :meth:`fit`, layer name to score
        (probe accuracy for ``"linear"``, Gini coefficient for
        ``"dispersion"``), from the lowest layer to the highest; empty when
        :meth:`fit` was given a ``layer`` or there is a single candidate.
        """
        return dict(fitted(self._fit).scores)

    @property
    def reference_size(self) -> int:
        r"""The number of reference points seen by :meth:`fit`."""
        return 0 if self._fit is None else len(self._fit.reference.labels)

    def fit(
        self,
        reference: Any,
        batch_size: Optional[int] = None,
        criterion: str = "linear",
        tolerance: float = 0.02,
        layer: LayerChoice = None,
        additional_forward_args: Any = None,
        show_progress: bool = False,
        dispersion_points: Optional[int] = None,
        mask: Optional[Tensor] = None,
    ) -> LayeredInfluence:
        r"""
        Record the reference activations and labels, and choose the layer.

        Args:
            reference (Tensor, tuple, or Iterable): The reference set :math:`R`:
                        a tensor (a tuple of tensors for a multi-input model;
                        integer ones, such as token ids, as they are),
                        or an iterable of batches such as a ``DataLoader``
                        yielding tensors or ``(x, y)`` pairs (``y`` is ignored:
                        the labels are the model's predictions). Only the
                        chosen layer's activations are kept (``len(R)`` times
                        its size, in one buffer, centred in place); to choose,
                        fit reads the reference twice (first the candidates'
                        probe features, then the chosen layer), so it must be
                        re-iterable (a ``DataLoader`` or list, not an
                        iterator) unless ``layer`` is given. Under
                        ``torch.distributed`` each rank passes its shard and
                        every rank keeps the union of the shards, in rank
                        order.
            batch_size (int, optional): Run the model on at most this many
                        reference points at a time. Default: None (each batch
                        as given)
            criterion (str, optional): ``"linear"``: the lowest layer whose
                        cross-validated logistic-regression probe on the neuron
                        activities (a unit's value, a conv channel's spatial
                        mean) predicts the model's labels within ``tolerance``
                        of the best layer's accuracy. ``"dispersion"``: the
                        layer with the largest Gini coefficient of its units'
                        mean :math:`|\phi|` (default :math:`\alpha`) over a
                        subsample of ``dispersion_points`` reference points,
                        scored against the same subsample. Default:
                        ``"linear"``
            tolerance (float, optional): The accuracy a layer may lose to the
                        best one and still be chosen (``"linear"`` only).
                        Default: 0.02
            layer (torch.nn.Module or str, optional): Use this candidate layer
                        (a module or its name) and skip the scoring, as with a
                        single candidate; the reference is then read once.
                        Default: None
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs of every batch.
                        Default: None
            show_progress (bool, optional): Show a progress bar over the
                        reference batches. Default: False
            dispersion_points (int, optional): The size of the subsample
                        ``"dispersion"`` scores the candidates on: the points
                        whose index :math:`i` in the stream has the smallest
                        :math:`\mathrm{frac}(i \cdot 0.618...)`, a sample spread
                        evenly over the whole reference set and the same for
                        any batching. Its cost is every candidate's
                        activations on it and :math:`S^2` pairs per
                        candidate. Default: None (all points up to 2048, fewer
                        where the candidates' activations on them exceed the
                        memory budget)
            mask (Tensor, optional): The mask of a tensor reference, shaped
                        ``(N, T)`` like the token ids, e.g. the tokenizer's
                        ``attention_mask`` (1 = real token, 0 = pad). A stream's
                        batches carry their own, as ``(inputs, labels, mask)``
                        or dicts ``{"input_ids", "attention_mask", "labels"}``,
                        and may then differ in length. A candidate whose output
                        is ``(N, T, ...)`` is then read as token sequences: its
                        pads are no units, its probe features are the means
                        over the real tokens, and the kept activations are each
                        point's real tokens, compared with a query's on the
                        positions both have (see :meth:`influence`). The model
                        receives the mask as its first additional forward
                        argument, ``forward_func(*inputs, mask,
                        *additional_forward_args)``. Default: None

        Returns:
            *LayeredInfluence*: ``self``, with :attr:`chosen_layer`,
            :attr:`chosen_layer_name` and :attr:`layer_scores` set.

        Examples::

            >>> explainer = LayeredInfluence(net, [net.conv1, net.conv2, net.fc1])
            >>> explainer.fit(train_x)
            >>> explainer.layer_scores   # {'conv1': 0.97, 'conv2': 0.99, ...}
            >>> explainer.chosen_layer_name
            'conv2'
            >>> # padded token ids: batches (ids, labels, attention_mask) of any length
            >>> LayeredInfluence(model, [model.block1, model.block2]).fit(token_loader)
        """
        check_choice_options(criterion, tolerance)
        batch_size = positive_int("batch_size", batch_size)
        sample_points = positive_int("dispersion_points", dispersion_points)
        given = None if layer is None else self._candidates.index(layer)
        # assigned only once complete, so a failed fit leaves the previous one intact
        self._fit = fit_reference(
            self._forward,
            self._candidates,
            reference,
            additional_forward_args=additional_forward_args,
            batch_size=batch_size,
            show_progress=show_progress,
            criterion=criterion,
            tolerance=tolerance,
            given=given,
            sample_points=sample_points,
            mask=mask,
            owner=self,
        )
        return self

    def influence(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: ClassTarget = None,
        additional_forward_args: Any = None,
        layer: LayerChoice = None,
        alpha: Optional[Alpha] = None,
        points_per_chunk: Optional[int] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        r"""
        The influence :math:`\phi(x)` of every unit of the layer.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): The inputs :math:`x`;
                        dimension 0 is the batch. Integer inputs, such as
                        token ids, are read as they are.
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
            layer (torch.nn.Module or str, optional): The layer whose units are
                        scored (module or name); only the fitted layer's
                        reference activations are kept, so another layer needs
                        ``fit(reference, layer=...)`` first. Default: None
                        (:attr:`chosen_layer`)
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
                        Default: None (1024, or fewer where a block would
                        exceed the memory budget)
            mask (Tensor, optional): For padded token sequences: which
                        positions are real tokens, shaped ``(N, T)`` like the
                        token ids, e.g. the tokenizer's ``attention_mask`` (1 =
                        real token, 0 = pad). For a layer output ``(N, T, ...)``
                        the pads are then no units (their influence is 0), and
                        the distance between a query and a reference point is
                        taken over the positions both have, counted among the
                        real tokens: the pads are removed and examples of
                        different lengths are compared on their common prefix
                        (so a left-padded and a right-padded example agree).
                        A reference fitted with masks compares an unmasked
                        query the same way, every position a real token. The
                        model receives the mask as its first additional
                        forward argument, ``forward_func(*inputs, mask,
                        *additional_forward_args)``. Default: None

        Returns:
            *Tensor* of **influence** shaped like the layer's output,
            ``(N, *layer_shape)``.

        Examples::

            >>> phi = explainer.influence(test_x[:4])
            >>> phi.shape     # like the chosen layer's output
            >>> # against the points the model does not call class 3
            >>> phi = explainer.influence(test_x[:4], target=3)
            >>> phi = explainer.influence(test_x[:4], alpha=lambda r: torch.exp(-r))
            >>> # padded token ids; the model is called as model(ids, attention_mask)
            >>> phi = explainer.influence(input_ids, mask=attention_mask)
        """
        fit = self._current_fit(layer)
        check_alpha(alpha)
        points_per_chunk = positive_int("points_per_chunk", points_per_chunk)
        # no gradient is taken: token ids are read as they are
        prepared = prepare_inputs(inputs, integers_allowed=True)
        mask = None if mask is None else checked_mask(mask, prepared)
        warn_if_mask_in_forward_args(self, prepared, additional_forward_args, mask)
        with untouched_model(self._forward), torch.no_grad():
            return fit.influence(
                self._forward,
                prepared,
                target,
                additional_forward_args,
                alpha,
                points_per_chunk,
                mask,
            )[1]

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
        neuron_selector: Optional[IndexSelector] = None,
        mask: Optional[Tensor] = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""
        DeconvNet reconstruction of the input from the most influential units.

        For each example the units with the largest :math:`|\phi_u(x)|` keep
        their activation value, every other unit is set to zero, and this is
        backpropagated to the input with DeconvNet (the backward of each
        ``nn.ReLU`` module is the ReLU of the incoming gradient; max-pool
        routes through its switches). Functional ReLUs (``F.relu``) and every
        other activation, module or function (``nn.GELU``, ``nn.LeakyReLU``,
        ``F.gelu``, ``torch.tanh``, ...), keep their ordinary gradient: a
        warning, read from the operations of the autograd graph, names them.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Input to explain; dimension
                        0 is the batch. Floating point, or with the class's
                        ``embedding_layer`` any inputs the model takes, such
                        as token ids.
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
            layer (torch.nn.Module or str, optional): The layer whose units are
                        projected (module or name); it must be the fitted
                        layer (see :meth:`influence`). Default: None
                        (:attr:`chosen_layer`)
            alpha (Callable, optional): The weighting :math:`\alpha(r)` of
                        :meth:`influence`. Default: None (:math:`1/r^2`)
            points_per_chunk (int, optional): Block size, in query and
                        reference points, of the influence computation (see
                        :meth:`influence`). Default: None (1024, or fewer
                        within the memory budget)
            neuron_selector (int or tuple, optional): Project these units of
                        the layer instead of the most influential ones, in
                        Captum's index forms: an int (a unit of a (N, K)
                        output, a channel of a conv output) or a tuple of ints
                        and slices after the batch dimension. They keep their
                        activation values, as the top units do, so the result
                        equals :class:`~captum.attr.NeuronDeconvolution` with
                        the selector ``lambda out: (out * seed).sum()``; no
                        influence is computed, and ``target``, ``alpha`` and
                        ``points_per_chunk`` are unused. Not with ``top_k``.
                        A callable is an error (it returns a value, not a set
                        of units). Default: None (the top units)
            mask (Tensor, optional): For padded token sequences: which
                        positions are real tokens, ``(N, T)``, e.g. the
                        tokenizer's ``attention_mask``. The influence is then
                        taken as in :meth:`influence`, the top units are chosen
                        among the real tokens' (``top_fraction`` of their
                        number) and no pad's unit is projected, selected ones
                        included. The model receives the mask as its first
                        additional forward argument. Default: None

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, shaped like
            ``inputs``, or with ``embedding_layer`` like its output (one
            tensor, in a tuple for tuple inputs): the DeconvNet
            reconstructions.

        Examples::

            >>> explainer = LayeredInfluence(net, [net.conv1, net.conv2]).fit(train_x)
            >>> reconstruction = explainer.attribute(test_x[:4], top_fraction=0.025)
            >>> reconstruction.shape == test_x[:4].shape
            True
            >>> # what sets each example apart from the points not labelled y
            >>> reconstruction = explainer.attribute(test_x[:4], target=test_y[:4])
            >>> # token ids (N, T) into a model whose embedding gives (N, T, D)
            >>> explainer = LayeredInfluence(
            ...     model, [model.block1.fc1, model.block2.fc1],
            ...     embedding_layer=model.embedding).fit(train_ids)
            >>> reconstruction = explainer.attribute(input_ids)  # (N, T, D)
        """
        fit = self._current_fit(layer)
        check_alpha(alpha)
        points_per_chunk = positive_int("points_per_chunk", points_per_chunk)
        if neuron_selector is not None and top_k is not None:
            raise ValueError("give top_k or neuron_selector, not both")
        model = model_of(self._forward)
        if model is None:
            raise TypeError(
                "attribute needs forward_func to be an nn.Module or a bound "
                "method of one: DeconvNet overrides the model's nn.ReLU modules"
            )
        prepared = prepare_inputs(inputs, integers_allowed=self.embedding_layer is not None)
        mask = None if mask is None else checked_mask(mask, prepared)
        warn_if_mask_in_forward_args(self, prepared, additional_forward_args, mask)
        forward_args = forward_args_with_mask(mask, additional_forward_args)
        with untouched_model(self._forward):
            if neuron_selector is None:
                with torch.no_grad():
                    activation, influence = fit.influence(
                        self._forward,
                        prepared,
                        target,
                        additional_forward_args,
                        alpha,
                        points_per_chunk,
                        mask,
                    )
                    real_tokens = token_flags(activation, mask)
                    seed = top_unit_seed(activation, influence, top_fraction, top_k, real_tokens)
            else:
                (activation,) = no_grad_capture(self._forward, prepared, [fit.layer], forward_args)
                units = selected_units(activation, neuron_selector, type(self).__name__)
                seed = activation * units
                real_tokens = token_flags(activation, mask)
                if real_tokens is not None:  # a pad's units are no units
                    seed = seed * real_tokens
            # DeconvNet runs back to the inputs, or to the embeddings of token ids
            attributed = attributed_inputs(
                self._forward, self.embedding_layer, prepared, forward_args
            )
            reconstruction = deconvolve_from_layer(
                model,
                attributed.forward_func,
                attributed.leaves,
                fit.layer,
                seed,
                forward_args,
            )
        return _format_output(_is_tuple(inputs), reconstruction)

    def _current_fit(self, layer: LayerChoice) -> Fit:
        return current_fit(self._fit, self._forward, self._candidates, layer, type(self).__name__)
