"""The declarative relevance extension point: ``Relevance``, ``register_relevance``.

SSA reads what a relevance declares (gradients or not, absolute value after the
mean, whether ``absolute`` applies) and nothing else: the pass count, the order
of Step II and the absolute value, and the errors follow the declarations.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import CaptumSSAWarning, StepwiseSensitivity
from captum_ssa._core.stepwise_sensitivity.relevance import _REGISTRY
from captum_ssa.relevance import (
    BUILT_IN,
    PRESETS,
    LayerPair,
    Relevance,
    register_relevance,
    registered_relevances,
)
from tests.models import MLP


@pytest.fixture
def registry() -> Iterator[dict[str, Any]]:
    """The registry, restored after the test (registrations are global)."""
    saved = dict(_REGISTRY)
    yield _REGISTRY
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def mlp_case(count: int = 12) -> tuple[nn.Module, list[nn.Module], Tensor]:
    torch.manual_seed(0)
    model = MLP((4, 6, 5, 3)).eval()
    return model, [model.fc1, model.act1, model.fc2, model.fc3], torch.randn(count, 4)


class CountingModel(nn.Module):
    """Counts the examples each forward pass reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.examples_read = 0

    def forward(self, x: Tensor) -> Tensor:
        self.examples_read += len(x)
        return self.model(x)


def signed_mean_activation(pair: LayerPair, upper_neurons: Tensor) -> Tensor:
    values = (
        pair.lower_output.detach().flatten(2).mean(2)
        if pair.lower_output.dim() > 2
        else (pair.lower_output.detach())
    )
    return values.expand(len(upper_neurons), *values.shape)


def test_every_built_in_is_registered_under_its_name_with_honest_declarations():
    assert set(BUILT_IN) <= set(registered_relevances())
    for name, relevance in BUILT_IN.items():
        assert isinstance(relevance, Relevance) and relevance.__name__ == name
    gradient_free = {name for name, r in BUILT_IN.items() if not r.needs_gradients}
    assert gradient_free == {
        "activation",
        "weight",
        "weight_activation",
        "weight_abs",
        "activations_abs",
        "weight_act_abs",
    }
    assert {name for name, r in BUILT_IN.items() if r.absolute_after_aggregation} == {
        "activations_abs",
        "weight_act_abs",
    }
    assert {name for name, r in BUILT_IN.items() if not r.absolute_applies} == set(PRESETS)


def test_a_registered_user_relevance_is_found_by_name_and_recorded(registry):
    @register_relevance("plain_activation_copy")
    class PlainActivationCopy(Relevance):
        needs_gradients = False

        def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
            values = signed_mean_activation(pair, upper_neurons)
            return values.abs() if absolute else values

    assert "plain_activation_copy" in registered_relevances()
    model, layers, x = mlp_case()
    ssa = StepwiseSensitivity(model, layers)
    mine = ssa.attribute(x, target=1, relevance="plain_activation_copy", mode="local", branching=2)
    built_in = ssa.attribute(x, target=1, relevance="activation", mode="local", branching=2)
    assert mine.metadata["relevance"] == "plain_activation_copy"
    for name in mine.layer_names:
        assert mine.neurons(name).tolist() == built_in.neurons(name).tolist()
        torch.testing.assert_close(mine.relevance(name), built_in.relevance(name))
    # the class itself and an instance work as relevance= too
    for given in (PlainActivationCopy, PlainActivationCopy()):
        graph = ssa.attribute(x, target=1, relevance=given, mode="local", branching=2)
        torch.testing.assert_close(graph.relevance(layers[0]), built_in.relevance(layers[0]))


def test_registration_errors_are_clear(registry):
    with pytest.raises(ValueError, match="registered already"):
        register_relevance("gradient")(type("Other", (Relevance,), {}))
    with pytest.raises(TypeError, match="subclass of Relevance"):
        register_relevance("not_a_relevance")(object)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="non-empty string"):
        register_relevance("")
    model, layers, x = mlp_case()
    with pytest.raises(ValueError, match="relevance must be one of"):
        StepwiseSensitivity(model, layers).attribute(x, target=0, relevance="no_such_name")


def forward_examples(relevance: Any, needs_gradients: bool, registry: dict[str, Any]) -> int:
    """Examples the model reads for a 4-layer graph over a 3-batch DataLoader."""
    model, layers, x = mlp_case()
    counting = CountingModel(model)
    ssa = StepwiseSensitivity(counting, layers)
    loader = DataLoader(TensorDataset(x), batch_size=4)
    ssa.attribute(loader, target=1, relevance=relevance, percentile=0)
    return counting.examples_read


def test_a_relevance_declaring_no_gradients_streams_the_data_once(registry):
    class ActivationNoGradients(Relevance):
        needs_gradients = False

        def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
            return signed_mean_activation(pair, upper_neurons).abs()

    class ActivationWithGradients(ActivationNoGradients):
        needs_gradients = True

    def plain_function(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return signed_mean_activation(pair, upper_neurons).abs()

    examples = 12
    measured = 2 + 3  # the memory budget's cost of an example, on two and on three
    # the first batch is read once to set up, then the data once for every pair ...
    assert forward_examples(ActivationNoGradients(), False, registry) == examples + measured
    # ... or once per layer pair (three pairs) when gradients are declared or unknown
    assert forward_examples(ActivationWithGradients(), True, registry) == 3 * examples + measured
    assert forward_examples(plain_function, True, registry) == 3 * examples + measured


def test_absolute_after_aggregation_takes_the_absolute_value_of_the_mean(registry):
    class AbsoluteOfMean(Relevance):
        needs_gradients = False
        absolute_after_aggregation = True
        absolute_applies = False

        def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
            return signed_mean_activation(pair, upper_neurons)

    model, layers, x = mlp_case()
    graph = StepwiseSensitivity(model, layers).attribute(
        x, target=1, relevance=AbsoluteOfMean(), percentile=0
    )
    with torch.no_grad():
        outputs: list[Tensor] = []
        handles = [
            layer.register_forward_hook(lambda m, a, o: outputs.append(o.clone()))
            for layer in layers
        ]
        model(x)
        for handle in handles:
            handle.remove()
    for layer, output in zip(graph.layer_names[:-1], outputs[:-1]):
        # |mean over examples| of the signed activation, which the mean of |.| is not
        torch.testing.assert_close(graph.relevance(layer), output.mean(0).abs())
    with pytest.raises(ValueError, match="needs aggregation='mean'"):
        StepwiseSensitivity(model, layers).attribute(
            x, target=1, relevance=AbsoluteOfMean(), aggregation="tukey"
        )


def test_absolute_false_is_an_error_where_it_does_not_apply_never_ignored(registry):
    class AlwaysAbsolute(Relevance):
        absolute_applies = False

        def __call__(self, pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
            return signed_mean_activation(pair, upper_neurons).abs()

    model, layers, x = mlp_case()
    ssa = StepwiseSensitivity(model, layers)
    for relevance in (AlwaysAbsolute(), *PRESETS):
        with pytest.raises(ValueError, match="fix where the absolute value goes"):
            ssa.attribute(x, target=1, relevance=relevance, absolute=False)


def test_a_plain_function_cannot_declare_by_attribute(registry):
    def duck(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return signed_mean_activation(pair, upper_neurons)

    duck.absolute_after_aggregation = True  # type: ignore[attr-defined]
    model, layers, x = mlp_case()
    with pytest.raises(TypeError, match=r"subclass captum_ssa\.relevance\.Relevance"):
        StepwiseSensitivity(model, layers).attribute(x, target=1, relevance=duck)


class TokenMLP(nn.Module):
    """A Linear over (N, T, F) token features (dim 1 is the sequence axis), then a
    head over the mean token: SSA's dim-1 default warns about the first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.first(x)).mean(1))


def test_warnings_point_at_the_users_line_for_tensors_and_streams():
    model = TokenMLP().eval()
    ssa = StepwiseSensitivity(model, [model.first, model.head])
    x, y = torch.randn(6, 2, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines = [sys._getframe().f_lineno + 1]
        ssa.attribute(x, target=1)
        lines.append(sys._getframe().f_lineno + 1)
        ssa.attribute(loader, target=1)
        lines.append(sys._getframe().f_lineno + 1)
        ssa.class_graphs(x, y, classes=[1])
        lines.append(sys._getframe().f_lineno + 1)
        ssa.class_graphs(loader, classes=[1])
    assert [(w.category, w.filename, w.lineno) for w in caught] == [
        (CaptumSSAWarning, __file__, line) for line in lines
    ]


def test_class_graphs_over_a_stream_takes_attributes_options_and_no_others():
    model, layers, x = mlp_case()
    y = torch.arange(len(x)) % 3
    ssa = StepwiseSensitivity(model, layers)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    streamed = ssa.class_graphs(loader, classes=[2], mode="local", branching=2)
    whole = ssa.attribute(x[y == 2], target=2, mode="local", branching=2)
    assert streamed[2].metadata == whole.metadata
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['brnaching'\\]"):
        ssa.class_graphs(loader, classes=[2], brnaching=2)
