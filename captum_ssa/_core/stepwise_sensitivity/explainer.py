"""The public class of step-wise sensitivity analysis, :class:`StepwiseSensitivity`.

Its calls check the options (``options.py``), read the data through one
``BatchStream``, run the passes (``passes.py``, which call the four Steps of
``steps.py``) and turn each finished state into a :class:`DependencyGraph`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union

from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.stepwise_sensitivity.network import Network
from captum_ssa._core.stepwise_sensitivity.options import Options
from captum_ssa._core.stepwise_sensitivity.passes import GraphState, build_graphs
from captum_ssa._core.stepwise_sensitivity.starts import (
    NeuronSet,
    StartRequest,
    Target,
    check_class_arguments,
    check_stream_labels,
    class_subsets,
    is_integer,
)
from captum_ssa._utils._compat import TensorOrTupleOfTensorsGeneric, _is_tuple
from captum_ssa._utils.batches import BatchStream, is_batch_stream
from captum_ssa._utils.hooks import (
    check_layers_in_model,
    model_of,
    unique_layer_names,
    user_model,
)
from captum_ssa._utils.model_output import OutputSelector, ReadsModelOutput, checked_output
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.no_convergence_delta import NoConvergenceDelta
from captum_ssa._utils.sequence_mask import checked_mask, warn_if_mask_in_forward_args
from captum_ssa._utils.validation import device_ids_checked, prepare_inputs
from captum_ssa._utils.warn import warn
from captum_ssa.graph import DependencyGraph


class StepwiseSensitivity(ReadsModelOutput, NoConvergenceDelta, Attribution):
    r"""
    Step-wise sensitivity analysis (SSA): the dependency graph of a decision.

    Starting from neurons of the top layer (e.g. the target class), SSA walks
    down an ordered list of layers. For each pair of consecutive layers it
    (I) scores how relevant every lower neuron is to each selected upper
    neuron on each example, by default
    :math:`\omega[n, i, k] = \mathrm{mean}_p |\partial a_n(x_i) / \partial a_{k,p}(x_i)|`;
    (II) aggregates over the examples (mean, or Tukey outlier frequency);
    (III) averages over the upper neurons; and (IV) keeps the relevant lower
    neurons, globally (above a percentile, or the top ``branching``) or
    locally (the top ``branching`` of each upper neuron). The kept neurons of
    every layer and the links between them form a :class:`DependencyGraph`.

    A neuron is one position along the neuron axis of a layer output, dim 1
    unless ``neuron_dim`` says otherwise: a Linear unit or a conv channel,
    whose activity is the mean of its map over the remaining axes. Layers
    between two listed layers (pooling, activations, residual paths) are
    differentiated through; each listed layer must be computed from the one
    listed below it.

    The result is a graph, not attributions shaped like a layer or the
    inputs, so this is a plain :class:`captum.attr.Attribution` (usable where
    Captum expects one) and not a ``LayerAttribution`` or
    ``GradientAttribution``: it promises neither layer-shaped tensors nor a
    convergence delta (``has_convergence_delta()`` is False, and
    ``compute_convergence_delta`` raises).

    Cost: one forward pass per call on one batch (per pair and batch over a
    stream, see ``passes``); for each layer pair one backward pass per
    selected upper neuron through the segment between the two layers only,
    seeded below the upper layer when it is a plain Linear/Conv. Every
    temporary is sized from one memory budget
    (:func:`captum_ssa.set_memory_budget`).

    Paper: Botty Dimanov and Mateja Jamnik, *Step-wise Sensitivity Analysis:
    Identifying Partially Distributed Representations for Interpretable Deep
    Learning*, 2018 (OpenReview SyeBqsRctm; no arXiv version). The four steps,
    the paper's strategies and our choices: ``docs/stepwise_sensitivity.md``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: list[Module],
        neuron_dim: Optional[int] = None,
        device_ids: Optional[list[int]] = None,
        output: OutputSelector = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or any function of the inputs
                        that runs it. A ``torch.compile``d model is explained
                        through its original module (``_orig_mod``, whose
                        modules the layers are), a
                        ``DistributedDataParallel`` through its ``module``.
            layers (list[torch.nn.Module]): The layers to analyse, in the
                        order the forward pass runs them, lowest first, each
                        computed from the one before (along one path of the
                        computation); the last is usually the logits layer. At
                        least two.
            neuron_dim (int, optional): The axis of every listed layer's
                        output that holds its neurons; the others are averaged
                        over. Use ``-1`` for the features of a token sequence
                        (N, T, F), e.g. the Linear, attention and LayerNorm
                        layers of a transformer; a 2-D output (N, C) has its
                        neurons along dim 1 = -1 either way. Default: None,
                        dim 1 (with a warning for 3-D outputs of layers that
                        are not convolutions, whose dim 1 is probably a
                        sequence axis; ``neuron_dim=1`` silences it).
            device_ids (list[int], optional): Captum's argument for the CUDA
                        devices of a ``DataParallel`` model, checked and stored
                        as ``self.device_ids``. A forward that runs the listed
                        layers in several replicas at once (two or more GPUs)
                        is refused: explain ``model.module``. Default: None
            output (str, int or Callable, optional): Which tensor of the
                        model's output ``target`` picks from, for a model that
                        returns a ``ModelOutput``, a dict, a tuple or a
                        namedtuple: a key or attribute name, an index, or a
                        callable ``raw_output -> tensor``. Default: None (a
                        tensor as it is, else its ``logits`` where it has
                        them; anything else is an error when ``target`` needs
                        the output, which lists what the model returns)
        """
        if not isinstance(layers, (list, tuple)) or len(layers) < 2:
            raise ValueError(
                "StepwiseSensitivity needs a list of at least two layers, lowest first"
            )
        if neuron_dim is not None and (not is_integer(neuron_dim) or neuron_dim == 0):
            raise ValueError(
                "neuron_dim must be None (dim 1) or a non-zero int naming the neuron axis of "
                f"the layer outputs (dim 0 is the batch), got {neuron_dim!r}"
            )
        layers = list(layers)
        check_layers_in_model(forward_func, layers)
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("a layer is listed twice; list each layer once")
        Attribution.__init__(self, forward_func)
        self.layers: list[Module] = layers
        self.layer_names = unique_layer_names(model_of(forward_func), layers)
        self.neuron_dim: Optional[int] = None if neuron_dim is None else int(neuron_dim)
        self.device_ids = device_ids_checked(device_ids)
        self.output = checked_output(output)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @log_usage()
    def attribute(
        self,
        inputs: Union[TensorOrTupleOfTensorsGeneric, Iterable[Any]],
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
        mask: Optional[Tensor] = None,
        upper_aggregation: str = "mean",
    ) -> DependencyGraph:
        r"""
        The dependency graph of the starting neurons over ``inputs``.

        Args:
            inputs (Tensor, tuple[Tensor, ...] or iterable of batches): The
                        examples the graph is built from; dimension 0 is the
                        batch. Or a stream of batches (a ``DataLoader``, a
                        list, any iterable), each a tensor, a tuple of tensors
                        in a list, or an ``(inputs, labels)`` pair: Step II
                        then sums over the batches, so the graph equals the
                        one-batch graph of their union (to float rounding)
                        with memory flat in the number of batches. Under
                        ``torch.distributed`` each rank passes its shard and
                        every rank gets the graph of all shards. A
                        class-specific graph uses the examples of one class
                        (see :meth:`class_graphs`). SSA takes no gradient with
                        respect to the inputs, so integer inputs such as token
                        ids are read as they are.
            target (int, tuple, list[int], Tensor or numpy.ndarray, optional):
                        Captum's target, for a top layer that is the model's
                        output (e.g. the logits): an int (one starting neuron,
                        for every example), or one int per example as a list,
                        1-D tensor or array with ``N`` entries (the starting
                        neurons are the distinct targets, and each aggregates
                        in Step II over the examples that name it). A 1-tuple
                        ``(k,)`` is neuron ``k`` of a 2-D output; other tuples,
                        which in Captum name one element of a multi-dimensional
                        output, are an error. For a set of neurons use
                        ``top_neurons``. Over a stream, ``"labels"`` takes
                        each example's target from its batch's labels (one
                        target per example otherwise cannot follow a
                        stream's batches). Default: None
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            relevance (str, Attribution or Callable, optional): Step I's
                        relevance function: ``"gradient"``, ``"activation"``,
                        ``"gradient_x_activation"``, ``"weight"`` or
                        ``"weight_activation"``; the paper's four strategies
                        ``"weight_abs"``, ``"activations_abs"``,
                        ``"weight_act_abs"`` and ``"gradients"`` (which of
                        the paper's table rows each reproduces, and where the
                        absolute value goes: docs/stepwise_sensitivity.md,
                        "Matching the paper's strategies"); a Captum layer
                        attribution class or instance (e.g.
                        :class:`captum.attr.LayerIntegratedGradients`, see
                        ``CaptumRelevance``); or a callable
                        ``(pair, upper_neurons, absolute) -> (M, N, K) tensor``
                        (see :class:`LayerPair`). The weight-based ones use
                        the one Linear/Conv between two listed layers, which
                        may be activation modules (a ReLU, or the pooling
                        after it, as the paper ranks activations) with only
                        element-wise operations, pooling and reshapes around
                        it; elsewhere they raise a ValueError. The two whose
                        absolute value comes after the mean over the data
                        (``"activations_abs"``, ``"weight_act_abs"``) need
                        ``aggregation="mean"``; the presets take no
                        ``absolute=False``. Default: ``"gradient"``
            absolute (bool, optional): Absolute relevances (taken before the
                        spatial mean); False gives the signed variants.
                        Default: True
            aggregation (str, optional): Step II: ``"mean"`` or ``"tukey"``.
                        Default: ``"mean"``
            mode (str, optional): ``"global"`` (one ranking per layer, edges
                        between all kept neurons of consecutive layers) or
                        ``"local"`` (each upper neuron keeps its own top
                        lower neurons; edges are those choices).
                        Default: ``"global"``
            percentile (float, optional): Step IV keeps neurons above this
                        percentile (of the relevance vector; in local mode of
                        each row) unless ``branching`` is given; 0 keeps every
                        neuron. A vector or row that is all zero keeps none
                        (a layer left empty warns, and the layers below it
                        are empty too). Default: 50
            branching (int, optional): Keep the top ``branching`` neurons (per
                        upper neuron in local mode) instead. Default: None
            max_neurons (int, optional): At most this many neurons per lower
                        layer (local mode: the most often chosen, then by
                        summed weight; global: by relevance). Default: None
            top_neurons (int or collection of ints, optional): A set of
                        starting neurons of the top layer, any layer (the
                        model's output included): an int, or a list, tuple,
                        set, 1-D tensor or array of neuron indices; every
                        example counts for each. Default: None; with neither
                        ``target`` nor ``top_neurons``, every neuron of the
                        top layer.
            upper_neurons_per_chunk (int, optional): Upper neurons whose
                        relevance rows (``N x K`` each) are computed and
                        aggregated together. Default: as many as fit, with
                        their seeds and gradients, in the memory budget
                        (:func:`captum_ssa.set_memory_budget`, 256 MiB by
                        default), which also bounds the examples of one
                        forward pass (a batch too large for one upper
                        neuron's gradients is split).
            show_progress (bool, optional): Show a progress bar over the
                        batches of each pass. Default: False
            passes (str, optional): ``"per_pair"``: one pass over the data
                        per layer pair, relevances only of the neurons kept
                        above; ``"single"``: one pass computing every pair for
                        every upper neuron, thresholded afterwards. The
                        default ``"auto"`` takes ``"per_pair"`` for the
                        gradient relevances (a backward pass per upper neuron
                        costs about a forward pass, so skipping the dropped
                        neurons saves more than the extra passes cost) and
                        ``"single"`` for the relevances without gradients
                        (activations, weights) and for one-shot iterators,
                        which can be read once. A single batch keeps its
                        forward pass between pairs either way.
                        Default: ``"auto"``
            mask (Tensor, optional): For token sequences: which positions are
                        real tokens, shaped ``(N, T)`` like the token ids,
                        e.g. the tokenizer's ``attention_mask`` (1 = real
                        token, 0 = pad; bool or integer). A neuron's activity
                        is then its mean over the example's real tokens only,
                        in the relevances and in the gradients between layers,
                        so pads enter no mean and no Step II aggregate: a
                        padded example with its mask gives the graph of the
                        unpadded one. It applies to the layers whose own
                        output is shaped ``(N, T, ...)`` (with ``neuron_dim``
                        elsewhere, e.g. ``-1``); a layer without that token
                        axis, such as the logits ``(N, C)`` or a pooled
                        ``(N, F)``, is unaffected. The model receives the mask
                        too, as its first additional forward argument:
                        ``forward_func(*inputs, mask, *additional_forward_args)``.
                        For a single batch only; a stream's batches carry
                        their own masks, as ``(inputs, labels, mask)`` or as
                        a dict ``{"input_ids": ..., "attention_mask": ...,
                        "labels": ...}``, and may then have different lengths.
                        Default: None (every position is a token)
            upper_aggregation (str, optional): Step III, how the upper
                        neurons' rows of the Step II matrix are combined into
                        one relevance per lower neuron. ``"mean"``, the
                        paper's rule: every kept upper neuron counts alike.
                        ``"relevance_weighted"``, an extension beyond the
                        paper: each row is weighted by its upper neuron's own
                        Step III relevance (1 for the starting neurons),
                        :math:`r_k = \sum_n r_n\, \omega[n, k] / \sum_n r_n`,
                        so the neurons kept at a threshold for little
                        relevance do not outvote the relevant ones below
                        them (on planted circuits it recovers planted neurons
                        that the mean loses in global mode: see
                        ``captum_ssa.evaluation.planted_network`` and
                        ``docs/stepwise_sensitivity.md``). It changes global
                        mode's selection and, in both modes, the nodes'
                        ``relevance``; local mode's choices read the matrix
                        rows and do not change. Recorded in
                        ``graph.metadata["upper_aggregation"]``.
                        Default: ``"mean"``

        Returns:
            *DependencyGraph* of the kept neurons of every layer (the top
            layer's are the starting neurons), the Step II matrices, the
            Step III relevance of every neuron, and the edges. Its ``target``
            is stored as an int when every example has the same class (an
            int target, or per-example targets or labels that are all one
            class: ``target=1`` and ``target=[1] * N`` give equal graphs),
            else as the sorted list of the distinct per-example classes;
            None with ``top_neurons`` or neither.

        Raises:
            ValueError: for a listed layer not computed from the one below it,
                        and for relevances that come out NaN or infinite
                        (overflow), naming the layer pair.

        Examples::

            >>> net = CifarNet().eval()
            >>> ssa = StepwiseSensitivity(net, [net.conv1, net.conv2, net.fc1,
            ...                                 net.fc2, net.fc3])
            >>> graph = ssa.attribute(x_cats, target=3)            # global, 50th pct
            >>> graph.neurons("fc2")
            >>> local = ssa.attribute(x_cats, target=3, mode="local",
            ...                       branching=8, max_neurons=8)
            >>> pets = ssa.attribute(x_pets, top_neurons=[3, 5])   # a set of classes
            >>> mixed = ssa.attribute(x, target=y)                 # one class per example
            >>> # token ids (N, T); each MLP's features are its neurons
            >>> ssa = StepwiseSensitivity(
            ...     model, [model.block1.fc1, model.block2.fc1, model.classifier], neuron_dim=-1)
            >>> graph = ssa.attribute(input_ids, target=1)
            >>> # padded ids: the model takes the mask after the ids, forward(ids, mask)
            >>> graph = ssa.attribute(batch["input_ids"], target=1,
            ...                       mask=batch["attention_mask"])
            >>> # beyond the paper: upper neurons weighted by their own relevance
            >>> weighted = ssa.attribute(x_cats, target=3,
            ...                          upper_aggregation="relevance_weighted")
        """
        options = Options.checked(
            relevance,
            absolute,
            aggregation,
            mode,
            percentile,
            branching,
            max_neurons,
            upper_neurons_per_chunk,
            show_progress,
            passes,
            upper_aggregation,
        )
        request = StartRequest(target=target, top_neurons=top_neurons)
        (graph,) = self._graphs(inputs, additional_forward_args, options, request, mask)
        return graph

    def class_graphs(
        self,
        inputs: Union[TensorOrTupleOfTensorsGeneric, Iterable[Any]],
        labels: Any = None,
        classes: Optional[Sequence[int]] = None,
        mask: Optional[Tensor] = None,
        **attribute_kwargs: Any,
    ) -> dict[int, DependencyGraph]:
        r"""
        One class-specific dependency graph per class.

        Each graph is :meth:`attribute` on that class's own examples with the
        class as an int ``target`` (the paper's class-specific graphs), so the
        top layer must be the model's output. Over a stream of
        ``(inputs, labels)`` batches (a ``DataLoader``) every class's graph is
        built in the same passes over the data, each from its class's
        examples.

        Args:
            inputs (Tensor, tuple[Tensor, ...] or iterable of batches):
                        Examples of all classes; dimension 0 is the batch. Or a
                        stream of ``(inputs, labels)`` batches, whose labels
                        are then the classes.
            labels (Tensor, numpy.ndarray or Sequence[int], optional): The
                        class of each example (true labels, or the model's
                        predictions), one per example; None (and only None)
                        for a stream.
            classes (Sequence[int], optional): The classes to build graphs
                        for. Default: every class present in the labels,
                        sorted.
            mask (Tensor, optional): The mask of tensor inputs, ``(N, T)``,
                        e.g. the tokenizer's ``attention_mask``: pads are left
                        out of every mean, and the model receives it as its
                        first additional forward argument (see
                        :meth:`attribute`). Over a stream the batches carry
                        their masks. Default: None
            **attribute_kwargs: Any other :meth:`attribute` argument
                        (``relevance``, ``mode``, ``branching``, ...);
                        ``additional_forward_args`` are passed unchanged, so
                        they must not depend on the batch.

        Returns:
            *dict[int, DependencyGraph]*: the graph of each class.

        Examples::

            >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y, [3, 5])
            >>> graphs[3].neurons("fc1")
            >>> loader = DataLoader(TensorDataset(x, y), batch_size=256)
            >>> graphs = StepwiseSensitivity(net, layers).class_graphs(loader, classes=[3, 5])
        """
        wanted = check_class_arguments(attribute_kwargs, classes)
        if not is_batch_stream(inputs):
            prepared = prepare_inputs(inputs, integers_allowed=True)
            mask = None if mask is None else checked_mask(mask, prepared)
            return {
                label: self.attribute(
                    subset if _is_tuple(inputs) else subset[0],
                    target=label,
                    mask=subset_mask,
                    **attribute_kwargs,
                )
                for label, subset, subset_mask in class_subsets(prepared, labels, wanted, mask)
            }
        check_stream_labels(labels)
        additional_forward_args = attribute_kwargs.pop("additional_forward_args", None)
        unknown = sorted(set(attribute_kwargs) - set(OPTION_DEFAULTS))
        if unknown:
            raise TypeError(f"class_graphs got unexpected keyword arguments {unknown}")
        options = Options.checked(**{**OPTION_DEFAULTS, **attribute_kwargs})
        request = StartRequest(classes=wanted, every_class=wanted is None)
        graphs = self._graphs(inputs, additional_forward_args, options, request, mask)
        return {int(graph.target): graph for graph in graphs}  # type: ignore[arg-type]

    def _graphs(
        self,
        inputs: Any,
        additional_forward_args: Any,
        options: Options,
        request: StartRequest,
        mask: Optional[Tensor] = None,
    ) -> list[DependencyGraph]:
        """The graphs that ``request`` asks for over ``inputs``: the one path of every
        call, from the data to the finished graphs."""
        request.check(is_batch_stream(inputs))
        data = BatchStream(inputs, mask=mask)
        warn_if_mask_in_forward_args(
            self, data.first.inputs, additional_forward_args, data.first.mask
        )
        network = Network(
            self._forward,
            self.layers,
            self.layer_names,
            self.neuron_dim,
            additional_forward_args,
        )
        with untouched_model(network.forward_func):
            states = build_graphs(network, data, request, options)
        metadata = {
            "method": type(self).__name__,
            # what the graph was made from, for its file and page
            "model": model_name(self.forward_func),
            **options.metadata(),
            "neuron_dim": self.neuron_dim,
        }
        return [self._graph_of(network, state, metadata, self.forward_func) for state in states]

    @staticmethod
    def _graph_of(
        network: Network,
        state: GraphState,
        metadata: dict[str, Any],
        forward_func: Callable[..., Any],
    ) -> DependencyGraph:
        if state.empty:
            warn(
                f"no neuron of {state.empty[0]!r} is relevant: its relevance to the neurons "
                "kept above is zero everywhere, so the graph keeps no neuron there, nor in "
                "the layers below it. List layers that the kept neurons depend on, or pass "
                "branching to keep a number of neurons regardless."
            )
        return DependencyGraph(
            network.layer_names,
            network.layers,
            state.neurons,
            state.relevances,
            state.matrices,
            state.edges,
            target=state.start.target,
            metadata={**metadata, "num_examples": state.examples},
            forward_func=forward_func,
        )


def model_name(forward_func: Callable[..., Any]) -> str:
    """The class name of the model behind ``forward_func`` (inside any DataParallel or
    ``torch.compile`` wrapper: the same graph names the same model), or the function's name."""
    model = model_of(forward_func)
    if model is not None:
        return type(user_model(model)).__name__
    return str(getattr(forward_func, "__name__", type(forward_func).__name__))


# The options' defaults are attribute's own, written once in its signature.
OPTION_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(StepwiseSensitivity.attribute).parameters.items()
    if name not in ("self", "inputs", "target", "additional_forward_args", "top_neurons", "mask")
}
