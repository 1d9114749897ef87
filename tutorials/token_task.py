"""A token task whose rule is known, and a small transformer that learns it.

Every sequence has ``length`` tokens: exactly one *marker* token, at a random
position, and distractor tokens everywhere else. The class is decided by which
marker it is and where it stands: ``(marker + position) mod classes``, with as
many classes as markers. The distractors carry no information. So the truth an
explanation can be checked against is known for every example: the marker is
the one token that matters.

Why the position: with the class fixed by the marker alone, the mean of the
token embeddings already separates the classes linearly, the transformer's
MLPs are not needed (zeroing every MLP neuron kept 100 % accuracy when we
tried), and a test of which MLP neurons matter could not fail. With the
position in the rule the model must combine the marker with where it stands:
its first MLP takes part in that (zeroing it costs about 20 points of test
accuracy in the notebook), attention and the layer norms do the rest.

Token ids: ``0`` is a *blank* token that never occurs in the data; its
embedding is fixed at zero (``padding_idx``), so its ids are the zero-embedding
baseline of Integrated Gradients and of switched projections from a baseline.
``1 .. markers`` are the markers, the rest the distractors.

The model (:class:`TokenTransformer`) is a pre-norm transformer: token and
positional embeddings, blocks of self-attention and a ReLU MLP, each added to
the residual stream, a final layer norm, the mean over the tokens and a linear
head. It takes token ids ``(N, T)`` and returns logits ``(N, classes)``. It
trains in seconds on a CPU. ``forward(ids, mask)`` takes ids padded with the
blank token and their mask (1 = real token), and leaves the pads out: the
logits are those of the unpadded sequence, as with a tokenizer's
``attention_mask``.

Nothing is downloaded: the notebook generates the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

BLANK = 0  # never in the data; a zero embedding, the baseline of IG


@dataclass(frozen=True)
class TokenTask:
    """The task's sizes: ``markers`` marker tokens (and as many classes),
    ``distractors`` other tokens, ``length`` tokens per sequence.

    The rule: a sequence whose marker is number ``m`` (0 .. markers - 1), at
    position ``p``, has class ``(m + p) % markers``.
    """

    markers: int = 4
    distractors: int = 12
    length: int = 10

    @property
    def classes(self) -> int:
        return self.markers

    @property
    def vocabulary(self) -> int:
        """Every token id: the blank, the markers and the distractors."""
        return 1 + self.markers + self.distractors

    def rule(self, ids: Tensor) -> Tensor:
        """The class of each sequence of ``ids`` ``(N, T)`` by the task's rule, read
        from the tokens alone. Raises unless every sequence has exactly one marker."""
        is_marker = (ids >= 1) & (ids <= self.markers)
        counts = is_marker.sum(1)
        if not bool((counts == 1).all()):
            raise ValueError(f"every sequence needs exactly one marker, found {counts.tolist()}")
        position = is_marker.int().argmax(1)
        marker = ids.gather(1, position[:, None])[:, 0] - 1
        return (marker + position) % self.classes


@dataclass(frozen=True)
class Sizes:
    """How much the notebook trains and explains: sequences, epochs, seeds, and the
    SSA relevance functions compared."""

    train: int
    test: int
    epochs: int
    seeds: tuple[int, ...]
    relevances: tuple[str, ...]


# fast mode (CI) trains one model in about a second, full mode five in about ten seconds (on one
# CPU thread); both reach 98-100 % test accuracy
FAST_SIZES = Sizes(train=2000, test=200, epochs=8, seeds=(0,), relevances=("gradient",))
FULL_SIZES = Sizes(
    train=4000,
    test=1000,
    epochs=8,
    seeds=(0, 1, 2, 3, 4),
    relevances=("gradient", "gradient_x_activation", "activation"),
)


@dataclass
class TokenSplit:
    """Sequences with their labels and where their marker is."""

    ids: Tensor  # (N, T) int64
    labels: Tensor  # (N,) the marker's class
    positions: Tensor  # (N,) where the marker stands


@dataclass
class TokenData:
    task: TokenTask
    train: TokenSplit
    test: TokenSplit


def generate(task: TokenTask, size: int, seed: int) -> TokenSplit:
    """``size`` sequences of ``task``: the marker and its position uniform and
    independent (so the classes are equally likely), uniform distractors elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    first_distractor = 1 + task.markers
    ids = torch.randint(first_distractor, task.vocabulary, (size, task.length), generator=generator)
    positions = torch.randint(0, task.length, (size,), generator=generator)
    markers = torch.randint(0, task.markers, (size,), generator=generator)
    ids[torch.arange(size), positions] = 1 + markers
    return TokenSplit(ids, (markers + positions) % task.classes, positions)


def make_data(task: TokenTask, train: int, test: int, seed: int = 0) -> TokenData:
    """A training and a test split drawn with different seeds."""
    return TokenData(task, generate(task, train, seed), generate(task, test, seed + 1))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (softmax of scaled dot products), so
    every step is an ordinary module or tensor operation the methods can trace."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.query_key_value = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``x`` ``(N, T, width)``; ``mask`` ``(N, T)``, 1 at a real token: a pad is no key."""
        batch, length, width = x.shape
        per_head = width // self.heads
        query, key, value = (
            part.reshape(batch, length, self.heads, per_head).transpose(1, 2)
            for part in self.query_key_value(x).chunk(3, dim=-1)
        )
        scores = query @ key.transpose(-2, -1) / math.sqrt(per_head)
        if mask is not None:
            # -inf: a pad's softmax weight is exactly 0, so the real tokens attend as unpadded
            keys = mask.bool()[:, None, None, :]
            scores = scores.masked_fill(~keys, float("-inf"))
        weights = scores.softmax(-1)
        mixed = (weights @ value).transpose(1, 2).reshape(batch, length, width)
        return self.out(mixed)


class MLP(nn.Module):
    """``fc1 -> relu -> fc2`` on every token; ``relu``'s output ``(N, T, hidden)`` holds
    the block's MLP neurons."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, width: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), mask)
        return x + self.mlp(self.mlp_norm(x))


class TokenTransformer(nn.Module):
    """Token ids ``(N, T)`` -> token + positional embeddings -> blocks -> layer norm ->
    mean over the tokens -> linear head -> logits ``(N, classes)``.

    ``forward(ids, mask=None)``: with a mask of padded ids the logits equal the
    unpadded sequence's; without one it computes what it was trained as."""

    def __init__(
        self,
        task: TokenTask,
        width: int = 16,
        hidden: int = 32,
        heads: int = 2,
        blocks: int = 2,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(task.vocabulary, width, padding_idx=BLANK)
        self.position_embedding = nn.Embedding(task.length, width)
        self.blocks = nn.ModuleList(Block(width, hidden, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, task.classes)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Logits ``(N, classes)`` of token ids ``(N, T)``.

        ``mask`` ``(N, T)`` (a tokenizer's ``attention_mask``: 1 at a real token,
        0 at a pad) makes the pads invisible: a real token's position counts the
        real tokens before it (left and right padding agree), attention gives a pad
        no weight, and the mean pools the real tokens only; the logits are those of
        the unpadded sequence. Without a mask every token is real: the model is the
        one trained, and a pad is an ordinary token; positions past the ``length``
        it was trained on (only a padded sequence without its mask is longer) reuse
        the last position's embedding.
        """
        if mask is None:
            last = self.position_embedding.num_embeddings - 1
            positions = torch.arange(ids.shape[1], device=ids.device).clamp(max=last)
        else:
            real = mask.bool()
            # a pad takes position 0 or the last real token's: it is masked everywhere below
            positions = (real.long().cumsum(1) - 1).clamp(min=0)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if mask is None:
            return self.head(x.mean(1))
        weights = real[:, :, None].to(x.dtype)
        return self.head((x * weights).sum(1) / weights.sum(1))

    def mlp_layers(self) -> list[nn.Module]:
        """Each block's MLP ReLU, lowest first: the neurons SSA's graph is made of."""
        return [block.mlp.relu for block in self.blocks]  # type: ignore[union-attr]

    def mlp_pre_activations(self) -> list[nn.Module]:
        """Each block's ``fc1``, whose outputs are the pre-activations Insens reads."""
        return [block.mlp.fc1 for block in self.blocks]  # type: ignore[union-attr]


def train_transformer(
    data: TokenData,
    epochs: int,
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    **sizes: int,
) -> TokenTransformer:
    """Train with Adam on mini-batches of the training split; returns the model in
    eval mode, gradients cleared. ``sizes``: :class:`TokenTransformer`'s width,
    hidden, heads and blocks."""
    torch.manual_seed(seed)
    model = TokenTransformer(data.task, **sizes)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    ids, labels = data.train.ids, data.train.labels
    for _ in range(epochs):
        for batch in torch.randperm(len(ids)).split(batch_size):
            optimiser.zero_grad()
            loss_fn(model(ids[batch]), labels[batch]).backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model: nn.Module, ids: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(ids).argmax(1) == labels).float().mean().item()


def token_scores(attribution: Tensor, reduction: str = "sum") -> Tensor:
    """One score per token from an attribution shaped like the embeddings ``(N, T, D)``:
    ``"sum"`` is ``|sum over D|`` (the usual token attribution, its size), ``"norm"``
    the Euclidean norm over D."""
    attribution = attribution.detach()
    if reduction == "sum":
        return attribution.sum(-1).abs()
    if reduction == "norm":
        return attribution.norm(dim=-1)
    raise ValueError(f"reduction must be 'sum' or 'norm', got {reduction!r}")


def marker_ranks(scores: Tensor, positions: Tensor) -> Tensor:
    """The rank of each example's marker among its tokens, ``(N,)``: how many *other*
    tokens score at least as high (0: the marker alone on top). Ties count against
    the marker, so a constant map never ranks it first."""
    marker_scores = scores.gather(1, positions[:, None])
    at_least = (scores >= marker_scores).sum(1)
    return at_least - 1  # the marker itself is counted once


def top_rate(ranks: Tensor) -> float:
    """The fraction of examples whose marker ranks first."""
    return (ranks == 0).float().mean().item()


@contextmanager
def keeping(model: nn.Module, kept: Mapping[nn.Module, Tensor]) -> Iterator[nn.Module]:
    """Run ``model`` with the neurons (last dim) of each layer in ``kept`` that are
    not listed set to zero, by forward hooks removed on leaving. ``kept`` maps a
    module to the indices of the neurons it keeps."""
    handles = []
    try:
        for module, indices in kept.items():
            handles.append(module.register_forward_hook(_zeroing_hook(indices)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _zeroing_hook(indices: Tensor) -> Callable[[nn.Module, Any, Tensor], Tensor]:
    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        keep = torch.zeros(output.shape[-1], dtype=torch.bool, device=output.device)
        keep[indices] = True
        return output * keep

    return hook


def random_neurons(size: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` of ``size`` neuron indices drawn without replacement, sorted."""
    return torch.randperm(size, generator=generator)[:count].sort().values
