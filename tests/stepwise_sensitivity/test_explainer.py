"""StepwiseSensitivity against the plain reference (``references.py``), known answers,
and behaviour: options, starting neurons, errors, Captum's contract."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn

from captum_ssa import relevance as relevance_functions
from captum_ssa._core.stepwise_sensitivity import (
    StepwiseSensitivity,
    segment,
    threshold,
)
from captum_ssa._utils.hooks import ReusedLayerError
from captum_ssa.graph import DependencyGraph
from captum_ssa.relevance import LayerPair
from tests.behaviour import assert_same_snapshot, snapshot
from tests.models import MLP, TwoInputs, build
from tests.stepwise_sensitivity.references import (
    ALL_RELEVANCES,
    CASES,
    GRADIENT_FAMILY,
    OPTIONS,
    PAPER_PRESETS,
    assert_matches_reference,
    capture,
    case,
    graph_and_reference,
    reference_graph,
    starting_set,
)


@pytest.mark.filterwarnings("ignore:no neuron of")
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(("model_name", "relevance"), CASES)
def test_graph_equals_the_plain_reference(model_name, relevance, options):
    graph_and_reference(model_name, relevance, options)


PRESET_CASES = [
    (name, preset, options)
    for name in ("mlp", "direct_cnn")
    for preset in PAPER_PRESETS
    for options in ("mean_global", "mean_local_top")
] + [("mlp", preset, "tukey_local_percentile") for preset in ("weight_abs", "gradients")]


@pytest.mark.parametrize(("model_name", "preset", "options"), PRESET_CASES)
def test_the_papers_presets_equal_the_plain_reference(model_name, preset, options):
    graph = graph_and_reference(model_name, preset, options)
    assert graph.metadata["relevance"] == preset


def activation_listing(listing: str) -> tuple[nn.Module, list[nn.Module], list[Any], tuple]:
    """The test CNN (conv-ReLU-maxpool-conv-ReLU-avgpool-fc-ReLU-fc) with its activation
    modules listed, as the paper ranks them, and the Linear/Conv below each listed one."""
    model, _, shape = build("cnn", 0)
    if listing == "relus":
        layers = [model.relu1, model.relu2, model.relu3, model.fc2]
    else:  # the pooling after the ReLUs
        layers = [model.pool1, model.pool2, model.relu3, model.fc2]
    return model, layers, [None, model.conv2, model.fc1, model.fc2], shape


@pytest.mark.parametrize("options", ["mean_global", "mean_local_top"])
@pytest.mark.parametrize("relevance", ALL_RELEVANCES + PAPER_PRESETS)
@pytest.mark.parametrize("listing", ["relus", "pools"])
def test_activation_modules_listed_equal_the_plain_reference(listing, relevance, options):
    model, layers, weighted, shape = activation_listing(listing)
    torch.manual_seed(7)
    x = torch.randn(4, *shape)
    kwargs = {"relevance": relevance, **OPTIONS[options]}
    graph = StepwiseSensitivity(model, layers).attribute(x, target=1, **kwargs)
    expected = reference_graph(model, layers, x, [1], weighted=weighted, **kwargs)
    assert_matches_reference(graph, expected)
    assert min(len(graph.neurons(name)) for name in graph.layer_names) > 0


def test_on_non_negative_activations_the_absolute_mean_is_the_mean_absolute():
    """The paper's ACTIVATIONS and ACTIVATIONS_ABS rows agree because ReLU outputs are
    non-negative; on signed pre-activations |mean| and mean |.| differ."""
    model, layers, _, shape = activation_listing("relus")
    x = torch.randn(6, *shape)
    ssa = StepwiseSensitivity(model, layers)
    plain = ssa.attribute(x, target=0, relevance="activation")
    paper = ssa.attribute(x, target=0, relevance="activations_abs")
    for name in plain.layer_names[:-1]:
        torch.testing.assert_close(paper.relevance(name), plain.relevance(name))
    mlp, mlp_layers, mlp_shape, _ = case("mlp")
    x = torch.randn(6, *mlp_shape)
    signed = StepwiseSensitivity(mlp, mlp_layers[:2])
    (hidden,) = capture(mlp, mlp_layers[:1], x)
    graph = signed.attribute(x, top_neurons=0, relevance="activations_abs")
    torch.testing.assert_close(graph.relevance("fc1"), hidden.detach().mean(0).abs())
    other = signed.attribute(x, top_neurons=0, relevance="activation")
    torch.testing.assert_close(other.relevance("fc1"), hidden.detach().abs().mean(0))
    assert not torch.allclose(graph.relevance("fc1"), other.relevance("fc1"))


def test_a_dead_relu_unit_has_no_activation_relevance_when_the_relus_are_listed():
    model, _, shape = build("mlp", 0)
    with torch.no_grad():
        model.fc1.bias[2] = -50.0  # ReLU unit 2 of the first layer never fires
    x = torch.randn(16, *shape)
    relus = StepwiseSensitivity(model, [model.act1, model.act2, model.fc3])
    for relevance in (
        "activation",
        "activations_abs",
        "weight_act_abs",
        "weight_activation",
        "gradient_x_activation",
    ):
        graph = relus.attribute(x, target=1, relevance=relevance)
        assert graph.relevance("act1")[2] == 0, relevance
        assert 2 not in graph.neurons("act1").tolist(), relevance
    # listing the Linear layers ranks its pre-activation, about -50, first
    linears = StepwiseSensitivity(model, [model.fc1, model.fc2, model.fc3])
    graph = linears.attribute(x, target=1, relevance="activation")
    assert graph.relevance("fc1").argmax() == 2


def test_percentile_zero_keeps_every_neuron_ties_included():
    model, layers, shape, start = case("mlp")
    x = torch.randn(5, *shape)
    graph = StepwiseSensitivity(model, layers).attribute(x, **start, percentile=0)
    assert graph.layer_sizes[:-1] == [len(graph.neurons(n)) for n in graph.layer_names[:-1]]
    vector = torch.tensor([0.0, 2.0, 2.0, 1.0])
    matrix = torch.tensor([[0.0, 2.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    upper = torch.tensor([0, 1])
    kept, _ = threshold(matrix, vector, upper, "global", percentile=0)
    assert kept.tolist() == [0, 1, 2, 3]
    kept, edges = threshold(matrix, vector, upper, "local", percentile=0)
    assert kept.tolist() == [0, 1, 2, 3] and len(edges) == 8


def test_all_zero_relevance_keeps_nothing_beyond_what_branching_asks_for():
    zeros = torch.zeros(2, 5)
    upper = torch.tensor([3, 4])
    for mode in ("global", "local"):
        for percentile in (0, 50, 100):
            kept, edges = threshold(zeros, zeros.mean(0), upper, mode, percentile)
            assert kept.tolist() == [] and edges.shape == (0, 2), (mode, percentile)
        kept, _ = threshold(zeros, zeros.mean(0), upper, mode, branching=2)
        assert kept.tolist() == [0, 1]  # asked for two: ties go to the lower index
    # local mode: an all-zero row chooses nothing, the other row still chooses
    matrix = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    kept, edges = threshold(matrix, matrix.mean(0), upper[:2], "local", percentile=50)
    assert kept.tolist() == [1] and edges.tolist() == [[1, 4]]
    # a constant positive row keeps all its (maximal) neurons, as before
    kept, _ = threshold(torch.ones(1, 3), torch.ones(3), upper[:1], "global", percentile=50)
    assert kept.tolist() == [0, 1, 2]


def test_a_layer_with_no_relevant_neuron_is_empty_with_everything_below_and_warns():
    model, layers, shape, start = case("mlp")
    ssa = StepwiseSensitivity(model, layers)

    def nothing(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return torch.zeros(len(upper_neurons), *pair.lower_output.shape[:2])

    with pytest.warns(UserWarning, match="no neuron of 'fc2' is relevant"):
        graph = ssa.attribute(torch.randn(3, *shape), **start, relevance=nothing)
    assert [len(graph.neurons(name)) for name in graph.layer_names] == [0, 0, 1]
    assert graph.relevance("fc1").abs().sum() == 0
    assert graph.edges("fc3", "fc2").shape == (0, 2) and graph.edges("fc2", "fc1").shape == (0, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # branching asks for neurons: no warning
        local = ssa.attribute(torch.randn(3, *shape), **start, relevance=nothing, branching=2)
    assert [len(local.neurons(name)) for name in local.layer_names] == [2, 2, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relevance": "activations_abs", "aggregation": "tukey"}, "needs aggregation='mean'"),
        ({"relevance": "weight_act_abs", "aggregation": "tukey"}, "needs aggregation='mean'"),
        ({"relevance": "weight_abs", "absolute": False}, "fix where the absolute value goes"),
        ({"relevance": "gradients", "absolute": False}, "fix where the absolute value goes"),
    ],
)
def test_presets_with_contradicting_options_are_clear_errors(kwargs, message):
    model, layers, shape, start = case("mlp")
    with pytest.raises(ValueError, match=message):
        StepwiseSensitivity(model, layers).attribute(torch.randn(3, *shape), **start, **kwargs)


@pytest.mark.parametrize("options", ["mean_global", "tukey_local_percentile"])
@pytest.mark.parametrize("model_name", ["cnn", "direct_cnn", "residual"])
def test_one_neuron_per_backward_pass_equals_the_plain_reference(model_name, options, monkeypatch):
    """The test models are small enough for several neurons per pass; force one."""
    monkeypatch.setattr(segment, "VECTORISED_GRADIENT_ELEMENTS", 0)
    model, layers, shape, start = case(model_name)
    x = torch.randn(4, *shape)
    kwargs = {"relevance": "gradient_x_activation", **OPTIONS[options]}
    graph = StepwiseSensitivity(model, layers).attribute(x, **start, **kwargs)
    expected = reference_graph(model, layers, x, starting_set(model, layers, start), **kwargs)
    assert_matches_reference(graph, expected)


def test_a_user_hook_that_changes_a_layer_output_is_respected():
    """The seed below a Linear stands for its weights; a user's hook breaks that."""
    model, layers, shape, start = case("mlp")
    handle = layers[1].register_forward_hook(lambda module, args, output: 3.0 * output.square())
    try:
        x = torch.randn(4, *shape)
        kwargs = {"relevance": "gradient", **OPTIONS["mean_global"]}
        graph = StepwiseSensitivity(model, layers).attribute(x, **start, **kwargs)
        expected = reference_graph(model, layers, x, starting_set(model, layers, start), **kwargs)
        assert_matches_reference(graph, expected)
    finally:
        handle.remove()


@pytest.mark.parametrize("relevance", GRADIENT_FAMILY)
@pytest.mark.parametrize("model_name", ["cnn", "direct_cnn"])
def test_signed_relevance_equals_the_plain_reference(model_name, relevance):
    model, layers, shape, start = case(model_name)
    x = torch.randn(5, *shape)
    kwargs = {"relevance": relevance, "absolute": False, "branching": 2}
    graph = StepwiseSensitivity(model, layers).attribute(x, **start, **kwargs)
    expected = reference_graph(model, layers, x, starting_set(model, layers, start), **kwargs)
    assert_matches_reference(graph, expected)


def test_per_example_targets_aggregate_each_class_over_its_own_examples():
    model, layers, shape, _ = case("cnn")
    x = torch.randn(6, *shape)
    targets = torch.tensor([0, 2, 2, 0, 1, 0])
    graph = StepwiseSensitivity(model, layers).attribute(x, target=targets)
    examples_of = {c: (targets == c).nonzero().flatten().tolist() for c in range(3)}
    expected = reference_graph(model, layers, x, [0, 1, 2], examples_of=examples_of)
    assert_matches_reference(graph, expected)
    assert graph.target == [0, 1, 2]


def test_captum_layer_integrated_gradients_as_relevance_equals_per_example_calls():
    model, layers, shape = build("cnn", 0)
    chosen = [layers["conv2"], layers["fc1"], layers["fc2"]]
    x = torch.randn(3, *shape)
    relevance = relevance_functions.CaptumRelevance(LayerIntegratedGradients, n_steps=10)
    graph = StepwiseSensitivity(model, chosen).attribute(
        x, target=2, relevance=relevance, mode="local", branching=2
    )
    expected = reference_graph(
        model, chosen, x, [2], relevance="integrated_gradients", mode="local", branching=2
    )
    assert_matches_reference(graph, expected)
    assert graph.metadata["relevance"] == "LayerIntegratedGradients"


def test_captum_class_and_instance_are_accepted_as_relevance():
    model, layers, shape = build("mlp", 0)
    chosen = [layers["fc1"], layers["fc2"], layers["fc3"]]
    x = torch.randn(3, *shape)
    ssa = StepwiseSensitivity(model, chosen)
    from captum.attr import LayerGradientXActivation

    by_class = ssa.attribute(x, target=0, relevance=LayerGradientXActivation)
    instance = LayerGradientXActivation(model, layers["fc1"], multiply_by_inputs=True)
    by_instance = ssa.attribute(x, target=0, relevance=instance)
    builtin = ssa.attribute(x, target=0, relevance="gradient_x_activation")
    for graph in (by_class, by_instance):
        for name in builtin.layer_names[:-1]:
            torch.testing.assert_close(graph.relevance(name), builtin.relevance(name))
            assert graph.neurons(name).tolist() == builtin.neurons(name).tolist()


# ---------------------------------------------------------------- known answers


def block_diagonal_mlp(classes: int = 5, block: int = 2) -> MLP:
    """Class k's logit reads only fc2 units of block k, which read only fc1 units of block k."""
    hidden = classes * block
    model = MLP((4, hidden, hidden, classes)).eval()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.rand(hidden, 4) + 0.1)
        model.fc1.bias.fill_(0.1)
        model.fc2.weight.copy_(
            torch.block_diag(*[torch.rand(block, block) + 0.5 for _ in range(classes)])
        )
        model.fc2.bias.fill_(0.1)
        model.fc3.weight.zero_()
        for k in range(classes):
            model.fc3.weight[k, k * block : (k + 1) * block] = torch.rand(block) + 0.5
    return model


@pytest.mark.parametrize(
    "relevance", ["gradient", "gradient_x_activation", "weight", "weight_activation"]
)
@pytest.mark.parametrize(
    "options",
    [
        {"mode": "global"},
        {"mode": "global", "aggregation": "tukey"},
        {"mode": "local", "branching": 2},
        {"mode": "local", "branching": 3, "max_neurons": 2},
    ],
)
def test_block_diagonal_network_graph_is_exactly_the_class_block(relevance, options):
    torch.manual_seed(0)
    model = block_diagonal_mlp()
    x = torch.rand(12, 4)  # positive inputs: every unit is active
    ssa = StepwiseSensitivity(model, [model.fc1, model.fc2, model.fc3])
    graphs = ssa.class_graphs(x, torch.arange(12) % 5, relevance=relevance, **options)
    for k, graph in graphs.items():
        block = [2 * k, 2 * k + 1]
        assert graph.neurons("fc1").tolist() == block
        assert graph.neurons("fc2").tolist() == block
        assert graph.target == k
        if options["mode"] == "local":
            edges = {tuple(p) for p in graph.edges("fc2", "fc1").tolist()}
            assert edges == {(lower, upper) for lower in block for upper in block}


def test_grouped_convolution_graph_is_exactly_the_class_group():
    """Class k reads conv2 group k (channels 2k, 2k+1), which reads conv1 channels 2k, 2k+1."""

    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 3)
            self.conv2 = nn.Conv2d(6, 6, 3, groups=3)
            self.fc = nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            hidden = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(hidden.mean((2, 3)))

    torch.manual_seed(0)
    model = Grouped().eval()
    with torch.no_grad():
        for layer in (model.conv1, model.conv2):
            layer.weight.uniform_(0.1, 1.0)
            layer.bias.fill_(0.1)
        model.fc.weight.zero_()
        for k in range(3):
            model.fc.weight[k, 2 * k : 2 * k + 2] = 1.0
    x = torch.rand(4, 1, 8, 8)
    ssa = StepwiseSensitivity(model, [model.conv1, model.conv2, model.fc])
    for k in range(3):
        graph = ssa.attribute(x, target=k, mode="local", branching=2)
        assert graph.neurons("conv2").tolist() == [2 * k, 2 * k + 1]
        assert graph.neurons("conv1").tolist() == [2 * k, 2 * k + 1]
    on_weights = StepwiseSensitivity(model, [model.conv1, model.conv2]).attribute(
        x, top_neurons=4, relevance="weight"
    )
    assert on_weights.neurons("conv1").tolist() == [4, 5]
    assert (on_weights.relevance("conv1")[:4] == 0).all()


# ---------------------------------------------------------------- determinism


def test_same_inputs_give_the_same_graph_and_ties_go_to_the_lower_index():
    model = MLP((3, 4, 4, 2)).eval()
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.fill_(1.0)  # every relevance ties
            layer.bias.fill_(0.0)
    x = torch.rand(5, 3)
    ssa = StepwiseSensitivity(model, [model.fc1, model.fc2, model.fc3])
    first = ssa.attribute(x, target=0, mode="local", branching=2)
    second = ssa.attribute(x, target=0, mode="local", branching=2)
    assert first.neurons("fc2").tolist() == [0, 1]
    assert first.neurons("fc1").tolist() == [0, 1]
    capped = ssa.attribute(x, target=0, mode="local", branching=3, max_neurons=2)
    assert capped.neurons("fc2").tolist() == [0, 1]
    assert capped.neurons("fc1").tolist() == [0, 1]
    a, b = first.to_networkx(), second.to_networkx()
    assert dict(a.nodes(data=True)) == dict(b.nodes(data=True))
    assert sorted(a.edges(data=True)) == sorted(b.edges(data=True))
    top = ssa.attribute(x, target=0, branching=3)
    assert top.neurons("fc2").tolist() == [0, 1, 2]


# ---------------------------------------------------------------- graph contents


def test_graph_carries_layer_names_target_and_options():
    model, layers, shape = build("cnn", 0)
    graph = StepwiseSensitivity(model, list(layers.values())).attribute(
        torch.randn(3, *shape), target=2, mode="local", branching=2
    )
    assert graph.layer_names == ["conv1", "conv2", "fc1", "fc2"]
    assert graph.neurons("fc2").tolist() == [2]
    assert graph.relevance("fc2").tolist() == [0.0, 0.0, 1.0]
    assert graph.relevance(model.conv1).shape == (4,)
    assert graph.target == 2
    assert graph.metadata["mode"] == "local" and graph.metadata["branching"] == 2
    assert graph.metadata["relevance"] == "gradient"


def test_default_starts_from_every_neuron_of_the_top_layer():
    model, layers, shape = build("mlp", 0)
    graph = StepwiseSensitivity(model, list(layers.values())).attribute(torch.randn(3, *shape))
    assert graph.neurons("fc3").tolist() == [0, 1, 2, 3]
    assert graph.target is None


def test_upper_neurons_per_chunk_does_not_change_the_graph():
    model, layers, shape = build("cnn", 1)
    x = torch.randn(4, *shape)
    ssa = StepwiseSensitivity(model, list(layers.values()))
    whole = ssa.attribute(x, percentile=20)
    chunked = ssa.attribute(x, percentile=20, upper_neurons_per_chunk=np.int64(1))
    for name in whole.layer_names:
        assert whole.neurons(name).tolist() == chunked.neurons(name).tolist()
        torch.testing.assert_close(whole.relevance(name), chunked.relevance(name))


def test_class_graphs_equal_attribute_on_each_class_subset():
    model, layers, shape = build("cnn", 2)
    x = torch.randn(9, *shape)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    ssa = StepwiseSensitivity(model, list(layers.values()))
    graphs = ssa.class_graphs(x, labels.tolist(), classes=[2, 0], mode="local", branching=2)
    assert list(graphs) == [2, 0]
    for label, graph in graphs.items():
        alone = ssa.attribute(x[labels == label], target=label, mode="local", branching=2)
        for name in graph.layer_names:
            assert graph.neurons(name).tolist() == alone.neurons(name).tolist()
            torch.testing.assert_close(graph.relevance(name), alone.relevance(name))


# ---------------------------------------------------------------- bad input


def test_layers_out_of_forward_order_are_a_clear_error():
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, [layers["fc2"], layers["fc1"], layers["fc3"]])
    with pytest.raises(ValueError, match="order the forward pass runs them"):
        ssa.attribute(torch.randn(2, *shape))


def test_layer_not_in_the_model_is_a_clear_error():
    model, layers, _ = build("mlp", 0)
    with pytest.raises(ValueError, match="not part of the model"):
        StepwiseSensitivity(model, [layers["fc1"], nn.Linear(8, 7)])


@pytest.mark.parametrize(
    ("layer_names", "message"),
    [(["fc1"], "at least two layers"), (["fc1", "fc1"], "listed twice")],
)
def test_too_few_or_repeated_layers_are_a_clear_error(layer_names, message):
    model, layers, _ = build("mlp", 0)
    with pytest.raises(ValueError, match=message):
        StepwiseSensitivity(model, [layers[name] for name in layer_names])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": 4}, ValueError, r"target \[4\] out of range"),
        ({"target": -1}, ValueError, "out of range"),
        ({"target": [0, 9, 1]}, ValueError, r"\[9\] out of range"),
        ({"target": torch.tensor([0, 1, 5])}, ValueError, "out of range"),
        ({"target": torch.tensor([0, 1])}, ValueError, "one class per example"),
        ({"target": np.array([[0, 1, 2]])}, ValueError, "1-D with 3 entries"),
        ({"target": [0, 2]}, ValueError, r"one class per example.*top_neurons=\[\.\.\.\]"),
        ({"target": []}, ValueError, "a list target gives one class per example"),
        ({"target": (0, 1)}, ValueError, "names one element"),
        ({"target": [(0,), (1,), (2,)]}, ValueError, "names one element"),
        ({"target": 0.5}, TypeError, "must be an int"),
        ({"target": True}, TypeError, "must be an int"),
        ({"top_neurons": []}, TypeError, "top_neurons must be an int or a non-empty"),
        ({"top_neurons": [0.5]}, TypeError, "top_neurons must be"),
        ({"top_neurons": [[0, 1]]}, ValueError, "at most 1-D"),
        ({"top_neurons": {0, 4}}, ValueError, r"top_neurons \[4\] out of range"),
        ({"target": 0, "top_neurons": 1}, ValueError, "not both"),
        ({"relevance": "saliency"}, ValueError, "relevance must be one of"),
        ({"relevance": 3}, TypeError, "relevance must be"),
        ({"aggregation": "median"}, ValueError, "aggregation"),
        ({"mode": "both"}, ValueError, "mode"),
        ({"percentile": 120}, ValueError, "percentile"),
        ({"branching": 0}, ValueError, "branching must be a positive integer"),
        ({"branching": 2.5}, ValueError, "branching must be a positive integer"),
        ({"max_neurons": 1.5}, ValueError, "max_neurons must be a positive integer"),
        ({"upper_neurons_per_chunk": -2}, ValueError, "upper_neurons_per_chunk must be"),
        ({"upper_neurons_per_chunk": 2.5}, ValueError, "upper_neurons_per_chunk must be"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, message):
    model, layers, shape = build("mlp", 0)
    with pytest.raises(error, match=message):
        StepwiseSensitivity(model, list(layers.values())).attribute(
            torch.randn(3, *shape), **kwargs
        )


@pytest.mark.parametrize(
    ("make_input", "error", "message"),
    [
        (lambda shape: torch.empty(0, *shape), ValueError, "no examples"),
        (lambda shape: torch.full((2, *shape), float("nan")), ValueError, "NaN"),
        # integer inputs (token ids) are read as they are: test_token_inputs.py
        (lambda shape: torch.ones(2, *shape, dtype=torch.complex64), TypeError, "complex"),
    ],
)
def test_bad_inputs_get_clear_errors(make_input, error, message):
    model, layers, shape = build("mlp", 0)
    with pytest.raises(error, match=message):
        StepwiseSensitivity(model, list(layers.values())).attribute(make_input(shape))


def test_target_needs_the_top_layer_to_be_the_output():
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, [layers["fc1"], layers["fc2"]])
    with pytest.raises(ValueError, match="pass top_neurons"):
        ssa.attribute(torch.randn(2, *shape), target=0)
    assert ssa.attribute(torch.randn(2, *shape), top_neurons=[0, 6]).neurons("fc2").tolist() == [
        0,
        6,
    ]


@pytest.mark.parametrize("relevance", ["weight", "weight_activation"])
@pytest.mark.parametrize(
    ("model_name", "lower", "upper", "message"),
    [
        ("cnn", "conv1", "fc1", "two weighted layers"),  # conv2 and fc1 between
        ("residual", "fc_in", "fc_out", r"\(Add\) combines several paths"),  # residual sum
    ],
)
def test_weight_relevance_between_layers_not_directly_connected_is_a_clear_error(
    relevance, model_name, lower, upper, message
):
    model, layers, shape = build(model_name, 0)
    ssa = StepwiseSensitivity(model, [layers[lower], layers[upper]])
    with pytest.raises(ValueError, match=message):
        ssa.attribute(torch.randn(2, *shape), top_neurons=0, relevance=relevance)


def test_weight_relevance_needs_a_weighted_layer_between():
    model, _, shape = build("cnn", 0)
    ssa = StepwiseSensitivity(model, [model.conv1, model.pool1])
    with pytest.raises(ValueError, match=r"no nn\.Linear or nn\.Conv1d/2d/3d module lies"):
        ssa.attribute(torch.randn(2, *shape), top_neurons=0, relevance="weight")


def test_class_graphs_bad_labels_are_clear_errors():
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, list(layers.values()))
    x = torch.randn(4, *shape)
    with pytest.raises(ValueError, match="one integer class per example"):
        ssa.class_graphs(x, [0, 1])
    with pytest.raises(ValueError, match="class 3 has no examples"):
        ssa.class_graphs(x, [0, 1, 1, 0], classes=[3])
    with pytest.raises(TypeError, match="sets target itself"):
        ssa.class_graphs(x, [0, 1, 1, 0], target=1)


# ---------------------------------------------------------------- behaviour every method keeps


def test_inplace_relu_after_a_layer_gives_the_same_graph():
    torch.manual_seed(0)
    inplace = MLP().eval()  # act2 is ReLU(inplace=True), right after fc2
    plain = MLP().eval()
    plain.act2 = nn.ReLU()
    plain.load_state_dict(inplace.state_dict())
    x = torch.randn(6, 6)
    graphs = [
        StepwiseSensitivity(m, [m.fc1, m.fc2, m.fc3]).attribute(
            x, target=1, relevance="gradient_x_activation", mode="local", branching=2
        )
        for m in (plain, inplace)
    ]
    for name in graphs[0].layer_names:
        assert graphs[0].neurons(name).tolist() == graphs[1].neurons(name).tolist()
        torch.testing.assert_close(graphs[0].relevance(name), graphs[1].relevance(name))
    assert (graphs[0].relevance("fc2") != 0).any()


def test_reused_module_is_a_clear_error():
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc2(torch.relu(self.fc1(torch.relu(self.fc1(x)))))

    model = Reused().eval()
    with pytest.raises(ReusedLayerError, match="more than once"):
        StepwiseSensitivity(model, [model.fc1, model.fc2]).attribute(torch.randn(2, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_leaves_no_trace_on_success_and_on_exception():
    model, layers, shape = build("cnn", 3)
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)  # a user's own gradient
    ssa = StepwiseSensitivity(model, list(layers.values()))
    before = snapshot(model)
    x = torch.randn(3, *shape)
    ssa.attribute(x, target=1, relevance="gradient_x_activation")
    assert_same_snapshot(before, snapshot(model))
    assert not x.requires_grad and x.grad is None
    y = torch.randn(3, *shape, requires_grad=True)
    ssa.attribute(y, target=1)
    assert y.requires_grad and y.grad is None
    with pytest.raises(ValueError, match="out of range"):  # raised after the forward pass
        ssa.attribute(x, target=7)
    with pytest.raises(RuntimeError):  # raised inside the forward pass
        ssa.attribute(torch.randn(3, 1, 5, 5))
    assert_same_snapshot(before, snapshot(model))


def test_training_mode_with_batch_norm_warns_and_stays_in_training():
    model, layers, shape = build("cnn_bn", 0)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        StepwiseSensitivity(model, list(layers.values())).attribute(torch.randn(4, *shape))
    assert all(m.training for m in model.modules())


def test_works_under_no_grad_with_tuple_inputs():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    inputs = (torch.randn(3, 1, 6, 6), torch.randn(3, 4))
    ssa = StepwiseSensitivity(model, [model.conv, model.fc, model.out])
    with torch.no_grad():
        graph = ssa.attribute(inputs, target=1, mode="local", branching=2)
    assert graph.neurons("out").tolist() == [1]
    assert len(graph.neurons("conv")) >= 1


def test_double_precision_gives_the_same_graph():
    """No dtype or device is assumed: the computation follows the model's tensors."""
    model, layers, shape, start = case("direct_cnn")
    x = torch.randn(5, *shape)
    single = StepwiseSensitivity(model, layers).attribute(x, **start, relevance="weight_activation")
    model64 = model.double()
    double = StepwiseSensitivity(model64, layers).attribute(
        x.double(), **start, relevance="weight_activation"
    )
    for name in single.layer_names:
        assert single.neurons(name).tolist() == double.neurons(name).tolist()
        assert double.relevance(name).dtype == torch.float64
        torch.testing.assert_close(single.relevance(name).double(), double.relevance(name))


def test_layer_that_never_runs_is_a_clear_error():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(torch.relu(self.used(x)))

    model = Skips().eval()
    with pytest.raises(ValueError, match="did not run"):
        StepwiseSensitivity(model, [model.used, model.unused, model.out]).attribute(
            torch.randn(2, 4)
        )


# ---------------------------------------------------------------- Captum's contract


def test_is_a_plain_captum_attribution_without_layer_or_delta_promises():
    from captum.attr import Attribution, GradientAttribution, LayerAttribution

    model, layers, _ = build("mlp", 0)
    ssa = StepwiseSensitivity(model, list(layers.values()))
    assert isinstance(ssa, Attribution)
    assert not isinstance(ssa, (LayerAttribution, GradientAttribution))
    assert not ssa.has_convergence_delta() and not ssa.multiplies_by_inputs


def graphs_equal(first: DependencyGraph, second: DependencyGraph) -> None:
    for name in first.layer_names:
        assert first.neurons(name).tolist() == second.neurons(name).tolist(), name
        torch.testing.assert_close(first.relevance(name), second.relevance(name))
    assert first.target == second.target


def test_target_forms_follow_captum_and_top_neurons_is_a_set():
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, list(layers.values()))
    x = torch.randn(4, *shape)
    one = ssa.attribute(x, target=2)
    for same in (np.int64(2), torch.tensor(2), torch.tensor([2]), (2,), np.array(2)):
        graphs_equal(one, ssa.attribute(x, target=same))
    per_example = ssa.attribute(x, target=torch.tensor([0, 3, 3, 0]))
    examples_of = {0: [0, 3], 3: [1, 2]}
    assert_matches_reference(
        per_example, reference_graph(model, list(layers.values()), x, [0, 3], examples_of)
    )
    for same in ([0, 3, 3, 0], np.array([0, 3, 3, 0]), [np.int64(0), 3, 3, 0]):
        graphs_equal(per_example, ssa.attribute(x, target=same))
    assert per_example.target == [0, 3]
    # a set of starting neurons: every example counts for each
    as_set = ssa.attribute(x, top_neurons=[0, 3])
    assert_matches_reference(as_set, reference_graph(model, list(layers.values()), x, [0, 3]))
    assert as_set.target is None
    for same in ((3, 0), {0, 3}, torch.tensor([3, 0, 3]), np.array([0, 3])):
        graphs_equal(as_set, ssa.attribute(x, top_neurons=same))
    assert not torch.equal(as_set.relevance("fc2"), per_example.relevance("fc2"))


class SequenceClassifier(nn.Module):
    """Transformer-style: per-token embedding Linear -> self-attention block (residual)
    -> LayerNorm -> per-token MLP (residual) -> mean over tokens -> classifier."""

    def __init__(self, features: int = 4, width: int = 6, hidden: int = 7) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.attention = SelfAttention(width)
        self.norm = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, hidden)
        self.mlp_out = nn.Linear(hidden, width)
        self.classifier = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, tokens, features)
        h = self.embed(x)
        h = self.norm(h + self.attention(h))
        h = h + self.mlp_out(torch.relu(self.mlp_in(h)))
        return self.classifier(h.mean(1))


class SelfAttention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, num_heads=2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def sequence_case() -> tuple[SequenceClassifier, list[nn.Module], Tensor]:
    torch.manual_seed(4)
    model = SequenceClassifier().eval()
    layers = [model.embed, model.attention, model.mlp_in, model.mlp_out, model.classifier]
    return model, layers, torch.randn(4, 5, 4)


@pytest.mark.parametrize("options", ["mean_global", "mean_local_top", "tukey_local_percentile"])
@pytest.mark.parametrize("relevance", GRADIENT_FAMILY)
def test_feature_axis_of_token_sequences_equals_the_plain_reference(relevance, options):
    model, layers, x = sequence_case()
    kwargs = {"relevance": relevance, **OPTIONS[options]}
    graph = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(x, target=1, **kwargs)
    expected = reference_graph(model, layers, x, [1], neuron_dim=-1, **kwargs)
    assert_matches_reference(graph, expected)
    assert graph.layer_sizes == [6, 6, 7, 6, 3]
    assert graph.metadata["neuron_dim"] == -1


def test_dim_one_of_token_sequences_warns_once_unless_neuron_dim_is_given():
    model, layers, x = sequence_case()
    with pytest.warns(UserWarning, match="neuron_dim=-1") as caught:
        graph = StepwiseSensitivity(model, layers).attribute(x, target=1)
    assert len([w for w in caught if "neuron_dim" in str(w.message)]) == 1
    assert "'mlp_in'" in str(caught[0].message)
    assert graph.layer_sizes[0] == 5  # dim 1 is the token axis, as asked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StepwiseSensitivity(model, layers, neuron_dim=1).attribute(x, target=1)
        StepwiseSensitivity(model, layers, neuron_dim=np.int64(-1)).attribute(x, target=1)
        conv_model, conv_layers, shape = build("cnn", 0)
        StepwiseSensitivity(conv_model, list(conv_layers.values())).attribute(
            torch.randn(2, *shape)
        )
        conv1d = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 3, 3)).eval()
        StepwiseSensitivity(conv1d, [conv1d[1], conv1d[2]]).attribute(
            torch.randn(2, 2, 9), top_neurons=0
        )


def test_mask_zeroes_the_features_of_a_graph_built_along_the_last_axis(tmp_path):
    from tests.models import layer_output

    model, layers, x = sequence_case()
    graph = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(x, target=1, branching=2)
    kept = torch.zeros(6, dtype=torch.bool)
    kept[graph.neurons("embed")] = True
    assert 0 < int(kept.sum()) < 6
    plain = layer_output(model, model.embed, x).detach()
    graph.save(tmp_path / "graph.json")
    for masking in (graph, DependencyGraph.load(tmp_path / "graph.json")):
        with torch.no_grad(), masking.mask(model):
            masked = layer_output(model, model.embed, x)
        assert (masked[..., ~kept] == 0).all()
        torch.testing.assert_close(masked[..., kept], plain[..., kept])


def test_tuple_target_on_a_sequence_output_is_a_true_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(2, 5, 4)  # the output is (N, tokens, 3)
    ssa = StepwiseSensitivity(model, [model[0], model[2]], neuron_dim=-1)
    with pytest.raises(ValueError, match=r"dim 2 of the top layer's output \(2, 5, 3\)"):
        ssa.attribute(x, target=(0, 1))
    with pytest.raises(ValueError, match="names one element"):
        ssa.attribute(x, target=(1,))
    assert ssa.attribute(x, target=1).neurons("2").tolist() == [1]


@pytest.mark.parametrize("relevance", ["weight", "weight_activation"])
def test_weight_relevance_with_a_moved_neuron_axis_is_a_clear_error(relevance):
    model, layers, x = sequence_case()
    ssa = StepwiseSensitivity(model, layers[2:], neuron_dim=-1)
    with pytest.raises(ValueError, match="neuron_dim=-1 moves the neuron axis"):
        ssa.attribute(x, target=0, relevance=relevance)


@pytest.mark.parametrize("neuron_dim", [0, 3, -4, 1.0, True])
def test_bad_neuron_dim_is_a_clear_error(neuron_dim):
    model, layers, x = sequence_case()
    with pytest.raises(ValueError, match="neuron_dim"):
        StepwiseSensitivity(model, layers, neuron_dim=neuron_dim).attribute(x)


# ---------------------------------------------------------------- no silent wrong answers


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5))
        self.out = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.block(x)))


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(4, 3)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(torch.cat([self.left(x), self.right(x)], 1)))


def test_layers_not_on_one_path_of_the_computation_are_a_clear_error():
    torch.manual_seed(0)
    nested, branches = Nested().eval(), Branches().eval()
    x = torch.randn(3, 4)
    cases = [
        (nested, [nested.block, nested.block[2], nested.out], "'block.2'.*'block'"),
        (branches, [branches.left, branches.right, branches.out], "'right'.*'left'"),
    ]
    for model, layers, names in cases:
        with pytest.raises(ValueError, match=f"{names}.*one path of the computation"):
            StepwiseSensitivity(model, layers).attribute(x, target=0)
    with pytest.raises(ValueError, match=r"'block' contains 'block\.2'.*one path"):
        StepwiseSensitivity(nested, [nested.block[2], nested.block]).attribute(x)
    # along one path the same modules are fine, and so is an Identity on the input
    for model, layers in [
        (nested, [nested.block[0], nested.block[2], nested.out]),
        (branches, [branches.left, branches.out]),
    ]:
        assert len(StepwiseSensitivity(model, layers).attribute(x, target=0).neurons("out")) == 1
    identity = nn.Sequential(nn.Identity(), nn.Linear(4, 2)).eval()
    graph = StepwiseSensitivity(identity, [identity[0], identity[1]]).attribute(x, target=1)
    assert (graph.relevance("0") > 0).all()


def test_nan_relevance_is_an_error_naming_the_layer_pair_and_the_relevance():
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, list(layers.values()))

    def broken(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        omega = relevance_functions.gradient(pair, upper_neurons, absolute)
        return omega if pair.upper_name == "fc3" else omega * float("nan")

    for aggregation in ("mean", "tukey"):
        with pytest.raises(ValueError, match="'broken' of 'fc1' to 'fc2' is NaN"):
            ssa.attribute(torch.randn(3, *shape), relevance=broken, aggregation=aggregation)


def test_overflowing_relevance_is_an_error_not_an_empty_graph():
    model, layers, shape = build("mlp", 0)
    with torch.no_grad():
        model.fc2.weight.mul_(1e25)
        model.fc3.weight.mul_(1e25)
    ssa = StepwiseSensitivity(model, [layers["fc1"], layers["fc3"]])
    with pytest.raises(ValueError, match=r"of 'fc1' to 'fc3' is (NaN|infinite).*overflow"):
        ssa.attribute(torch.rand(3, *shape), target=0)
    half = StepwiseSensitivity(model.half(), [layers["fc1"], layers["fc2"]])
    with pytest.raises(ValueError, match=r"of 'fc1' to 'fc2' is (NaN|infinite)"):
        half.attribute(torch.rand(3, *shape).half(), top_neurons=[0, 1])


def test_numpy_integer_counts_give_the_same_graph():
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, list(layers.values()))
    x = torch.randn(4, *shape)
    plain = ssa.attribute(x, target=1, mode="local", branching=2, max_neurons=3)
    numpy = ssa.attribute(x, target=1, mode="local", branching=np.int32(2), max_neurons=np.int64(3))
    graphs_equal(plain, numpy)
    assert numpy.metadata["branching"] == 2 and type(numpy.metadata["branching"]) is int


def test_feature_axis_with_one_neuron_per_backward_pass_equals_the_plain_reference(monkeypatch):
    monkeypatch.setattr(segment, "VECTORISED_GRADIENT_ELEMENTS", 0)
    model, layers, x = sequence_case()
    kwargs = {"relevance": "gradient_x_activation", **OPTIONS["mean_local_top"]}
    graph = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(x, target=2, **kwargs)
    assert_matches_reference(graph, reference_graph(model, layers, x, [2], neuron_dim=-1, **kwargs))
