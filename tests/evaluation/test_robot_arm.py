"""The robot arm: its Jacobian against finite differences, Table III's test and the
direction agreement against brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch

from captum_ssa.evaluation.robot_arm import (
    ReLUTan,
    direction_agreement,
    importance_agreement,
    robot_arm_dataset,
    robot_arm_jacobian,
    robot_arm_position,
)


def test_dataset_is_uniform_angles_and_their_positions():
    angles, positions = robot_arm_dataset(500, seed=4)
    assert angles.shape == positions.shape == (500, 2)
    assert angles.min() >= 0 and angles.max() < 2 * math.pi
    for (t1, t2), (x, y) in zip(angles[:20].tolist(), positions[:20].tolist()):
        assert x == pytest.approx(math.sin(t1) + math.sin(t1 + t2), abs=1e-5)
        assert y == pytest.approx(math.cos(t1) + math.cos(t1 + t2), abs=1e-5)
    assert torch.equal(robot_arm_dataset(500, seed=4)[0], angles)


def test_jacobian_matches_central_differences():
    angles = robot_arm_dataset(50, seed=1)[0].double()
    jacobian = robot_arm_jacobian(angles)
    h = 1e-6
    for j in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[j] = h
        numeric = (robot_arm_position(angles + step) - robot_arm_position(angles - step)) / (2 * h)
        torch.testing.assert_close(jacobian[:, :, j], numeric, atol=1e-7, rtol=1e-6)


def _net(seed: int = 0) -> ReLUTan:
    torch.manual_seed(seed)
    return ReLUTan(16).eval()


@pytest.mark.parametrize("axis", ["x", "y"])
def test_importance_agreement_matches_a_loop(axis):
    model = _net()
    angles = robot_arm_dataset(200, seed=2)[0]
    importances = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    step, column = 0.05, {"x": 0, "y": 1}[axis]
    rows = importance_agreement(
        model, angles, importances, axis, thresholds=(1.0, 1.5, 3.0), step=step
    )

    def output(theta):
        with torch.no_grad():
            return model(torch.tensor([theta]))[0, column].item()

    for row in rows:
        kept, agreeing = 0, 0
        for (t1, t2), (a1, a2) in zip(angles.tolist(), importances.tolist()):
            big, small = (0, 1) if abs(a1) >= abs(a2) else (1, 0)
            if max(abs(a1), abs(a2)) < row.threshold * min(abs(a1), abs(a2)):
                continue
            kept += 1
            here = output([t1, t2])
            moves = []
            for j in range(2):
                plus = [t1 + step * (j == 0), t2 + step * (j == 1)]
                minus = [t1 - step * (j == 0), t2 - step * (j == 1)]
                moves.append((abs(output(plus) - here) + abs(output(minus) - here)) / 2)
            agreeing += moves[big] > moves[small]
        assert row.kept == pytest.approx(kept / 200)
        assert row.agreement == pytest.approx(agreeing / kept, abs=1e-6)


def test_the_true_gradient_agrees_with_the_arm_itself():
    # the arm as the "model": its own gradient must pass Table III's test nearly always
    class Arm(torch.nn.Module):
        def forward(self, angles):
            return robot_arm_position(angles)

    angles = robot_arm_dataset(2000, seed=5)[0]
    rows = importance_agreement(Arm(), angles, robot_arm_jacobian(angles)[:, 0], "x", step=1e-3)
    assert all(row.agreement > 0.99 for row in rows)
    assert [row.kept for row in rows] == sorted((row.kept for row in rows), reverse=True)


def test_direction_agreement_matches_a_loop():
    generator = torch.Generator().manual_seed(3)
    attributions, gradients = (
        torch.randn(30, 2, generator=generator),
        torch.randn(30, 2, generator=generator),
    )
    result = direction_agreement(attributions, gradients)
    for n, (a, g) in enumerate(zip(attributions.tolist(), gradients.tolist())):
        cosine = (a[0] * g[0] + a[1] * g[1]) / math.hypot(*a) / math.hypot(*g)
        assert result.cosine[n].item() == pytest.approx(cosine, abs=1e-6)
        assert result.sign[n].item() == all((x > 0) == (y > 0) for x, y in zip(a, g))
        assert result.ranking[n].item() == ((abs(a[0]) >= abs(a[1])) == (abs(g[0]) >= abs(g[1])))
    perfect = direction_agreement(gradients * 3, gradients).summary()
    assert perfect == pytest.approx({"cosine": 1.0, "sign": 1.0, "ranking": 1.0})
