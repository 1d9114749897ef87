"""Inactive state sensitivity, Insens (Szymanski, McCane & Atkinson, 2019; see the class)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Optional, Union

from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.inactive_state_sensitivity.frequency import count_active, frequencies
from captum_ssa._core.inactive_state_sensitivity.omega import WEIGHTINGS, WarnedOnce, omega
from captum_ssa._utils._compat import (
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _format_output,
    _is_tuple,
)
from captum_ssa._utils.embedding_layer import attributed_inputs, checked_embedding_layer
from captum_ssa._utils.hooks import check_layers_in_model, model_of
from captum_ssa._utils.jacobian import JACOBIAN_MODES, JacobianPlan
from captum_ssa._utils.model_output import OutputSelector, ReadsModelOutput, checked_output
from captum_ssa._utils.model_state import (
    WeightsFingerprint,
    batch_dependent_modules,
    check_fit_current,
    untouched_model,
    weights_fingerprint,
)
from captum_ssa._utils.no_convergence_delta import NoConvergenceDelta
from captum_ssa._utils.sequence_mask import (
    checked_mask,
    forward_args_with_mask,
    warn_if_mask_in_forward_args,
)
from captum_ssa._utils.validation import (
    IndexSelector,
    device_ids_checked,
    positive_int,
    prepare_inputs,
)


class InactiveStateSensitivity(
    ReadsModelOutput, NoConvergenceDelta, NeuronAttribution, GradientAttribution
):
    r"""
    Inactive state sensitivity (Insens): what keeps a layer's inactive neurons off.

    For a layer with pre-activations :math:`v_i(x)` and switched weights
    :math:`w_i = \partial v_i / \partial x` (see
    :class:`SwitchedLinearProjection`), every neuron that is off
    (:math:`v_i \le 0`) contributes its signed sensitivity
    :math:`\omega_i = (v_i / \lVert w_i \rVert^2)\, w_i`, the input direction
    that pushes it further off, weighted by how often it is *on* over a
    reference set (:math:`m_i / N_{ref}`):

    .. math::
        \Omega_l(x) = \sum_{i:\, v_{li}(x) \le 0} \frac{m_i}{N_{ref}}\, \omega_i(x).

    :math:`\Omega_l(x)` has the shape of the input; positive entries are
    directions that make the layer's current state more stable. Every element
    of the layer output (channel x position for a conv) is a neuron.

    From token ids, which have no gradient, ``embedding_layer=`` (the model's
    embedding module) takes the switched weights with respect to that layer's
    output, as Captum's ``LayerIntegratedGradients`` attributes to a layer:
    :math:`\Omega_l` is then shaped like the embeddings. :meth:`fit` reads the
    ids as they are.

    Insens explains a *layer's state*, not a class: it has no target, and
    ``attribute`` accepts ``target`` only so that it can stand wherever a Captum
    method stands (Captum's metrics and NoiseTunnel pass one), and ignores it.
    In metric terms: a test that changes only the explained class (such as a
    randomised-logit test) cannot move Insens. It is a
    :class:`~captum.attr.NeuronAttribution` in Captum's sense: an input-shaped
    attribution of hidden units, and ``neuron_selector`` restricts the sum to
    some of them (the parts of disjoint selections add up to the layer's
    :math:`\Omega_l`). It has no convergence delta:
    ``compute_convergence_delta`` raises.

    The neurons must be *pre-activations*: after a ReLU the inactive units are
    exactly 0, their :math:`\omega_i` vanish and :math:`\Omega_l` is zero. A
    layer whose output has exact zeros and no negative value is warned about.

    Exact for piecewise-linear networks (ReLU, LeakyReLU, pooling, linear,
    conv, eval-mode batch norm, residual additions); elsewhere the switched
    weights are local gradients and the class warns once.

    Paper: L. Szymanski, B. McCane and C. Atkinson, *Switched linear
    projections for neural network interpretability*, 2019, arXiv:1909.11275
    (also circulated as *State sensitivity for deep neural network
    interpretability*), eq. 8. Definitions, conventions and our choices:
    ``docs/inactive_state_sensitivity.md``.
    """

    # set by fit: per layer, how many reference samples have each position of a
    # token layer fitted with masks (None: every sample has every neuron)
    _examples_per_position: Optional[list[Optional[Tensor]]] = None

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Union[Module, list[Module]],
        device_ids: Optional[list[int]] = None,
        embedding_layer: Optional[Module] = None,
        output: OutputSelector = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or any function of the inputs
                        that runs it. A ``torch.compile``d model is explained
                        through its original module (``_orig_mod``, whose
                        modules the layers are), a
                        ``DistributedDataParallel`` through its ``module``.
            layer (torch.nn.Module or list[torch.nn.Module]): The layer whose
                        output holds the pre-activations (e.g. a ``Conv2d`` or
                        ``Linear`` before its ReLU), or a list of such layers;
                        a list gives a list of results, as in Captum's layer
                        methods.
            device_ids (list[int], optional): Captum's argument for the CUDA
                        devices of a ``DataParallel`` model, checked and stored
                        as ``self.device_ids``. A forward that runs this
                        method's layers in several replicas at once (two or
                        more GPUs) is refused: explain ``model.module``.
                        Default: None
            embedding_layer (torch.nn.Module, optional): For a model that takes
                        token ids: its embedding module (e.g. an
                        ``nn.Embedding``). :meth:`attribute` then takes the ids
                        and the switched weights :math:`w_i` are the gradients
                        with respect to the *output* of this layer, as
                        Captum's ``LayerIntegratedGradients`` attributes to a
                        layer: :math:`\Omega_l` is shaped like the embeddings,
                        e.g. (N, T, D). :meth:`fit` takes the ids as they are,
                        with or without it. Without it, integer inputs to
                        :meth:`attribute` are an error. Default: None
            output (str, int or Callable, optional): Which tensor of the
                        model's output is the output, for a model that returns
                        a ``ModelOutput``, a dict, a tuple or a namedtuple: a
                        key or attribute name, an index, or a callable
                        ``raw_output -> tensor`` (a selector that finds nothing
                        is an error that lists what the model returns). Insens
                        reads only its layers and takes no target, so it works
                        with any output as it is. Default: None
        """
        self._layers: list[Module] = list(layer) if isinstance(layer, list) else [layer]
        check_layers_in_model(forward_func, self._layers)
        self.embedding_layer = checked_embedding_layer(forward_func, embedding_layer)
        NeuronAttribution.__init__(self, forward_func, layer, device_ids_checked(device_ids))
        GradientAttribution.__init__(self, forward_func)
        self._active_counts: Optional[list[Tensor]] = None
        self._fitted_weights: Optional[WeightsFingerprint] = None
        self.reference_size = 0
        self._warned = WarnedOnce()
        self.output = checked_output(output)
        # per layer and input shape, the Jacobian strategy "auto" measured fastest
        self._jacobian_plans: dict[Hashable, JacobianPlan] = {}

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @property
    def activation_frequency(self) -> Union[Tensor, list[Tensor]]:
        r"""
        :math:`m_i / N_{ref}` for every neuron, shaped like the layer output
        without the batch dimension (a list for a list of layers). Available
        after :meth:`fit`.
        """
        fitted = self._frequencies()
        return fitted if isinstance(self.layer, list) else fitted[0]

    def _frequencies(self) -> list[Tensor]:
        """:math:`m_i / N_{ref}`, with :math:`N_{ref}` per position of a token layer
        fitted with masks: the reference samples that have that position."""
        return frequencies(self._fitted_counts(), self._examples_per_position, self.reference_size)

    def _fitted_counts(self) -> list[Tensor]:
        if self._active_counts is None:
            raise RuntimeError(
                "InactiveStateSensitivity has no activation frequencies yet: call "
                "fit(reference) with reference data (e.g. the training set) first, "
                'or use weighting="uniform"'
            )
        check_fit_current(self._fitted_weights, self._forward, type(self).__name__)
        return self._active_counts

    def fit(
        self,
        reference: Any,
        additional_forward_args: Any = None,
        show_progress: bool = False,
        mask: Optional[Tensor] = None,
    ) -> InactiveStateSensitivity:
        r"""
        Count on how many reference samples each neuron is active (:math:`m_i`).

        Args:
            reference (Tensor, tuple, or Iterable): The reference data: a
                        tensor (a tuple of tensors for a multi-input model;
                        integer ones, such as token ids, as they are), or
                        an iterable of batches such as a ``DataLoader``
                        yielding tensors or ``(x, y)`` pairs (``y`` is not
                        used). It is read once, keeping one count per neuron,
                        so memory does not grow with its size. Under
                        ``torch.distributed`` each rank passes its own shard
                        and the counts are summed over the ranks.
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after each batch. Default: None
            show_progress (bool, optional): Show a progress bar over the
                        batches. Default: False
            mask (Tensor, optional): The mask of a tensor reference, shaped
                        ``(N, T)`` like the token ids, e.g. the tokenizer's
                        ``attention_mask`` (1 = real token, 0 = pad). A stream's
                        batches carry their own, as ``(inputs, labels, mask)``
                        or dicts ``{"input_ids", "attention_mask", "labels"}``,
                        and may then differ in length. A layer output
                        ``(N, T, ...)`` then counts only the real tokens:
                        position ``t`` is each sample's ``t``-th real token
                        (pads removed, so left and right padding agree), and
                        its frequency is over the samples that have one.
                        Layers without that token axis count every sample.
                        The model receives the mask as its first additional
                        forward argument, ``forward_func(*inputs, mask,
                        *additional_forward_args)``. Default: None

        Returns:
            *InactiveStateSensitivity*: ``self``, with
            :attr:`activation_frequency` and :attr:`reference_size` set.

        Examples::

            >>> insens = InactiveStateSensitivity(net, net.fc1).fit(train_loader)
            >>> insens.activation_frequency.shape   # like net.fc1's output
            >>> # padded token ids: batches (ids, labels, attention_mask) of any length
            >>> insens.fit(token_loader)
        """
        counts, examples, size = count_active(
            self._forward,
            self._layers,
            reference,
            additional_forward_args,
            show_progress,
            mask,
            owner=self,
        )
        self._active_counts = counts
        self._examples_per_position = examples
        self.reference_size = size
        self._fitted_weights = weights_fingerprint(self._forward)
        return self

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        weighting: str = "frequency",
        include_active: bool = False,
        pool_layers: bool = False,
        jacobian_mode: str = "auto",
        jacobian_vectors_per_chunk: Optional[int] = None,
        show_progress: bool = False,
        neuron_selector: Optional[IndexSelector] = None,
        mask: Optional[Tensor] = None,
    ) -> Union[TensorOrTupleOfTensorsGeneric, list[TensorOrTupleOfTensorsGeneric]]:
        r"""
        Insens :math:`\Omega_l(x)` for every example.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Input for which Insens is
                        computed; dimension 0 is the batch. Floating point, or
                        with the class's ``embedding_layer`` any inputs the
                        model takes, such as token ids.
            target (int, tuple, Tensor or list, optional): Accepted for
                        Captum compatibility and ignored: Insens describes the
                        layer's state and depends on no class (see the class
                        docstring). Default: None
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            weighting (str, optional): ``"frequency"`` weights each inactive
                        neuron by :math:`m_i / N_{ref}` (needs :meth:`fit`);
                        ``"uniform"`` averages them,
                        :math:`\frac{1}{|I|} \sum_{i \in I} \omega_i` (the
                        paper's earlier version). Default: ``"frequency"``
            include_active (bool, optional): Sum over all neurons, active ones
                        too (the extension in the paper's conclusion).
                        Default: False
            pool_layers (bool, optional): With a list of layers, return one
                        result pooled over all of them: the neuron set
                        :math:`I` is the union over the layers (for
                        ``"uniform"`` the average is over that union). Default:
                        False
            jacobian_mode (str, optional): How the rows :math:`w_i` of the
                        layer's Jacobian are computed: ``"reverse"`` (over
                        chunks of neurons), ``"forward"`` (over chunks of input
                        features, ``torch.func.jvp``), ``"loop"`` (one backward
                        pass per neuron), or ``"auto"``: on the first call for a
                        layer and input shape, one chunk of each is timed (one
                        far slower than the best so far only on a part of it)
                        and the fastest finishes the job (the choice is kept for
                        later calls of this explainer with the same shapes, and
                        they give the first call's result bit for bit);
                        forward mode is left out where an operation of the
                        model has no forward-mode derivative (e.g. LSTM, CPU
                        flash attention). Every mode gives the same result up
                        to rounding. Default: ``"auto"``
            jacobian_vectors_per_chunk (int, optional): How many Jacobian rows
                        (reverse mode) or columns (forward mode) exist at
                        once (the loop computes one at a time). Default: 128
                        over the batch size, fewer where the widest tensor a
                        chunk creates between the inputs and the layer would
                        take more than 16 MiB, measured on a first chunk of one.
            show_progress (bool, optional): Show a progress bar over the
                        chunks. Default: False
            neuron_selector (int or tuple, optional): Sum only over these
                        neurons of the layer output, in Captum's index forms:
                        an int (a unit of a (N, K) output, a channel of a conv
                        output) or a tuple of ints and slices after the batch
                        dimension (e.g. ``(c, slice(0, 4), slice(None))``).
                        The weighting is unchanged (``"uniform"`` still
                        divides by the layer's whole :math:`|I|`), so the
                        parts of disjoint selections sum to the layer's
                        :math:`\Omega_l`. Keyword only in effect: the second
                        positional argument stays ``target``. A callable is an
                        error (it returns a value, not a set of neurons), and
                        so is a list of layers. Default: None (every neuron)
            mask (Tensor, optional): For padded token sequences: which
                        positions are real tokens, shaped ``(N, T)`` like the
                        token ids, e.g. the tokenizer's ``attention_mask`` (1 =
                        real token, 0 = pad). The neurons of a layer output
                        ``(N, T, ...)`` are then the (position, feature) pairs
                        of the real tokens only: :math:`\Omega_l` sums over the
                        inactive ones there (``"uniform"`` divides by their
                        number), and each takes the frequency :meth:`fit` found
                        for its position among the real tokens. A layer without
                        that token axis is unaffected. The model receives the
                        mask as its first additional forward argument,
                        ``forward_func(*inputs, mask, *additional_forward_args)``.
                        Default: None (every position is a token)

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, shaped like
            ``inputs``, or with ``embedding_layer`` like its output (one
            tensor, in a tuple for tuple inputs); a list of them for a list of
            layers (one, if ``pool_layers``).

        Examples::

            >>> insens = InactiveStateSensitivity(net, net.fc1).fit(train_x)
            >>> omega = insens.attribute(test_x[:4])
            >>> omega.shape == test_x[:4].shape
            True
            >>> # token ids (N, T) into a model whose embedding gives (N, T, D)
            >>> insens = InactiveStateSensitivity(
            ...     model, model.block.fc1, embedding_layer=model.embedding)
            >>> omega = insens.fit(train_ids).attribute(input_ids)  # (N, T, D)
            >>> # padded ids; the model is called as model(ids, attention_mask)
            >>> omega = insens.attribute(input_ids, mask=attention_mask)
        """
        if jacobian_mode not in JACOBIAN_MODES:
            raise ValueError(
                f"jacobian_mode must be one of {JACOBIAN_MODES}, got {jacobian_mode!r}"
            )
        jacobian_vectors_per_chunk = positive_int(
            "jacobian_vectors_per_chunk", jacobian_vectors_per_chunk
        )
        training = batch_dependent_modules(model_of(self._forward))
        if training:
            # Omega needs each example's own Jacobian, which one seed for the batch
            # gives only when examples do not interact; the chunks re-run the model.
            raise ValueError(
                f"InactiveStateSensitivity needs the model in eval mode: {', '.join(training)} "
                "in training mode mixes the examples of a batch (or draws new dropout "
                "masks on every re-evaluation), so per-example switched weights are "
                "not defined. Call model.eval() first."
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if neuron_selector is not None and isinstance(self.layer, list):
            raise ValueError(
                "neuron_selector selects neurons of one layer; construct "
                "InactiveStateSensitivity with a single layer to use it"
            )
        fitted = self._frequencies() if weighting == "frequency" else None
        if mask is not None:
            mask = checked_mask(mask, prepare_inputs(inputs, integers_allowed=True))
        forward_args = forward_args_with_mask(mask, additional_forward_args)
        with untouched_model(self._forward):
            attributed = attributed_inputs(
                self._forward, self.embedding_layer, inputs, forward_args
            )
            warn_if_mask_in_forward_args(self, attributed.given, additional_forward_args, mask)
            per_layer = omega(
                attributed,
                self._layers,
                forward_args,
                model_of(self._forward),
                fitted,
                self._examples_per_position,
                weighting=weighting,
                include_active=include_active,
                pool_layers=pool_layers,
                jacobian_mode=jacobian_mode,
                jacobian_vectors_per_chunk=jacobian_vectors_per_chunk,
                show_progress=show_progress,
                neuron_selector=neuron_selector,
                mask=mask,
                warned=self._warned,
                method=type(self).__name__,
                jacobian_plans=self._jacobian_plans,
            )
        is_tuple = _is_tuple(inputs)
        results = [_format_output(is_tuple, tuple(t.detach() for t in r)) for r in per_layer]
        return results if isinstance(self.layer, list) and not pool_layers else results[0]
