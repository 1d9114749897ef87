"""Robustness and fidelity: continuity, and thin wrappers over Captum's
``infidelity`` and ``sensitivity_max`` with the harness's defaults."""

from __future__ import annotations

from typing import Any, Callable

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor


def continuity(
    explain: Callable[..., Tensor],
    inputs: Tensor,
    target: Any = None,
    radius: float = 0.02,
    n_samples: int = 8,
    seed: int = 0,
) -> Tensor:
    r"""
    Local continuity of an explanation, an estimate of its local Lipschitz
    constant (Alvarez-Melis & Jaakkola, "On the robustness of interpretability
    methods", 2018, arXiv:1806.08049), per example:

    .. math::
        C(x) = \max_{s=1..S} \frac{\lVert A(x + \delta_s) - A(x) \rVert_2}
                                  {\lVert \delta_s \rVert_2},
        \qquad \delta_s \sim \mathcal{U}[-r, r]^d .

    Lower is smoother. Unlike Captum's ``sensitivity_max`` (the change alone,
    not divided), the ratio does not grow with the radius for a locally linear
    map. All ``S`` perturbed copies are explained in one call.

    Args:
        explain (Callable): ``(inputs, target=...) -> attributions``, e.g. a
                    Captum method's ``attribute``.
        inputs (Tensor): ``(N, ...)``.
        target: Captum's target (int or one per example).
        radius (float, optional): r. Default: 0.02.
        n_samples (int, optional): S. Default: 8.
        seed (int, optional): The perturbations' seed. Default: 0.

    Returns:
        Tensor ``(N,)``.

    Examples::

        >>> continuity(Saliency(model).attribute, x, target=y)
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand((n_samples, *inputs.shape), generator=generator, dtype=inputs.dtype)
    delta = ((noise * 2 - 1) * radius).to(inputs.device)
    perturbed = (inputs.detach()[None] + delta).reshape(-1, *inputs.shape[1:])
    repeated_target = _repeat_target(target, n_samples)
    original = explain(inputs, target=target).detach()
    moved = explain(perturbed, target=repeated_target).detach().reshape(n_samples, *inputs.shape)
    change = (moved - original[None]).flatten(2).norm(dim=2)
    return (change / delta.flatten(2).norm(dim=2)).max(0).values


def _repeat_target(target: Any, times: int) -> Any:
    """Captum's target for ``times`` stacked copies of the batch."""
    if target is None or isinstance(target, int):
        return target
    if isinstance(target, Tensor):
        return target.reshape(-1).repeat(times) if target.numel() > 1 else target
    return list(target) * times


def gaussian_perturbation(scale: float) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """A Captum ``perturb_func``: Gaussian noise of std ``scale``, returning the
    perturbation ``I`` and the perturbed input ``x - I`` as ``infidelity`` expects."""

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn_like(inputs) * scale
        return noise, inputs - noise

    return perturb


def infidelity_score(
    forward_func: Callable[..., Tensor],
    explain: Callable[..., Tensor],
    inputs: Tensor,
    target: Any = None,
    noise_scale: float = 0.1,
    n_perturb_samples: int = 10,
    seed: int = 0,
) -> Tensor:
    r"""
    Captum's ``infidelity`` (Yeh et al., "On the (in)fidelity and sensitivity
    of explanations", 2019, arXiv:1901.09392) with Gaussian perturbations of std
    ``noise_scale`` and ``normalize=True`` (the attribution's best scaling, so
    methods of different scale compare): lower is better.

    Args:
        forward_func (Callable): The model.
        explain (Callable): ``(inputs, target=...) -> attributions``.
        inputs (Tensor): ``(N, ...)``.
        target: Captum's target.
        noise_scale (float, optional): Default: 0.1.
        n_perturb_samples (int, optional): Default: 10.
        seed (int, optional): Seeds torch's generator for the noise. Default: 0.

    Returns:
        Tensor ``(N,)``.
    """
    attributions = explain(inputs, target=target).detach()
    torch.manual_seed(seed)
    return infidelity(
        forward_func,
        gaussian_perturbation(noise_scale),
        inputs,
        attributions,
        target=target,
        n_perturb_samples=n_perturb_samples,
        normalize=True,
    ).detach()


def max_sensitivity(
    explain: Callable[..., Tensor],
    inputs: Tensor,
    target: Any = None,
    radius: float = 0.02,
    n_perturb_samples: int = 10,
    seed: int = 0,
) -> Tensor:
    r"""
    Captum's ``sensitivity_max`` (Yeh et al. 2019): the largest Frobenius norm
    of the attribution change over uniform perturbations within ``radius``.
    Lower is better. See :func:`continuity` for the ratio to the input change.

    Returns:
        Tensor ``(N,)``.
    """
    torch.manual_seed(seed)
    return sensitivity_max(
        explain, inputs, perturb_radius=radius, n_perturb_samples=n_perturb_samples, target=target
    ).detach()
