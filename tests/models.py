"""Small random networks shared by the tests.

Each builder returns ``(model, named layers, input shape per example)``; the
models are in eval mode and piecewise linear unless the name says otherwise.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (6, 8, 7, 4), leaky: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.act1 = nn.LeakyReLU(0.1) if leaky else nn.ReLU()
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.act2 = nn.LeakyReLU(0.1) if leaky else nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class CNN(nn.Module):
    """conv -> ReLU(inplace) -> max-pool -> conv -> ReLU -> avg-pool -> fc -> ReLU -> fc."""

    def __init__(self, channels: int = 1, classes: int = 3, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3)
        self.bn1 = nn.BatchNorm2d(4) if batch_norm else nn.Identity()
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(5 * 2 * 2, 6)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


class Residual(nn.Module):
    """fc -> ReLU -> (fc -> ReLU -> fc) + skip -> ReLU -> fc."""

    def __init__(self, features: int = 5, hidden: int = 7, classes: int = 3) -> None:
        super().__init__()
        self.fc_in = nn.Linear(features, hidden)
        self.block1 = nn.Linear(hidden, hidden)
        self.block2 = nn.Linear(hidden, hidden)
        self.fc_out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc_in(x))
        h = F.relu(h + self.block2(F.relu(self.block1(h))))
        return self.fc_out(h)


class TwoInputs(nn.Module):
    """A model with a tuple of inputs: an image-like and a vector input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.vec = nn.Linear(4, 6)
        self.fc = nn.Linear(3 * 4 * 4 + 6, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, image: Tensor, vector: Tensor) -> Tensor:
        joined = torch.cat([F.relu(self.conv(image)).flatten(1), F.relu(self.vec(vector))], 1)
        return self.out(F.relu(self.fc(joined)))


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return model


def build(name: str, seed: int = 0) -> tuple[nn.Module, dict[str, nn.Module], tuple[int, ...]]:
    """A seeded eval-mode model, its observable layers by name, and its input shape."""
    torch.manual_seed(seed)
    model: nn.Module
    if name == "mlp":
        model = MLP()
        layers = {"fc1": model.fc1, "fc2": model.fc2, "fc3": model.fc3}
        shape: tuple[int, ...] = (6,)
    elif name == "leaky_mlp":
        model = MLP(leaky=True)
        layers = {"fc1": model.fc1, "fc2": model.fc2, "fc3": model.fc3}
        shape = (6,)
    elif name in ("cnn", "cnn_bn"):
        model = CNN(batch_norm=name == "cnn_bn")
        randomise_batch_norm(model, seed)
        layers = {"conv1": model.conv1, "conv2": model.conv2, "fc1": model.fc1, "fc2": model.fc2}
        shape = (1, 10, 10)
    elif name == "residual":
        model = Residual()
        layers = {
            "fc_in": model.fc_in,
            "block1": model.block1,
            "block2": model.block2,
            "fc_out": model.fc_out,
        }
        shape = (5,)
    else:
        raise KeyError(name)
    return model.eval(), layers, shape


PIECEWISE_LINEAR_MODELS = ("mlp", "leaky_mlp", "cnn", "cnn_bn", "residual")


def layer_output(model: nn.Module, layer: nn.Module, inputs: Tensor) -> Tensor:
    """The layer's output (a clone, with its graph) for a batch: the tests' plain capture,
    independent of the package's own hooks."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output.clone()))
    try:
        model(inputs)
    finally:
        handle.remove()
    return captured[0]


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with batch norm, and the skip connection
    (a strided 1x1 conv where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet-18 (``width=64``, 11.2M parameters at 32x32x3): a 3x3 stem,
    four stages of two BasicBlocks with ``width``, 2, 4 and 8 times ``width`` channels
    (stride 2 from the second stage on), global average pooling and a linear layer.
    ``width=4`` is a small version for tests."""

    def __init__(self, width: int = 64, classes: int = 10, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages = []
        channels = width
        for stage in range(4):
            outputs = width * 2**stage
            layers = [BasicBlock(channels, outputs, 1 if stage == 0 else 2)]
            layers += [BasicBlock(outputs, outputs) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            channels = outputs
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(x.mean((2, 3)))

    def ssa_layers(self) -> list[nn.Module]:
        """Each stage's output and the logits, the layers SSA lists for a ResNet."""
        return [self.layer1, self.layer2, self.layer3, self.layer4, self.fc]


class TinyAttention(nn.Module):
    """Single-head self-attention over the positions of (N, T, D) features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
        return torch.softmax(scores, dim=-1) @ self.value(x)


class TokenClassifier(nn.Module):
    """Token ids -> embedding (+ learned positions, + token types when given) ->
    per-position fc1 -> ReLU -> fc2 -> ReLU -> (+ tiny attention) -> mean over
    positions -> head.

    ``forward(ids, types=None)`` is ``from_embeddings(self.embedding(ids), types)``:
    the bound method ``model.from_embeddings`` is the same model called from the
    embeddings, with the same modules (and so the same layer names), the reference
    of the token-input tests. Without attention it is piecewise linear in the
    embeddings.
    """

    def __init__(
        self,
        vocabulary: int = 12,
        length: int = 6,
        width: int = 5,
        hidden: int = 7,
        classes: int = 3,
        attention: bool = True,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(0.5 * torch.randn(length, width))
        self.type_embedding = nn.Embedding(2, width)
        self.fc1 = nn.Linear(width, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, width)
        self.relu2 = nn.ReLU()
        self.attention = TinyAttention(width) if attention else None
        self.head = nn.Linear(width, classes)
        with torch.no_grad():  # logits that vary with the tokens more than the biases
            self.embedding.weight.mul_(2)
            self.head.weight.mul_(4)
            self.head.bias.zero_()

    def forward(self, ids: Tensor, types: Optional[Tensor] = None) -> Tensor:
        return self.from_embeddings(self.embedding(ids), types)

    def from_embeddings(self, embeddings: Tensor, types: Optional[Tensor] = None) -> Tensor:
        x = embeddings + self.position[: embeddings.shape[1]]
        if types is not None:
            x = x + self.type_embedding(types)
        h = self.relu2(self.fc2(self.relu1(self.fc1(x))))
        if self.attention is not None:
            h = h + self.attention(h)
        return self.head(h.mean(1))


def token_classifier(
    seed: int = 0, attention: bool = True, dtype: torch.dtype = torch.float64
) -> tuple[TokenClassifier, Tensor, Tensor]:
    """A seeded eval-mode :class:`TokenClassifier`, a batch of token ids (N=7, T=6) and
    token types for it."""
    torch.manual_seed(seed)
    model = TokenClassifier(attention=attention).to(dtype).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 12, (7, 6), generator=generator)
    types = torch.randint(0, 2, (7, 6), generator=generator)
    return model, ids, types


def token_classifier_in_user_state(train: bool = True) -> tuple[TokenClassifier, Tensor]:
    """:func:`token_classifier` (with attention) and its ids, in state an explanation must
    leave as it is: a gradient on ``fc1.weight``, a frozen embedding, training mode."""
    model, ids, _ = token_classifier(attention=True)
    model.fc1.weight.grad = torch.randn_like(model.fc1.weight)
    model.embedding.weight.requires_grad_(False)
    return model.train(train), ids


def token_reference(size: int = 40, seed: int = 5) -> Tensor:
    """Token ids for the fits of :func:`token_classifier`'s model: with the default
    seeds both of its variants predict at least two classes on them."""
    return torch.randint(0, 12, (size, 6), generator=torch.Generator().manual_seed(seed))


class MaskedAttention(nn.Module):
    """Single-head self-attention whose softmax ignores the masked keys."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1) @ self.value(x)


class MaskedTransformer(nn.Module):
    """A transformer-like classifier that honours its mask: token ids -> embedding +
    positions (counted among the real tokens, so left and right padding agree) ->
    attention over the real tokens (+ residual) -> fc1 -> ReLU -> fc2 (+ residual)
    -> mean over the real tokens -> head.

    ``forward(ids, mask=None)``: without a mask every position is a token. Its
    outputs on the real positions, and its logits, do not depend on the pads.
    ``from_embeddings(embeddings, mask=None)`` is the same model from the
    embedding layer's output.
    """

    def __init__(
        self, vocabulary: int = 11, length: int = 9, width: int = 6, hidden: int = 8, classes=3
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(0.5 * torch.randn(length, width))
        self.attention = MaskedAttention(width)
        self.fc1 = nn.Linear(width, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, width)
        self.head = nn.Linear(width, classes)
        with torch.no_grad():  # logits that vary with the tokens more than the biases
            self.embedding.weight.mul_(2)
            self.head.weight.mul_(4)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.from_embeddings(self.embedding(ids), mask)

    def from_embeddings(self, embeddings: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None:
            mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
        mask = mask.bool()
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        x = embeddings + self.position[positions]
        x = x + self.attention(x, mask)
        x = x + self.fc2(self.relu(self.fc1(x)))
        weights = mask[:, :, None].to(x.dtype)
        return self.head((x * weights).sum(1) / weights.sum(1))


def masked_transformer(seed: int = 0) -> MaskedTransformer:
    """A seeded eval-mode float64 :class:`MaskedTransformer`."""
    torch.manual_seed(seed)
    return MaskedTransformer().double().eval()


def sequences(count: int = 7, shortest: int = 2, longest: int = 6, seed: int = 1) -> list[Tensor]:
    """``count`` token-id sequences of lengths from ``shortest`` to ``longest`` (ids
    1 to 10; 0 is the pad), each shaped (1, L): unpadded examples."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, longest + 1, (count,), generator=generator)
    lengths[0], lengths[-1] = shortest, longest  # both ends present
    return [torch.randint(1, 11, (1, int(n)), generator=generator) for n in lengths]


def padded(examples: list[Tensor], length: Optional[int] = None, left: bool = False):
    """The examples padded with id 0 to ``length`` (default: the longest), on the right
    (or the left), and their mask (1 = real token): ``(ids, mask)``, both (N, T)."""
    length = max(e.shape[1] for e in examples) if length is None else length
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        size = example.shape[1]
        place = slice(length - size, length) if left else slice(0, size)
        ids[row, place] = example[0]
        mask[row, place] = 1
    return ids, mask
