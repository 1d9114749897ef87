"""The switched linear projection's Captum interface: the classes and their documentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.switched_linear_projection.neuron_selection import (
    activity_and_weights,
    activity_at,
    attributed_points,
    baseline_points,
)
from captum_ssa._core.switched_linear_projection.projection import (
    centre,
    centred_contributions,
    contributions,
    per_example_dot,
    per_example_sum,
)
from captum_ssa._utils._compat import (
    BaselineType,
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum_ssa._utils.embedding_layer import AttributedInputs, checked_embedding_layer
from captum_ssa._utils.hooks import check_layers_in_model
from captum_ssa._utils.model_output import OutputSelector, ReadsModelOutput, checked_output
from captum_ssa._utils.validation import NeuronSelector, device_ids_checked


class SwitchedProjection(NamedTuple):
    """A neuron's activity written as one linear projection of the input.

    ``activity == <weights, inputs> + bias`` per example, and
    ``centre`` is the point the neuron's own coordinate system is centred on.
    """

    weights: Union[Tensor, tuple[Tensor, ...]]
    bias: Tensor
    activity: Tensor
    centre: Union[Tensor, tuple[Tensor, ...]]


class SwitchedLinearProjection(ReadsModelOutput, NeuronAttribution, GradientAttribution):
    r"""
    Switched linear projection of a neuron of a piecewise-linear network.

    In a network built from ReLU, LeakyReLU, max/avg pooling, linear and
    convolution layers, eval-mode batch norm and residual additions, the
    neurons that are off for a given input contribute nothing, and what is left
    is a chain of linear maps. A neuron's pre-activation is then exactly one
    linear projection of the input,

    .. math::
        v(x) = \langle w(x), x \rangle + b(x), \qquad w(x) = \partial v / \partial x,

    where the *switched* weights :math:`w` and bias :math:`b` depend on which
    neurons are on. With the neuron's *centre*
    :math:`c = x - (v / \lVert w \rVert^2) w` the activity decomposes into
    per-feature contributions :math:`(x_j - c_j) w_j` that sum to :math:`v`.
    Any other starting point :math:`x_0` (``baselines``) gives the
    contributions :math:`(x_j - x_{0j}) w_j(x)`.

    What this adds to plain gradients, honestly: on an output logit, :math:`w`
    is the signed gradient (what :class:`~captum.attr.Saliency` returns before
    its absolute value), and the centre decomposition
    :math:`(x - c) \odot w = v\, w^2 / \lVert w \rVert^2` ranks features
    exactly like :math:`|\text{gradient}|`. What is new is exactness (the
    switched bias, the centre, a convergence delta that checks the linear
    model against the network) and the projection of *hidden* neurons.

    The neuron is chosen in the layer's *output*: with ``target``, exactly as
    Captum's ``target`` chooses a model output (so
    ``SwitchedLinearProjection(model, model.fc_out).attribute(x, target=y)``
    projects each example's class logit), or with ``neuron_selector`` as in
    Captum's neuron methods (for hidden neurons, e.g. a channel's spatial
    mean). Both work with :class:`~captum.attr.NoiseTunnel` and
    :func:`captum.metrics.sensitivity_max`. Captum's call
    ``attribute(inputs, neuron_selector)`` works too: the second positional
    argument is ``target``, where an int or a tuple of ints selects the same
    unit as a selector does, and a callable or a tuple holding a slice (forms
    only a selector takes) is read as ``neuron_selector``. With
    ``attribute_to_neuron_input=True`` the neuron is chosen in the layer's
    *input*, as in Captum's neuron methods.

    A model that takes token ids has no gradient with respect to them: with
    ``embedding_layer=`` (its embedding module) the neuron is projected onto
    that layer's output, as Captum's ``LayerIntegratedGradients`` attributes
    to a layer, and every result is shaped like the embeddings.

    On a network that is not piecewise linear (sigmoid, tanh, GELU, ...) the
    projection is only a first-order Taylor approximation: the class warns
    once, and the convergence delta reports the real error.

    Paper: Lech Szymanski, Brendan McCane and Craig Atkinson, *Switched linear
    projections for neural network interpretability*, 2019, arXiv:1909.11275.
    Definitions, conventions and our choices: ``docs/switched_linear_projection.md``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        multiply_by_inputs: bool = False,
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
            layer (torch.nn.Module): The layer whose *output* holds the
                        pre-activations of the neurons to project, e.g. a
                        ``Conv2d`` or ``Linear`` followed by a ReLU, or the
                        model's last ``Linear`` for its logits.
            multiply_by_inputs (bool, optional): What :meth:`attribute`
                        returns, in Captum's sense (as in
                        ``IntegratedGradients``): False gives the switched
                        weights :math:`w(x)`, a local attribution; True gives
                        the contributions :math:`(x - x_0) \odot w(x)`, a
                        global one, with :math:`x_0` the ``baselines`` or, by
                        default, the neuron's centre (then equal to
                        :meth:`decompose`). Default: False
            device_ids (list[int], optional): Captum's argument for the CUDA
                        devices of a ``DataParallel`` model, checked and stored
                        as ``self.device_ids``. A forward that runs this
                        method's layers in several replicas at once (two or
                        more GPUs) is refused: explain ``model.module``. Default:
                        None
            embedding_layer (torch.nn.Module, optional): For a model that takes
                        token ids: its embedding module (e.g. an
                        ``nn.Embedding``). :meth:`attribute` then takes the ids
                        and projects the neuron onto the *output* of this layer,
                        as Captum's ``LayerIntegratedGradients`` attributes to
                        a layer: the model runs on the ids with that output
                        replaced by a tensor the gradient is taken with respect
                        to, so the switched weights, the centre and the
                        contributions are shaped like the embeddings, e.g.
                        (N, T, D), and ``baselines`` are token ids (or a
                        number) whose embeddings are the starting point.
                        Without it, integer inputs are an error. Default: None
            output (str, int or Callable, optional): Which tensor of the
                        model's output is the output, for a model that returns
                        a ``ModelOutput``, a dict, a tuple or a namedtuple: a
                        key or attribute name, an index, or a callable
                        ``raw_output -> tensor`` (a selector that finds nothing
                        is an error that lists what the model returns). The
                        neuron is chosen in ``layer``'s output, so the
                        projection never reads the model's output and works
                        with any output as it is. Default: None
        """
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {multiply_by_inputs!r}")
        check_layers_in_model(forward_func, [layer])
        self.embedding_layer = checked_embedding_layer(forward_func, embedding_layer)
        NeuronAttribution.__init__(self, forward_func, layer, device_ids_checked(device_ids))
        GradientAttribution.__init__(self, forward_func)
        self._multiply_by_inputs = multiply_by_inputs
        self._warned_not_piecewise_linear = False
        self.output = checked_output(output)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    def _activity_and_weights(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType,
        additional_forward_args: Any,
        neuron_selector: Optional[NeuronSelector],
        attribute_to_neuron_input: bool,
    ) -> tuple[AttributedInputs, Tensor, tuple[Tensor, ...]]:
        """``(attributed inputs, activity (N,), weights)``, warning once per
        instance where the network is not piecewise linear."""
        attributed, activity, weights, warned = activity_and_weights(
            self,
            inputs,
            target,
            additional_forward_args,
            neuron_selector,
            check_linearity=not self._warned_not_piecewise_linear,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )
        self._warned_not_piecewise_linear = self._warned_not_piecewise_linear or warned
        return attributed, activity, weights

    def _contributions(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType,
        additional_forward_args: Any,
        neuron_selector: Optional[NeuronSelector],
        baselines: BaselineType,
        return_convergence_delta: bool,
        attribute_to_neuron_input: bool,
        multiply: bool,
    ) -> Union[TensorOrTupleOfTensorsGeneric, tuple[TensorOrTupleOfTensorsGeneric, Tensor]]:
        """Weights (``multiply=False``) or contributions, and the delta if asked."""
        attributed, activity, weights = self._activity_and_weights(
            inputs, target, additional_forward_args, neuron_selector, attribute_to_neuron_input
        )
        is_tuple = _is_tuple(inputs)
        if not (multiply or return_convergence_delta):
            return _format_output(is_tuple, weights)
        points = tuple(t.detach() for t in attributed.leaves)
        if baselines is None:
            start = centre(points, activity, weights)
            parts = centred_contributions(activity, weights)
        else:
            start = baseline_points(self, attributed, baselines, additional_forward_args)
            parts = contributions(points, start, weights)
        attributions = _format_output(is_tuple, parts if multiply else weights)
        if not return_convergence_delta:
            return attributions
        activity_at_start = activity_at(
            self,
            attributed.forward_func,
            start,
            target,
            additional_forward_args,
            neuron_selector,
            attribute_to_neuron_input,
        )
        delta = activity - activity_at_start - per_example_sum(parts)
        return attributions, delta

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        neuron_selector: Optional[NeuronSelector] = None,
        baselines: BaselineType = None,
        return_convergence_delta: bool = False,
        attribute_to_neuron_input: bool = False,
    ) -> Union[TensorOrTupleOfTensorsGeneric, tuple[TensorOrTupleOfTensorsGeneric, Tensor]]:
        r"""
        Switched weights :math:`w = \partial v / \partial x` of the selected
        neuron, or its contributions :math:`(x - x_0) \odot w` when the class
        was built with ``multiply_by_inputs=True``.

        One forward and one backward pass (plus one forward pass without
        gradients for the convergence delta).

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Input for which the
                        projection is computed; dimension 0 is the batch. A
                        tuple of tensors for a model with several inputs.
                        Floating point, or with the class's
                        ``embedding_layer`` any inputs the model takes, such
                        as token ids.
            target (int, tuple, Tensor, list, or Callable, optional): Which
                        neuron of the *layer output*, exactly as Captum's
                        ``target`` selects a model output: an int (a unit of a
                        (N, K) output), a tuple of indices after the batch
                        dimension (e.g. ``(c, h, w)`` for one unit of a conv
                        output), or one per example: a 1-D tensor or list of
                        ints (a (N, K) output), or a list of tuples. It must
                        select one value per example. A callable or a tuple
                        holding a slice, which only a selector can be, is
                        read as ``neuron_selector`` (Captum's neuron methods
                        take the selector second). Default: None
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            neuron_selector (int, tuple, or Callable, optional): The general
                        form, as in Captum's neuron methods: an int or a tuple
                        of ints/slices after the batch dimension, or a callable
                        from the layer output to a tensor of shape (N,), e.g.
                        ``lambda out: out[:, 3].mean((1, 2))`` for the spatial
                        mean of channel 3 (still exact: the mean of exact
                        projections). A callable must accept a batch of any
                        size: NoiseTunnel and ``sensitivity_max`` repeat the
                        inputs. A callable that returns one element for the
                        whole batch (Captum's ``lambda out: torch.sum(out)``)
                        is applied to each example on its own: for a sum over
                        the examples this gives NeuronGradient's numbers, and
                        each example its own activity. A tuple holding slices
                        selects the sum of those units, as in Captum. Give
                        ``target`` or ``neuron_selector``, not both; neither
                        only when the layer output has one value per example.
                        Default: None
            baselines (scalar, Tensor, or tuple, optional): The starting point
                        :math:`x_0` of the contributions and of the delta, as
                        Captum accepts it: a number, a tensor shaped like the
                        input or broadcastable to it (batch 1 or N), a tuple
                        of those for tuple inputs. None uses each example's
                        centre :math:`c(x)`. Unused when only the weights are
                        returned without a delta. With ``embedding_layer``
                        they are inputs too (e.g. the ids of a padding token),
                        and :math:`x_0` is their embedding, as Captum's layer
                        methods read baselines. Default: None
            return_convergence_delta (bool, optional): Also return
                        :math:`\delta = v(x) - v(x_0) - \sum_j (x_j - x_{0j})
                        w_j(x)`, where :math:`v(x_0)` is the network's *actual*
                        activity at the starting point (one more forward pass):
                        0 when the neuron stays in one linear region between
                        :math:`x_0` and :math:`x` (always for a first-layer
                        neuron), non-zero when a ReLU switches on the way or
                        the network is not piecewise linear. With the centre,
                        :math:`\delta = -v(c)`. Captum's own methods report the
                        opposite sign (sum of attributions minus
                        :math:`F(x) - F(x_0)`), so only :math:`|\delta|`
                        compares across libraries. The delta is the same for
                        either ``multiply_by_inputs``. Default: False
            attribute_to_neuron_input (bool, optional): Choose the neuron in
                        the layer's *input* (its first positional argument)
                        instead of its output, as in Captum's neuron methods:
                        e.g. the pre-activation of a ReLU given as ``layer``.
                        ``target`` and ``neuron_selector`` then index that
                        input. Default: False

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**:
            The switched weights (or, with ``multiply_by_inputs=True``, the
            contributions), shaped like ``inputs`` (a tensor for a tensor, a
            tuple for a tuple), or with ``embedding_layer`` like its output
            (one tensor, in a tuple for tuple inputs); with
            ``return_convergence_delta=True`` the pair ``(attributions, delta)``,
            delta of shape (N,).

        Examples::

            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
            >>> slp = SwitchedLinearProjection(net, net[2])
            >>> x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
            >>> weights = slp.attribute(x, target=y)  # each example's class logit
            >>> weights.shape
            torch.Size([5, 4])
            >>> hidden = SwitchedLinearProjection(net, net[0])
            >>> weights, delta = hidden.attribute(
            ...     x, neuron_selector=5, return_convergence_delta=True)
            >>> # token ids (N, T) into a model whose embedding gives (N, T, D)
            >>> slp = SwitchedLinearProjection(
            ...     model, model.classifier, embedding_layer=model.embedding)
            >>> weights = slp.attribute(input_ids, target=1)  # (N, T, D)
            >>> contributions, delta = slp.decompose(
            ...     input_ids, target=1, baselines=pad_ids, return_convergence_delta=True)
        """
        return self._contributions(
            inputs,
            target,
            additional_forward_args,
            neuron_selector,
            baselines,
            return_convergence_delta,
            attribute_to_neuron_input,
            multiply=self._multiply_by_inputs,
        )

    def project(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        neuron_selector: Optional[NeuronSelector] = None,
        attribute_to_neuron_input: bool = False,
    ) -> SwitchedProjection:
        r"""
        The full switched linear projection of the selected neuron.

        Args:
            inputs, target, additional_forward_args, neuron_selector, attribute_to_neuron_input:
                        as in :meth:`attribute`.

        Returns:
            *SwitchedProjection* ``(weights, bias, activity, centre)``:
            ``weights`` and ``centre`` shaped like ``inputs`` (like the
            embeddings with ``embedding_layer``); ``bias`` and ``activity`` of
            shape (N,), with ``activity == <weights, inputs> + bias`` per
            example (the embeddings in place of the inputs). The centre is
            :math:`c = x - (v / \lVert w \rVert^2) w`, and ``x`` itself where
            ``w = 0``.

        Examples::

            >>> projection = slp.project(x, target=1)
            >>> torch.allclose(
            ...     (projection.weights * x).sum(1) + projection.bias,
            ...     projection.activity, atol=1e-5)
            True
        """
        attributed, activity, weights = self._activity_and_weights(
            inputs, target, additional_forward_args, neuron_selector, attribute_to_neuron_input
        )
        points = tuple(t.detach() for t in attributed.leaves)
        is_tuple = _is_tuple(inputs)
        return SwitchedProjection(
            weights=_format_output(is_tuple, weights),
            bias=activity - per_example_dot(weights, points),
            activity=activity,
            centre=_format_output(is_tuple, centre(points, activity, weights)),
        )

    def decompose(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        neuron_selector: Optional[NeuronSelector] = None,
        baselines: BaselineType = None,
        return_convergence_delta: bool = False,
        attribute_to_neuron_input: bool = False,
    ) -> Union[TensorOrTupleOfTensorsGeneric, tuple[TensorOrTupleOfTensorsGeneric, Tensor]]:
        r"""
        Per-feature contributions :math:`(x_j - x_{0j}) w_j(x)` to the neuron's
        activity, whatever ``multiply_by_inputs`` says.

        With the default starting point, the centre :math:`x_0 = c`, they sum
        to the activity :math:`v(x)` (to float precision) wherever
        :math:`w \neq 0`; with ``baselines`` they sum to the linear model's
        prediction of :math:`v(x) - v(x_0)`.

        Args:
            inputs, target, additional_forward_args, neuron_selector, baselines:
                        as in :meth:`attribute`.
            return_convergence_delta, attribute_to_neuron_input: as in :meth:`attribute`.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, shaped like
            ``inputs`` (like the embeddings with ``embedding_layer``); with
            ``return_convergence_delta=True`` the pair ``(attributions, delta)``,
            the same delta as :meth:`attribute`'s.

        Examples::

            >>> contributions, delta = slp.decompose(
            ...     x, target=1, return_convergence_delta=True)
            >>> contributions.sum(1)   # equals slp.project(x, 1).activity
        """
        return self._contributions(
            inputs,
            target,
            additional_forward_args,
            neuron_selector,
            baselines,
            return_convergence_delta,
            attribute_to_neuron_input,
            multiply=True,
        )

    def compute_convergence_delta(
        self,
        attributions: Union[Tensor, tuple[Tensor, ...]],
        start_point: BaselineType,
        end_point: Union[Tensor, tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        neuron_selector: Optional[NeuronSelector] = None,
        attribute_to_neuron_input: bool = False,
    ) -> Tensor:
        r"""
        The convergence delta of given attributions, for the selected *layer*
        neuron (not the model output), in the sign convention of
        :meth:`attribute`: :math:`\delta = v(\text{end}) - v(\text{start}) -
        \text{predicted change}`, where the predicted change is the sum of the
        attributions when the class multiplies by inputs (they are
        contributions), and :math:`\sum (\text{end} - \text{start}) \odot w`
        when they are switched weights :math:`w`. With the attributions,
        baselines and inputs of :meth:`attribute` it returns
        :meth:`attribute`'s delta; pass ``project(x).centre`` as
        ``start_point`` for the default, centred one.

        Args:
            attributions (Tensor or tuple[Tensor, ...]): Shaped like
                        ``end_point`` (like its embeddings with
                        ``embedding_layer``).
            start_point (scalar, Tensor, or tuple): The baselines, in any form
                        ``baselines`` accepts; None means zeros, as in Captum.
            end_point (Tensor or tuple[Tensor, ...]): The inputs (token ids
                        with ``embedding_layer``).
            target, additional_forward_args, neuron_selector, attribute_to_neuron_input:
                        as in :meth:`attribute`.

        Returns:
            *Tensor* of **deltas** of shape (N,).

        Examples::

            >>> weights, delta = slp.attribute(
            ...     x, target=1, baselines=0.0, return_convergence_delta=True)
            >>> slp.compute_convergence_delta(weights, 0.0, x, target=1)  # == delta
        """
        attributed = attributed_points(self, end_point, additional_forward_args)
        end = tuple(point.detach() for point in attributed.leaves)
        start = baseline_points(self, attributed, start_point, additional_forward_args)
        formatted = _format_tensor_into_tuples(attributions)
        if len(formatted) != len(end) or any(a.shape != e.shape for a, e in zip(formatted, end)):
            what = "end_point" if self.embedding_layer is None else "the embeddings of end_point"
            raise ValueError(
                f"attributions must be shaped like {what}: got "
                f"{[tuple(a.shape) for a in formatted]} for {[tuple(e.shape) for e in end]}"
            )
        activity_at_end, activity_at_start = (
            activity_at(
                self,
                attributed.forward_func,
                point,
                target,
                additional_forward_args,
                neuron_selector,
                attribute_to_neuron_input,
            )
            for point in (end, start)
        )
        if self._multiply_by_inputs:
            predicted_change = per_example_sum(formatted)
        else:
            predicted_change = per_example_sum(contributions(end, start, formatted))
        return activity_at_end - activity_at_start - predicted_change
