"""One call of :class:`StepwiseSensitivity`, from its options to its graphs.

:func:`build_ssa_graphs` is what ``attribute`` and ``class_graphs`` (over a
stream) run: it checks the options (``ssa_arguments``), runs the passes over
the data (``ssa_passes``) with the first-pass setup (``ssa_first_pass``), and
turns each finished state into a :class:`DependencyGraph`. Kept out of the
public module, which holds the API and its documentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from captum_ssa._utils.batches import Batch, is_batch_stream
from captum_ssa._utils.hooks import model_of
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.ssa_arguments import make_setting, resolve_options
from captum_ssa._utils.ssa_checks import NeuronSet, Target
from captum_ssa._utils.ssa_first_pass import check_first_pass, graph_starts
from captum_ssa._utils.ssa_passes import GraphState, Start, build_graphs
from captum_ssa._utils.ssa_streaming import Capture, Setting
from captum_ssa._utils.validation import prepare_inputs
from captum_ssa._utils.warn import warn
from captum_ssa.graph import DependencyGraph

if TYPE_CHECKING:
    from captum_ssa._core.stepwise_sensitivity import StepwiseSensitivity


def build_ssa_graphs(
    explainer: StepwiseSensitivity,
    inputs: Any,
    target: Optional[Union[Target, str]] = None,
    additional_forward_args: Any = None,
    relevance: Any = "gradient",
    absolute: bool = True,
    aggregation: str = "mean",
    mode: str = "global",
    percentile: float = 50,
    branching: Optional[int] = None,
    max_neurons: Optional[int] = None,
    top_neurons: Optional[NeuronSet] = None,
    upper_neurons_per_chunk: Optional[int] = None,
    show_progress: bool = False,
    passes: str = "auto",
    classes: Optional[list[int]] = None,
    every_class: bool = False,
) -> list[DependencyGraph]:
    """The graphs of :meth:`attribute` (one) or of :meth:`class_graphs` over a
    stream (one per class of ``classes``, or of every class when ``every_class``)."""
    stream = is_batch_stream(inputs)
    options = resolve_options(
        relevance,
        absolute,
        aggregation,
        mode,
        percentile,
        branching,
        max_neurons,
        upper_neurons_per_chunk,
        passes,
        target,
        stream,
    )
    data = inputs if stream else prepare_inputs(inputs)
    setting = make_setting(
        explainer.forward_func,
        explainer.layers,
        explainer.layer_names,
        explainer.neuron_dim,
        model_of(explainer.forward_func),
        additional_forward_args,
        options,
        absolute,
        aggregation,
    )

    def setup(capture: Capture, first: Batch) -> tuple[list[Start], Optional[Any]]:
        top_shape = check_first_pass(capture, setting)
        return graph_starts(
            capture, setting, top_shape, target, top_neurons, classes, every_class, stream
        )

    with untouched_model(explainer.forward_func):
        states = build_graphs(setting, data, setup, options.thresholds, passes, show_progress)
    metadata = {
        "method": type(explainer).__name__,
        "relevance": options.relevance_name,
        "absolute": absolute,
        "aggregation": aggregation,
        "mode": mode,
        "percentile": percentile,
        "branching": options.thresholds.branching,
        "max_neurons": options.thresholds.max_neurons,
        "neuron_dim": explainer.neuron_dim,
    }
    return [finished_graph(setting, state, metadata) for state in states]


def finished_graph(
    setting: Setting, state: GraphState, metadata: dict[str, Any]
) -> DependencyGraph:
    if state.empty:
        warn(
            f"no neuron of {state.empty[0]!r} is relevant: its relevance to the neurons "
            "kept above is zero everywhere, so the graph keeps no neuron there, nor in "
            "the layers below it. List layers that the kept neurons depend on, or pass "
            "branching to keep a number of neurons regardless.",
        )
    return DependencyGraph(
        setting.layer_names,
        setting.layers,
        state.neurons,
        state.relevances,
        state.matrices,
        state.edges,
        target=state.start.target,
        metadata={**metadata, "num_examples": state.examples},
    )
