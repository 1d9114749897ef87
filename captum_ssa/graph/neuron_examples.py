"""What each neuron of a dependency graph responds to: its top-activating examples
and, for images, its switched weights on the top one.

:func:`neuron_examples` reads the examples in one streamed pass (hooks on all
the graph's hidden layers at once, a running top-k per neuron merged batch by
batch, so memory does not grow with the number of examples), then projects each
neuron on its top example with
:class:`~captum_ssa.SwitchedLinearProjection`, in chunks of neurons sized by the
memory budget. The result is plain JSON for the interactive page
(:mod:`~captum_ssa.graph.view`).
"""

from __future__ import annotations

import base64
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils._compat import progress
from captum_ssa._utils.batches import Batch, stream
from captum_ssa._utils.hooks import model_of, neuron_axis, run_and_capture, spatial_mean
from captum_ssa._utils.linearity import NotPiecewiseLinearWarning
from captum_ssa._utils.memory_budget import SavedTensorBytes, rows_within_budget
from captum_ssa._utils.model_output import ExplainedForward
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.validation import positive_int
from captum_ssa.graph.masking import graph_modules

if TYPE_CHECKING:
    from captum_ssa.graph.model import GraphData

# Thumbnails are at most this many pixels on their longer side (larger images are
# averaged down), and smaller images are enlarged by a whole factor, each pixel a
# block, to at least the smaller size: an 8x8 digit is a 32x32 PNG the page shows sharp.
THUMBNAIL_LARGEST = 64
THUMBNAIL_SMALLEST = 32
# the switched weights' colours: blue negative, white zero, red positive
PATTERN_COLORMAP = "RdBu_r"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

IMAGE, TEXT, VALUES = "image", "text", "values"

__all__ = ["neuron_examples"]


def input_kind(inputs: Tensor) -> Optional[str]:
    """How an example of ``inputs`` (a batch) is shown: ``"image"`` for floating-point
    ``(N, C, H, W)`` with 1 or 3 channels, ``"text"`` for integer ``(N, T)`` token
    ids, ``"values"`` for floating-point ``(N, F)`` features, else None."""
    if inputs.is_floating_point():
        if inputs.dim() == 4 and inputs.shape[1] in (1, 3):
            return IMAGE
        return VALUES if inputs.dim() == 2 else None
    if inputs.dtype != torch.bool and inputs.dim() == 2:
        return TEXT
    return None


@dataclass
class RunningTop:
    """The ``top`` largest activities of a layer's kept neurons over the examples seen,
    with the examples' indices, sorted by activity (descending; ties by index)."""

    name: str
    neurons: Tensor  # (K,), the kept neuron indices
    values: Tensor = field(default_factory=lambda: torch.empty(0, 0))  # (K, top)
    indices: Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.long))

    def merge(self, activity: Tensor, start: int, top: int) -> None:
        """Take in the activities ``(B, all neurons)`` of examples ``start, start + 1, ...``."""
        batch = activity.shape[0]
        values = activity[:, self.neurons.to(activity.device)].T.float()
        indices = torch.arange(start, start + batch, device=activity.device).expand_as(values)
        if self.values.numel():
            values = torch.cat([self.values, values], 1)
            indices = torch.cat([self.indices, indices], 1)
        # stable: the examples kept so far come first and have the lower indices,
        # so a tie keeps the earlier example, as a plain sort of all examples would
        order = values.sort(dim=1, descending=True, stable=True).indices[:, :top]
        self.values, self.indices = values.gather(1, order), indices.gather(1, order)


@dataclass
class Found:
    """What the pass found: the running tops of every hidden layer, how examples are
    shown, their previews (thumbnails, token ids or features, by example index) and,
    for images, each neuron's switched weights on its top example summed over the
    channels ``(H, W)``, by ``"layer:neuron"`` (None where the network is not
    piecewise linear)."""

    tops: list[RunningTop]
    kind: Optional[str]
    previews: dict[int, Tensor]
    patterns: dict[str, Optional[Tensor]]


def forward_func_of(graph: GraphData, forward_func: Optional[Callable[..., Any]]) -> Any:
    """``forward_func``, else the graph's own, else a clear error."""
    if forward_func is not None:
        return forward_func
    if graph.forward_func is not None:
        return graph.forward_func
    raise ValueError(
        "neuron_examples needs the model: this graph does not know the forward function "
        "it was built from (a graph read from a file, or built by hand, keeps none); pass "
        "forward_func=model, whose layers are then found by the graph's layer names"
    )


def graph_layers(graph: GraphData, forward_func: Callable[..., Any]) -> list[Module]:
    """The graph's layers in the model behind ``forward_func`` (by name where the graph
    has no modules), or the graph's own modules for a callable that is not a module."""
    if model_of(forward_func) is not None:
        return graph_modules(graph, forward_func)
    if graph.layers is None:
        raise ValueError(
            "this graph was read from a file and knows its layers only by name, and "
            f"forward_func ({type(forward_func).__name__}) is not a torch.nn.Module nor "
            "a bound method of one, so they cannot be found: pass the model as forward_func"
        )
    return graph.layers


def thumbnail_pixels(images: Tensor) -> Tensor:
    """Images ``(N, C, H, W)`` averaged down to at most :data:`THUMBNAIL_LARGEST`
    pixels on the longer side (float, on the CPU)."""
    images = images.detach().float()
    height, width = images.shape[-2:]
    scale = THUMBNAIL_LARGEST / max(height, width)
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        images = F.adaptive_avg_pool2d(images, size)
    return images.cpu()


def previews_of(kind: Optional[str], inputs: Tensor) -> Optional[Tensor]:
    """What each example of the batch ``inputs`` is shown from, on the CPU."""
    if kind == IMAGE:
        return thumbnail_pixels(inputs)
    if kind in (TEXT, VALUES):
        return inputs.detach().cpu()
    return None


def enlarged(pixels: Tensor) -> Tensor:
    """``(H, W, ...)`` pixels with each pixel a block, up to :data:`THUMBNAIL_SMALLEST`."""
    factor = math.ceil(THUMBNAIL_SMALLEST / max(pixels.shape[0], pixels.shape[1]))
    if factor <= 1:
        return pixels
    return pixels.repeat_interleave(factor, 0).repeat_interleave(factor, 1)


def png_data_uri(pixels: Tensor) -> str:
    """An 8-bit PNG of ``pixels`` (``(H, W)`` grey or ``(H, W, 3)`` RGB, uint8) as a
    ``data:`` URI, written with the standard library."""
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.dim() == 2 else 2
    rows = pixels.contiguous().numpy().reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    png = (
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_uri(image: Tensor) -> str:
    """One thumbnail ``(C, H, W)``, min-max scaled on its own, as a PNG ``data:`` URI."""
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) if high > low else torch.zeros_like(image)
    pixels = (scaled * 255).round().to(torch.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)
    return png_data_uri(enlarged(pixels))


def pattern_uri(pattern: Tensor) -> str:
    """Switched weights summed over channels ``(H, W)`` in a diverging colormap
    symmetric around 0 (white), as a PNG ``data:`` URI."""
    from matplotlib import colormaps

    pattern = thumbnail_pixels(pattern[None, None])[0, 0]
    largest = float(pattern.abs().max())
    scaled = 0.5 + 0.5 * pattern / largest if largest > 0 else torch.full_like(pattern, 0.5)
    rgba = colormaps[PATTERN_COLORMAP](scaled.numpy(), bytes=True)
    return png_data_uri(enlarged(torch.from_numpy(rgba[..., :3].copy())))


def text_of(ids: Tensor, decode: Optional[Callable[[list[int]], str]]) -> str:
    tokens = [int(i) for i in ids.tolist()]
    return decode(tokens) if decode is not None else " ".join(map(str, tokens))


def rounded(values: Tensor) -> list[float]:
    """Feature values to 4 significant digits."""
    return [float(f"{value:.4g}") for value in values.double().tolist()]


def example_view(
    kind: Optional[str], preview: Optional[Tensor], decode: Optional[Callable[[list[int]], str]]
) -> dict[str, Any]:
    """An example's ``"image"``, ``"text"`` and ``"values"``, the one its kind has set."""
    view: dict[str, Any] = {IMAGE: None, TEXT: None, VALUES: None}
    if preview is not None and kind == IMAGE:
        view[IMAGE] = image_uri(preview)
    elif preview is not None and kind == TEXT:
        view[TEXT] = text_of(preview, decode)
    elif preview is not None and kind == VALUES:
        view[VALUES] = rounded(preview)
    return view


def neuron_selector(neurons: Tensor, neuron_dim: Optional[int]) -> Callable[[Tensor], Tensor]:
    """For SLP: example ``r``'s activity of neuron ``neurons[r]`` (the spatial mean)."""

    def select(output: Tensor) -> Tensor:
        axis = neuron_axis(neuron_dim, output.dim())
        activity = spatial_mean(output.movedim(axis, 1))
        rows = torch.arange(len(neurons), device=activity.device)
        return activity[rows, neurons.to(activity.device)]

    return select


def layer_patterns(
    forward_func: Callable[..., Any],
    layer: Module,
    neurons: Tensor,
    examples: list[tuple[Tensor, ...]],
    device: torch.device,
    neuron_dim: Optional[int] = None,
    additional_forward_args: Any = None,
) -> Optional[Tensor]:
    """The switched weights of ``neurons[r]`` of ``layer`` on ``examples[r]`` (the
    inputs of one example), on the first input, summed over its channels:
    ``(len(neurons), H, W)``; None where the network is not piecewise linear
    between the inputs and the layer.

    The first neuron is projected alone and the bytes autograd saved for it size
    the chunks of the others within the memory budget; each chunk's examples are
    stacked and moved to ``device`` when it runs.
    """
    from captum_ssa._core.switched_linear_projection import SwitchedLinearProjection

    projection = SwitchedLinearProjection(forward_func, layer)
    parts, position, chunk = [], 0, 1
    with warnings.catch_warnings():
        # only exact projections are shown: the warning is the answer, not a note
        warnings.simplefilter("error", NotPiecewiseLinearWarning)
        while position < len(neurons):
            rows = slice(position, position + chunk)
            inputs = tuple(
                torch.stack([example[part] for example in examples[rows]]).to(device)
                for part in range(len(examples[0]))
            )
            with SavedTensorBytes() as saved:
                try:
                    weights = projection.attribute(
                        inputs if len(inputs) > 1 else inputs[0],
                        neuron_selector=neuron_selector(neurons[rows], neuron_dim),
                        additional_forward_args=additional_forward_args,
                    )
                except NotPiecewiseLinearWarning:
                    return None
            first = weights[0] if isinstance(weights, tuple) else weights
            parts.append(first.detach().sum(1).cpu())
            if position == 0:
                row_bytes = saved.total + 2 * sum(t[:1].numel() * t.element_size() for t in inputs)
                chunk = rows_within_budget(row_bytes)
            position += len(parts[-1])
    return torch.cat(parts)


def find(
    graph: GraphData,
    examples: Any,
    forward_func: Optional[Callable[..., Any]] = None,
    additional_forward_args: Any = None,
    top: int = 6,
    show_progress: bool = False,
    neurons: Optional[list[Tensor]] = None,
) -> Found:
    """:func:`neuron_examples` before encoding: the tensors it shows; of ``neurons``
    (one tensor per layer but the top one) instead of the graph's kept neurons."""
    top_count = positive_int("top", top, optional=False)
    assert top_count is not None
    forward_func = forward_func_of(graph, forward_func)
    layers = graph_layers(graph, forward_func)[:-1]
    names, sizes = graph.layer_names[:-1], graph.layer_sizes[:-1]
    neuron_dim = graph.metadata.get("neuron_dim")
    if neurons is None:
        neurons = [graph.neurons(name) for name in names]
    tops = [RunningTop(name, kept) for name, kept in zip(names, neurons)]
    previews: dict[int, Tensor] = {}
    firsts: dict[int, tuple[Tensor, ...]] = {}  # the top examples' inputs, for patterns
    kind: Optional[str] = None
    device = torch.device("cpu")  # the inputs', where the patterns' projections run
    start = 0
    if not layers:
        return Found(tops, kind, previews, {})
    runner = ExplainedForward(forward_func)
    with untouched_model(runner):
        for batch in stream(examples, "examples", show_progress, "Neuron examples"):
            if start == 0:
                kind, device = input_kind(batch.inputs[0]), batch.inputs[0].device
            check_unmasked(batch)
            with torch.no_grad():
                _, outputs = run_and_capture(
                    runner, batch.inputs, layers, additional_forward_args, neuron_dim=neuron_dim
                )
            for running, output, size in zip(tops, outputs, sizes):
                if output.shape[1] != size:
                    raise ValueError(
                        f"layer {running.name!r} of the graph has {size} neurons, but its "
                        f"output in this model is {tuple(output.shape)} with the neurons "
                        "moved to dim 1; was the graph built on another model?"
                    )
                running.merge(spatial_mean(output), start, top_count)
            keep_candidates(tops, batch, start, kind, previews, firsts)
            start += batch.size
        patterns: dict[str, Optional[Tensor]] = {}
        if kind == IMAGE:
            patterns = find_patterns(
                forward_func,
                layers,
                tops,
                firsts,
                device,
                neuron_dim,
                additional_forward_args,
                show_progress,
            )
    return Found(tops, kind, previews, patterns)


def check_unmasked(batch: Batch) -> None:
    if batch.mask is not None:
        raise ValueError(
            "neuron_examples does not take masks: a batch of examples carries one, and "
            "the activities would have to leave its pads out. Pass unpadded examples "
            "(or batches of equal length without a mask)"
        )


def keep_candidates(
    tops: list[RunningTop],
    batch: Batch,
    start: int,
    kind: Optional[str],
    previews: dict[int, Tensor],
    firsts: dict[int, tuple[Tensor, ...]],
) -> None:
    """Keep what the examples now in some top list are shown from, and the inputs of
    those now first in some list (for their patterns); forget the others."""
    shown = previews_of(kind, batch.inputs[0])
    if shown is not None:
        listed = torch.cat([running.indices.flatten() for running in tops]).unique().cpu()
        for index in listed[listed >= start].tolist():
            previews[index] = shown[index - start]
        for index in set(previews) - set(listed.tolist()):
            del previews[index]
    if kind != IMAGE:
        return
    leading = [running.indices[:, 0] for running in tops if running.indices.numel()]
    if not leading:
        return
    first = torch.cat(leading).unique().cpu()
    for index in first[first >= start].tolist():
        firsts[index] = tuple(tensor[index - start].detach().cpu() for tensor in batch.inputs)
    for index in set(firsts) - set(first.tolist()):
        del firsts[index]


def find_patterns(
    forward_func: Callable[..., Any],
    layers: list[Module],
    tops: list[RunningTop],
    firsts: dict[int, tuple[Tensor, ...]],
    device: torch.device,
    neuron_dim: Optional[int],
    additional_forward_args: Any,
    show_progress: bool,
) -> dict[str, Optional[Tensor]]:
    """Each kept neuron's switched weights on its top example (see :func:`layer_patterns`),
    the examples' inputs moved back to ``device``."""
    patterns: dict[str, Optional[Tensor]] = {}
    for layer, running in progress(
        list(zip(layers, tops)), desc="Neuron patterns", disable=not show_progress
    ):
        if not running.indices.numel():
            continue
        examples = [firsts[index] for index in running.indices[:, 0].tolist()]
        found = layer_patterns(
            forward_func,
            layer,
            running.neurons,
            examples,
            device,
            neuron_dim,
            additional_forward_args,
        )
        for row, neuron in enumerate(running.neurons.tolist()):
            patterns[f"{running.name}:{neuron}"] = None if found is None else found[row]
    return patterns


def neuron_examples(
    graph: GraphData,
    examples: Any,
    forward_func: Optional[Callable[..., Any]] = None,
    additional_forward_args: Any = None,
    top: int = 6,
    decode: Optional[Callable[[list[int]], str]] = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    r"""
    What each kept neuron of a dependency graph responds to: the examples that
    activate it most, and for images its switched-weights pattern, as JSON for
    the interactive page.

    A neuron's activity on an example is the one step-wise sensitivity analysis
    reads: the mean of the layer's output over every position of the neuron
    (a Linear unit's value, a conv channel's spatial mean), along the graph's
    neuron axis (dim 1, or ``metadata["neuron_dim"]``). Every kept neuron of
    every layer but the top one gets its ``top`` examples by activity. The
    examples are read once, in one forward pass per batch without gradients,
    with hooks on all the layers at once and a running top-k per neuron, so
    memory does not grow with the number of examples (what it keeps is the
    previews of the examples now in some list, and for images the inputs of
    those first in some list).

    For image inputs, a neuron's *pattern* is the
    :class:`~captum_ssa.SwitchedLinearProjection` weights :math:`w` of its
    activity on its top example (the activity written as :math:`w \cdot x + b`;
    for a ReLU network the gradient of the activity), summed over the channels
    and shown in a diverging colormap symmetric around 0 (red positive, blue
    negative). Neurons are projected in chunks within the memory budget
    (:func:`~captum_ssa.set_memory_budget`). Where the network is not piecewise
    linear between the inputs and a layer, the projection would only be a local
    linearisation: that layer's patterns are None. For a model with several
    inputs the thumbnails and patterns are of the first input. Thumbnails and
    patterns are at most 64 pixels on the longer side (averaged down), and
    smaller ones enlarged by a whole factor to at least 32, each pixel a block.

    Masks (padded token sequences) are not supported: a batch that carries one
    is an error. The model is left as it was (training flags, hooks, gradients).

    Args:
        graph (DependencyGraph): The graph, e.g. from
                    :class:`~captum_ssa.StepwiseSensitivity`.
        examples (Tensor, tuple, or iterable of batches): The examples
                    to rank, as SSA accepts data: a tensor (or tuple of
                    tensors for a multi-input model), or a stream of
                    batches such as a ``DataLoader`` (each a tensor, an
                    ``(inputs, labels)`` pair, or a dict batch). An
                    example's index counts over the whole stream. How an
                    example is shown is decided by the first input of the
                    first batch: floating-point ``(N, C, H, W)`` with
                    ``C`` 1 or 3 as images, integer ``(N, T)`` as token
                    ids, floating-point ``(N, F)`` as feature values.
        forward_func (Callable, optional): The model. Default: the one the
                    graph was built from (``graph.forward_func``, which
                    :class:`~captum_ssa.StepwiseSensitivity` records); a
                    graph read from a file has none, and its layers are
                    found by name in this model, as
                    :meth:`~captum_ssa.graph.DependencyGraph.mask` finds
                    them.
        additional_forward_args (Any, optional): Passed to the model after
                    the inputs, the same for every batch (and for the
                    patterns' chunks of top examples), so they must not
                    depend on the batch. Default: None
        top (int, optional): How many examples per neuron. Default: 6
        decode (Callable, optional): For token ids: ``list of ids -> str``
                    (e.g. a tokenizer's ``decode``). Default: the ids
                    joined by spaces.
        show_progress (bool, optional): Show progress bars over the
                    batches and the layers' patterns. Default: False

    Returns:
        *dict* keyed by ``"<layer name>:<neuron index>"`` for every kept
        neuron of every layer but the top one, each value
        ``{"top": [...], "pattern": str or None}``: ``"top"`` lists at
        most ``top`` dicts, highest activation first (ties by example
        index), each with ``"example"`` (int, the index in
        ``examples``), ``"activation"`` (float), ``"image"`` (a PNG
        thumbnail, min-max scaled on its own, as a ``data:image/png``
        URI, or None), ``"text"`` (str or None) and ``"values"`` (the
        features to 4 significant digits, or None); ``"pattern"`` is a
        PNG ``data:`` URI, or None where the inputs are not images or
        the network is not piecewise linear.

    Examples::

        >>> graph = StepwiseSensitivity(net, [net.conv1, net.fc1, net.fc2]).attribute(
        ...     x_of_class_3, target=3)
        >>> shown = neuron_examples(graph, loader)     # a DataLoader of (x, y)
        >>> shown["fc1:5"]["top"][0]["example"]        # fc1 unit 5's strongest example
        >>> loaded = DependencyGraph.load("class3.json")
        >>> shown = neuron_examples(loaded, x, forward_func=net, top=4)
    """
    found = find(graph, examples, forward_func, additional_forward_args, top, show_progress)
    return encoded(found, decode)


def neuron_examples_of_graphs(
    graphs: list[GraphData],
    examples: Any,
    forward_func: Optional[Callable[..., Any]] = None,
    additional_forward_args: Any = None,
) -> list[dict[str, Any]]:
    """:func:`neuron_examples` of each of ``graphs`` (e.g. a page's class graphs and
    their shared subgraph), in one pass over ``examples`` for all the graphs of one
    model over the same layers: a neuron's examples do not depend on the graph."""
    models = [forward_func_of(graph, forward_func) for graph in graphs]
    first = graphs[0]
    alike = all(
        model is models[0]
        and graph.layer_names == first.layer_names
        and graph.metadata.get("neuron_dim") == first.metadata.get("neuron_dim")
        for graph, model in zip(graphs, models)
    )
    if not alike:
        return [
            neuron_examples(graph, examples, forward_func, additional_forward_args)
            for graph in graphs
        ]
    union = [
        torch.cat([graph.neurons(name) for graph in graphs]).unique()
        for name in first.layer_names[:-1]
    ]
    found = find(first, examples, models[0], additional_forward_args, neurons=union)
    everything = encoded(found, None)
    return [
        {
            f"{name}:{neuron}": everything[f"{name}:{neuron}"]
            for name in graph.layer_names[:-1]
            for neuron in graph.neurons(name).tolist()
        }
        for graph in graphs
    ]


def encoded(found: Found, decode: Optional[Callable[[list[int]], str]]) -> dict[str, Any]:
    """The JSON of :func:`neuron_examples` from what :func:`find` found."""
    shown: dict[int, dict[str, Any]] = {}

    def show(index: int) -> dict[str, Any]:
        if index not in shown:
            shown[index] = example_view(found.kind, found.previews.get(index), decode)
        return shown[index]

    result: dict[str, Any] = {}
    for running in found.tops:
        values, indices = running.values.cpu(), running.indices.cpu()
        for row, neuron in enumerate(running.neurons.tolist()):
            key = f"{running.name}:{neuron}"
            entries = []
            if values.numel():
                for value, index in zip(values[row].tolist(), indices[row].tolist()):
                    entries.append({"example": index, "activation": float(value), **show(index)})
            pattern = found.patterns.get(key)
            result[key] = {
                "top": entries,
                "pattern": None if pattern is None else pattern_uri(pattern),
            }
    return result
