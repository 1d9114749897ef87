"""SSA over a stream of batches: the graph of the union, flat in the number of batches.

The reference is the one-batch graph, itself checked against a plain loop-based
implementation in ``references.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import StepwiseSensitivity, memory_budget
from captum_ssa import relevance as relevance_functions
from captum_ssa._core.stepwise_sensitivity import segment
from captum_ssa._core.stepwise_sensitivity.relevance import _REGISTRY as registry
from captum_ssa.graph import DependencyGraph
from tests.models import ResNet, build, randomise_batch_norm

OPTIONS = {
    "mean_global": {"aggregation": "mean", "mode": "global"},
    "tukey_global": {"aggregation": "tukey", "mode": "global", "percentile": 30},
    "mean_local": {"aggregation": "mean", "mode": "local", "branching": 2, "max_neurons": 3},
    "tukey_local": {"aggregation": "tukey", "mode": "local", "percentile": 60},
}


def assert_same_graph(streamed: DependencyGraph, whole: DependencyGraph) -> None:
    names = whole.layer_names
    for name in names:
        assert streamed.neurons(name).tolist() == whole.neurons(name).tolist(), name
        torch.testing.assert_close(streamed.relevance(name), whole.relevance(name))
    for lower, upper in zip(names[:-1], names[1:]):
        torch.testing.assert_close(
            streamed.relevance_matrix(upper, lower), whole.relevance_matrix(upper, lower)
        )
        assert streamed.edges(upper, lower).tolist() == whole.edges(upper, lower).tolist()
    assert streamed.target == whole.target
    assert streamed.metadata["num_examples"] == whole.metadata["num_examples"]


def data(model_name: str = "cnn", count: int = 10, seed: int = 3) -> tuple[Any, ...]:
    model, layers, shape = build(model_name, 0)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, *shape, generator=generator)
    y = torch.randint(0, 3, (count,), generator=generator)
    return StepwiseSensitivity(model, list(layers.values())), x, y


@pytest.mark.filterwarnings("ignore:no neuron of")
@pytest.mark.parametrize("passes", ["per_pair", "single"])
@pytest.mark.parametrize("options", OPTIONS)
def test_a_dataloader_with_uneven_batches_gives_the_one_batch_graph(options, passes):
    ssa, x, _ = data()
    whole = ssa.attribute(x, target=1, **OPTIONS[options])
    loader = DataLoader(TensorDataset(x), batch_size=3)  # 3 + 3 + 3 + 1
    assert_same_graph(ssa.attribute(loader, target=1, passes=passes, **OPTIONS[options]), whole)


@pytest.mark.filterwarnings("ignore:no neuron of")
@pytest.mark.parametrize("options", OPTIONS)
def test_a_list_of_tensors_and_a_generator_give_the_one_batch_graph(options):
    ssa, x, _ = data()
    whole = ssa.attribute(x, **OPTIONS[options])
    assert_same_graph(ssa.attribute([x[:4], x[4:9], x[9:]], **OPTIONS[options]), whole)
    one_shot = (x[start : start + 4] for start in range(0, 10, 4))
    assert_same_graph(ssa.attribute(one_shot, **OPTIONS[options]), whole)


@pytest.mark.parametrize("passes", ["per_pair", "single"])
@pytest.mark.parametrize("options", ["mean_global", "mean_local"])
def test_targets_from_the_labels_give_the_per_example_target_graph(options, passes):
    ssa, x, y = data(count=12)
    whole = ssa.attribute(x, target=y, **OPTIONS[options])
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    streamed = ssa.attribute(loader, target="labels", passes=passes, **OPTIONS[options])
    assert_same_graph(streamed, whole)
    assert streamed.target == sorted(y.unique().tolist())


@pytest.mark.filterwarnings("ignore:no neuron of")
@pytest.mark.parametrize("options", OPTIONS)
def test_one_class_for_every_example_is_stored_as_the_int_target(options):
    ssa, x, _ = data()
    by_int = ssa.attribute(x, target=1, **OPTIONS[options])
    assert by_int.target == 1
    ones = torch.ones(len(x), dtype=torch.long)
    assert ssa.attribute(x, target=[1] * len(x), **OPTIONS[options]) == by_int
    assert ssa.attribute(x, target=ones, **OPTIONS[options]) == by_int
    labelled = DataLoader(TensorDataset(x, ones), batch_size=4)
    streamed = ssa.attribute(labelled, target="labels", **OPTIONS[options])
    assert streamed.target == 1
    assert_same_graph(streamed, by_int)  # to float tolerance: sums over batches


@pytest.mark.parametrize("passes", ["per_pair", "single"])
def test_top_neurons_over_a_stream_give_the_one_batch_graph(passes):
    model, layers, shape = build("mlp", 0)
    ssa = StepwiseSensitivity(model, [layers["fc1"], layers["fc2"]])
    x = torch.randn(9, *shape)
    whole = ssa.attribute(x, top_neurons=[0, 4, 6], mode="local", branching=2)
    streamed = ssa.attribute(
        [x[:2], x[2:]], top_neurons=[0, 4, 6], mode="local", branching=2, passes=passes
    )
    assert_same_graph(streamed, whole)


@pytest.mark.parametrize("preset", ["activations_abs", "weight_act_abs", "gradients"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_the_absolute_mean_presets_take_the_absolute_value_after_the_streamed_mean(
    preset, model_name
):
    model, layers, shape = build(model_name, 0)
    # the weight presets need one weighted layer between two listed layers
    ssa = StepwiseSensitivity(model, [layers["fc1"], layers["fc2"]])
    x = torch.randn(11, *shape)
    kwargs = {"top_neurons": [0, 1], "relevance": preset, "mode": "local", "branching": 3}
    whole = ssa.attribute(x, **kwargs)
    assert_same_graph(ssa.attribute(DataLoader(TensorDataset(x), batch_size=4), **kwargs), whole)


@pytest.mark.parametrize("classes", [[2, 0], None])
def test_class_graphs_of_a_loader_equal_class_graphs_of_the_tensors(classes):
    ssa, x, y = data(count=12)
    whole = ssa.class_graphs(x, y, classes=classes, mode="local", branching=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    streamed = ssa.class_graphs(loader, classes=classes, mode="local", branching=2)
    assert list(streamed) == list(whole)
    for label in whole:
        assert_same_graph(streamed[label], whole[label])


def test_a_batch_larger_than_the_budget_is_split_and_the_graph_is_unchanged(monkeypatch):
    """Under a tiny budget every Step I call and every seed stays within it (down to
    one neuron and one example, below which nothing can be split)."""
    ssa, x, _ = data(count=10)
    whole = ssa.attribute(x, target=1, mode="local", branching=2)
    budget = 6000  # each of the forward piece and the neuron chunks gets half
    calls: list[tuple[int, int, int, int]] = []
    gradient = relevance_functions.BUILT_IN["gradient"]

    class Recording(relevance_functions.Relevance):
        def __call__(self, pair: Any, upper_neurons: Any, absolute: bool) -> Any:
            lower = pair.lower_output
            calls.append(
                (len(upper_neurons), lower.shape[0], lower[0].numel() * 4, lower.shape[1] * 4)
            )
            return gradient(pair, upper_neurons, absolute)

    seed_bytes: list[tuple[int, int]] = []
    seeds_at_layer_input = segment.seeds_at_layer_input

    def recording_seeds(layer: Any, layer_input: Any, layer_output: Any, neurons: Any) -> Any:
        seeds = seeds_at_layer_input(layer, layer_input, layer_output, neurons)
        if seeds is not None:
            seed_bytes.append((len(neurons), seeds.numel() * seeds.element_size()))
        return seeds

    # relevance="gradient" (the default) finds the recording class
    monkeypatch.setitem(registry, "gradient", Recording)
    monkeypatch.setattr(segment, "seeds_at_layer_input", recording_seeds)
    with memory_budget(budget):
        for stream in (x, DataLoader(TensorDataset(x), batch_size=6)):
            assert_same_graph(ssa.attribute(stream, target=1, mode="local", branching=2), whole)
    assert calls and seed_bytes
    for neurons, examples, bytes_per_example, bytes_per_row in calls:
        # one upper neuron's gradient on the lower layer over the examples
        assert examples == 1 or examples * bytes_per_example <= budget
        # the Step I rows (upper neurons x examples x lower neurons) of one call
        assert neurons == 1 or neurons * examples * bytes_per_row <= budget
    assert any(examples < 6 for _, examples, _, _ in calls)  # the batches were split
    assert any(neurons > 1 for neurons, _, _, _ in calls)  # and not all down to one
    assert all(count == 1 or size <= budget for count, size in seed_bytes)


def test_bad_streams_get_clear_errors():
    ssa, x, y = data()
    with pytest.raises(ValueError, match="empty stream"):
        ssa.attribute([])
    with pytest.raises(TypeError, match="batch 1 of inputs must be a tensor"):
        ssa.attribute([x, "not a batch"])
    with pytest.raises(ValueError, match="cannot follow the batches of a stream"):
        ssa.attribute([x[:5], x[5:]], target=y[:5])
    with pytest.raises(ValueError, match="target='labels' needs every batch"):
        ssa.attribute([x[:5], x[5:]], target="labels")
    with pytest.raises(ValueError, match="target='labels' takes each example's target"):
        ssa.attribute(x, target="labels")
    with pytest.raises(ValueError, match=r"labels \[7\] out of range"):
        ssa.attribute([(x, torch.full((10,), 7))], target="labels")
    with pytest.raises(ValueError, match="pass labels=None"):
        ssa.class_graphs([(x, y)], y)
    with pytest.raises(ValueError, match="class 5 has no examples"):
        ssa.class_graphs([(x, y)], classes=[5])
    with pytest.raises(ValueError, match="passes must be one of"):
        ssa.attribute(x, passes="twice")


def test_progress_bars_run_over_the_batches(capsys):
    ssa, x, _ = data()
    ssa.attribute(DataLoader(TensorDataset(x), batch_size=4), target=0, show_progress=True)
    printed = capsys.readouterr().err
    assert "SSA fc2 -> fc1" in printed and "3/3" in printed


def test_a_small_resnet_streamed_gives_the_one_batch_graph():
    """Residual stages listed as blocks: their segments are differentiated through."""
    torch.manual_seed(0)
    model = randomise_batch_norm(ResNet(width=4, blocks=1)).eval()
    ssa = StepwiseSensitivity(model, model.ssa_layers())
    x = torch.randn(7, 3, 16, 16)
    whole = ssa.attribute(x, target=2, branching=3)
    assert_same_graph(ssa.attribute([x[:3], x[3:]], target=2, branching=3), whole)
