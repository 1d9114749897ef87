"""DeepDIVE's two-joint robot arm: a regression task whose true gradients are known.

Coimbra Vera, "Interpreting deep neural networks through backpropagation"
(DeepDIVE), IST Lisbon: the hand of an arm with two unit limbs is at
``x = sin θ1 + sin(θ1 + θ2)``, ``y = cos θ1 + cos(θ1 + θ2)``; a small MLP
learns the map, and an explanation of one axis (the importance of each angle)
can be checked against the network's own movements (Table III) and against the
analytic Jacobian.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

AXES = {"x": 0, "y": 1}


def robot_arm_position(angles: Tensor) -> Tensor:
    """``(N, 2)`` angles (θ1, θ2) in radians -> ``(N, 2)`` hand positions (x, y)."""
    first, both = angles[:, 0], angles.sum(1)
    return torch.stack([first.sin() + both.sin(), first.cos() + both.cos()], 1)


def robot_arm_jacobian(angles: Tensor) -> Tensor:
    r"""The analytic Jacobian, ``(N, 2, 2)``: row 0 is :math:`\partial x/\partial(θ_1, θ_2)`,
    row 1 is :math:`\partial y/\partial(θ_1, θ_2)`."""
    first, both = angles[:, 0], angles.sum(1)
    dx = torch.stack([first.cos() + both.cos(), both.cos()], 1)
    dy = torch.stack([-first.sin() - both.sin(), -both.sin()], 1)
    return torch.stack([dx, dy], 1)


def robot_arm_dataset(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` angle pairs drawn uniformly from [0, 2π)² and their hand positions."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.rand(n, 2, generator=generator) * (2 * math.pi)
    return angles, robot_arm_position(angles)


class ReLUTan(nn.Module):
    """The thesis's "ReLUtan" regressor: 2 -> ReLU -> tanh -> ReLU -> 2 (x, y)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(hidden, hidden)
        self.relu3 = nn.ReLU()
        self.out = nn.Linear(hidden, 2)

    def forward(self, angles: Tensor) -> Tensor:
        hidden = self.tanh(self.fc2(self.relu1(self.fc1(angles))))
        return self.out(self.relu3(self.fc3(hidden)))


def train_robot_arm(
    angles: Tensor,
    positions: Tensor,
    hidden: int = 64,
    epochs: int = 60,
    batch_size: int = 256,
    seed: int = 0,
) -> ReLUTan:
    """Adam with a cosine learning-rate decay on the mean squared error; eval mode."""
    torch.manual_seed(seed)
    model = ReLUTan(hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = math.ceil(len(angles) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * batches)
    for _ in range(epochs):
        for batch in torch.randperm(len(angles)).split(batch_size):
            optimiser.zero_grad()
            nn.functional.mse_loss(model(angles[batch]), positions[batch]).backward()
            optimiser.step()
            schedule.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def rmse(model: nn.Module, angles: Tensor, positions: Tensor) -> float:
    """Root mean squared error over both coordinates."""
    with torch.no_grad():
        return (model(angles) - positions).square().mean().sqrt().item()


@dataclass
class AgreementRow:
    """One threshold of Table III for one axis."""

    threshold: float
    kept: float  # share of all examples whose importance ratio reaches the threshold
    agreement: float  # among those, share where the more important angle moves the axis more


def movement(model: nn.Module, angles: Tensor, axis: str, step: float) -> Tensor:
    r"""``(N, 2)``: how much moving each angle by ±``step`` moves the model's ``axis``
    output, :math:`\tfrac12(|f(θ + δe_j) - f(θ)| + |f(θ - δe_j) - f(θ)|)`."""
    column = AXES[axis]
    moves = torch.eye(2, dtype=angles.dtype) * step
    shifted = torch.cat([angles[:, None] + moves, angles[:, None] - moves], 1)  # (N, 4, 2)
    with torch.no_grad():
        here = model(angles)[:, column]
        there = model(shifted.reshape(-1, 2))[:, column].reshape(-1, 4)
    change = (there - here[:, None]).abs()
    return (change[:, :2] + change[:, 2:]) / 2


def importance_agreement(
    model: nn.Module,
    angles: Tensor,
    importances: Tensor,
    axis: str,
    thresholds: Sequence[float] = (1.5, 2.0, 3.0, 4.0),
    step: float = 0.01,
) -> list[AgreementRow]:
    r"""
    DeepDIVE's Table III test for one axis.

    Keep the examples where one angle's ``|importance|`` is at least ``threshold``
    times the other's; move each angle by ±``step`` radians; count the kept
    examples where the more important angle moves the model's ``axis`` output
    more (``movement``, the mean over both directions). The thesis leaves
    the step and how the two directions combine open: these are our choices.

    Args:
        model (nn.Module): The regressor ``(N, 2) -> (N, 2)``.
        angles (Tensor): ``(N, 2)``.
        importances (Tensor): ``(N, 2)``, an explanation of ``axis`` per example
                    (e.g. ``Saliency(model).attribute(angles, target=0, abs=False)``).
        axis (str): ``"x"`` or ``"y"``.
        thresholds (list[float], optional): Default: the thesis's 1.5, 2, 3, 4.
        step (float, optional): δ in radians. Default: 0.01.

    Returns:
        list[:class:`AgreementRow`], one per threshold (agreement NaN if none kept).

    Examples::

        >>> rows = importance_agreement(model, angles, saliency_x, "x")
    """
    magnitude = importances.detach().abs()
    larger, smaller = magnitude.max(1), magnitude.min(1).values
    moved = movement(model, angles, axis, step)
    agrees = moved.gather(1, larger.indices[:, None])[:, 0] > moved.min(1).values
    rows = []
    for threshold in thresholds:
        keep = larger.values >= threshold * smaller
        agreement = agrees[keep].float().mean().item() if keep.any() else math.nan
        rows.append(AgreementRow(threshold, keep.float().mean().item(), agreement))
    return rows


@dataclass
class DirectionAgreement:
    r"""
    Attributes:
        cosine (Tensor): ``(N,)`` cosine between attribution and true gradient.
        sign (Tensor): ``(N,)`` bool, both components have the true gradient's sign.
        ranking (Tensor): ``(N,)`` bool, the larger ``|attribution|`` is the larger
                    ``|true gradient|``.
    """

    cosine: Tensor
    sign: Tensor
    ranking: Tensor

    def summary(self) -> dict[str, float]:
        """Means: cosine, sign agreement and ranking agreement."""
        return {
            "cosine": self.cosine.mean().item(),
            "sign": self.sign.float().mean().item(),
            "ranking": self.ranking.float().mean().item(),
        }


def direction_agreement(attributions: Tensor, true_gradients: Tensor) -> DirectionAgreement:
    r"""
    How well ``(N, 2)`` attributions point along the analytic gradient of the
    same axis (a row of :func:`robot_arm_jacobian`).

    Examples::

        >>> true_x = robot_arm_jacobian(angles)[:, 0]
        >>> direction_agreement(saliency_x, true_x).summary()
    """
    a, g = attributions.detach(), true_gradients.detach()
    cosine = nn.functional.cosine_similarity(a, g, dim=1)
    sign = (a.sign() == g.sign()).all(1)
    ranking = a.abs().argmax(1) == g.abs().argmax(1)
    return DirectionAgreement(cosine=cosine, sign=sign, ranking=ranking)
