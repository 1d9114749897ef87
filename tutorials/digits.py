"""The demo's data and model: a small CNN on scikit-learn's bundled digits.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships with
scikit-learn (1,797 grey 8x8 images). Training takes a few seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn


@dataclass
class Digits:
    x_train: Tensor  # (N, 1, 8, 8), pixel values scaled to [0, 1]
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_tensors(classes: Optional[Sequence[int]] = None, seed: int = 0) -> Digits:
    """The digits as float tensors, split 75/25, optionally keeping some classes."""
    images, labels = load_digits(return_X_y=True)
    if classes is not None:
        keep = [label in set(classes) for label in labels]
        images, labels = images[keep], labels[keep]
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=seed, stratify=labels
    )

    def to_images(array: object) -> Tensor:
        return torch.as_tensor(array, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0

    return Digits(
        to_images(x_train),
        torch.as_tensor(y_train),
        to_images(x_test),
        torch.as_tensor(y_test),
    )


class DigitsCNN(nn.Module):
    """conv 3x3 16 -> ReLU -> max-pool -> conv 3x3 32 -> ReLU -> max-pool -> fc 64 -> ReLU -> fc."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class PaperConvNet(nn.Module):
    """The SSA paper's Conv-Net shape on 8x8 inputs: conv 3x3 64 -> ReLU -> max-pool ->
    conv 3x3 64 -> ReLU -> fc 328 -> ReLU -> fc 194 -> ReLU -> fc.

    One max-pool, between the convs, as the paper lists it ("conv 3x3x64, max-pool,
    conv 3x3x64, fully-connected-328, fully-connected-194, soft-max-10 with RELU
    activations"); the softmax is left to the loss, so the output is logits.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 4 * 4, 328)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(328, 194)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(194, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(self.flatten(x))))))


def train_digits_cnn(
    x: Tensor,
    y: Tensor,
    classes: int = 10,
    epochs: int = 40,
    seed: int = 0,
    architecture: Callable[[int], nn.Module] = DigitsCNN,
) -> nn.Module:
    """Train ``architecture(classes)`` with Adam on mini-batches; returns it in eval mode."""
    torch.manual_seed(seed)
    model = architecture(classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
