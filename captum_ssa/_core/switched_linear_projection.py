"""Switched linear projections (METHODS.md §1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

import torch
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils._compat import (
    TensorOrTupleOfTensorsGeneric,
    _format_output,
    _is_tuple,
    _verify_select_neuron,
)
from captum_ssa._utils.hooks import check_layers_in_model, run_and_capture
from captum_ssa._utils.linearity import warn_once_if_not_piecewise_linear
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.validation import (
    NeuronSelector,
    check_neuron_selector,
    prepare_inputs,
)


class SwitchedProjection(NamedTuple):
    """A neuron's activity written as one linear projection of the input.

    ``activity == <weights, inputs> + bias`` per example, and
    ``centre`` is the point the neuron's own coordinate system is centred on.
    """

    weights: Union[Tensor, tuple[Tensor, ...]]
    bias: Tensor
    activity: Tensor
    centre: Union[Tensor, tuple[Tensor, ...]]


def _per_example_sum(tensors: tuple[Tensor, ...]) -> Tensor:
    """The sum over every feature of every input tensor, one value per example."""
    return torch.stack([t.reshape(t.shape[0], -1).sum(1) for t in tensors]).sum(0)


def _per_example_dot(left: tuple[Tensor, ...], right: tuple[Tensor, ...]) -> Tensor:
    """``<left, right>`` over every input tensor, one value per example."""
    return _per_example_sum(tuple(a * b for a, b in zip(left, right)))


def _step_to_centre(activity: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
    """``v / ||w||^2`` per example (x - c = step * w), and 0 where ``w = 0``."""
    squared_norm = _per_example_dot(weights, weights)
    safe_norm = torch.where(squared_norm > 0, squared_norm, torch.ones_like(squared_norm))
    return torch.where(squared_norm > 0, activity / safe_norm, torch.zeros_like(activity))


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    """(N,) values shaped to multiply a (N, ...) tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class SwitchedLinearProjection(NeuronAttribution, GradientAttribution):
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

    On a network that is not piecewise linear (sigmoid, tanh, GELU, ...) the
    projection is only a first-order Taylor approximation: the class warns
    once, and :meth:`decompose` reports the real error as its delta.

    Paper: *State sensitivity for deep neural network interpretability*
    (switched linear projections), ``shared/papers/
    state-sensitivity-switched-linear-projections.md``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        device_ids: Optional[list[int]] = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or any function of the inputs
                        that runs it.
            layer (torch.nn.Module): The layer whose *output* holds the
                        pre-activations of the neurons to project, e.g. a
                        ``Conv2d`` or ``Linear`` followed by a ReLU.
            device_ids (list[int], optional): Passed on to Captum for
                        ``DataParallel`` models. Default: None
        """
        check_layers_in_model(forward_func, [layer])
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return True

    def _activity_and_weights(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any,
    ) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...]]:
        """One forward and one backward: ``(inputs, activity (N,), weights)``."""
        prepared = prepare_inputs(inputs)
        with untouched_model(self.forward_func):
            _, (layer_output,) = run_and_capture(
                self.forward_func,
                prepared,
                [self.layer],
                additional_forward_args,
            )
            check_neuron_selector(layer_output, neuron_selector)
            activity = _verify_select_neuron((layer_output,), neuron_selector)
            if activity.shape != (layer_output.shape[0],):
                raise ValueError(
                    "neuron_selector must pick one value per example, a tensor "
                    f"shaped ({layer_output.shape[0]},); got {tuple(activity.shape)}"
                )
            warn_once_if_not_piecewise_linear(self, activity, prepared)
            # Examples do not interact in eval mode, so the gradient of the sum
            # holds every example's own switched weights.
            weights = torch.autograd.grad(
                activity.sum(), prepared, allow_unused=True, materialize_grads=True
            )
        return (
            tuple(t.detach() for t in prepared),
            activity.detach(),
            tuple(w.detach() for w in weights),
        )

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""
        Switched weights :math:`w = \partial v / \partial x` of the selected neuron.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Input for which the
                        projection is computed; dimension 0 is the batch. A
                        tuple of tensors for a model with several inputs.
            neuron_selector (int, tuple, or Callable): Which neuron of the
                        layer output, as in Captum's neuron methods: an int or
                        a tuple of indices after the batch dimension (e.g.
                        ``(channel, h, w)`` for one conv unit), or a callable
                        from the layer output to a tensor of shape (N,), e.g.
                        ``lambda out: out[:, 3].mean((1, 2))`` for the spatial
                        mean of channel 3 (still exact: the mean of exact
                        projections).
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**:
            The switched weights, shaped like ``inputs`` (a tensor for a
            tensor, a tuple for a tuple).

        Examples::

            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
            >>> slp = SwitchedLinearProjection(net, net[2])
            >>> weights = slp.attribute(torch.randn(5, 4), neuron_selector=1)
            >>> weights.shape
            torch.Size([5, 4])
        """
        _, _, weights = self._activity_and_weights(inputs, neuron_selector, additional_forward_args)
        return _format_output(_is_tuple(inputs), weights)

    def project(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
    ) -> SwitchedProjection:
        r"""
        The full switched linear projection of the selected neuron.

        Args:
            inputs, neuron_selector, additional_forward_args: as in
                        :meth:`attribute`.

        Returns:
            *SwitchedProjection* ``(weights, bias, activity, centre)``:
            ``weights`` and ``centre`` shaped like ``inputs``; ``bias`` and
            ``activity`` of shape (N,), with
            ``activity == <weights, inputs> + bias`` per example. The centre is
            :math:`c = x - (v / \lVert w \rVert^2) w`, and ``x`` itself where
            ``w = 0``.

        Examples::

            >>> projection = slp.project(x, neuron_selector=1)
            >>> torch.allclose(
            ...     (projection.weights * x).sum(1) + projection.bias,
            ...     projection.activity, atol=1e-5)
            True
        """
        prepared, activity, weights = self._activity_and_weights(
            inputs, neuron_selector, additional_forward_args
        )
        bias = activity - _per_example_dot(weights, prepared)
        step = _step_to_centre(activity, weights)
        centre = tuple(x - _broadcast(step, w) * w for x, w in zip(prepared, weights))
        is_tuple = _is_tuple(inputs)
        return SwitchedProjection(
            weights=_format_output(is_tuple, weights),
            bias=bias,
            activity=activity,
            centre=_format_output(is_tuple, centre),
        )

    def decompose(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Union[TensorOrTupleOfTensorsGeneric, tuple[TensorOrTupleOfTensorsGeneric, Tensor]]:
        r"""
        Per-feature contributions :math:`(x_j - c_j) w_j` to the neuron's activity.

        They sum to the activity :math:`v(x)` (to float precision) wherever
        :math:`w \neq 0`. The convergence delta, in Captum's sense with the
        centre as the baseline, is
        :math:`\delta = (v(x) - v(c)) - \sum_j (x_j - c_j) w_j = -v(c)`, where
        :math:`v(c)` is the network's *actual* activity at the centre (one more
        forward pass): 0 when the neuron stays in one linear region between
        :math:`x` and :math:`c` (always for a first-layer neuron), non-zero when
        a ReLU switches on the way or the network is not piecewise linear.

        Args:
            inputs, neuron_selector, additional_forward_args: as in
                        :meth:`attribute`.
            return_convergence_delta (bool, optional): Also return the delta
                        above, a tensor of shape (N,). Default: False

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, shaped like
            ``inputs``; with ``return_convergence_delta=True`` the pair
            ``(attributions, delta)``.

        Examples::

            >>> contributions, delta = slp.decompose(
            ...     x, neuron_selector=1, return_convergence_delta=True)
            >>> contributions.sum(1)   # equals slp.project(x, 1).activity
        """
        prepared, activity, weights = self._activity_and_weights(
            inputs, neuron_selector, additional_forward_args
        )
        step = _step_to_centre(activity, weights)
        # x - c = (v / ||w||^2) w, so the contributions are step * w^2.
        contributions = tuple(_broadcast(step, w) * w * w for w in weights)
        formatted = _format_output(_is_tuple(inputs), contributions)
        if not return_convergence_delta:
            return formatted
        centre = tuple(x - _broadcast(step, w) * w for x, w in zip(prepared, weights))
        activity_at_centre = self._activity_at(centre, neuron_selector, additional_forward_args)
        delta = (activity - activity_at_centre) - _per_example_sum(contributions)
        return formatted, delta

    def _activity_at(
        self,
        points: tuple[Tensor, ...],
        neuron_selector: NeuronSelector,
        additional_forward_args: Any,
    ) -> Tensor:
        with torch.no_grad():
            _, (layer_output,) = run_and_capture(
                self.forward_func,
                points,
                [self.layer],
                additional_forward_args,
            )
            return _verify_select_neuron((layer_output,), neuron_selector)


__all__ = ["SwitchedLinearProjection", "SwitchedProjection"]
