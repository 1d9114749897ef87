"""The model's output selected by ``output=`` (``captum_ssa/_utils/model_output.py``), for
all four methods and the graph evaluations: models written here that return a dict, a
tuple, a namedtuple or an object with ``.logits``, explained with a key, an index, a
callable or the default, equal the same model returning its logits as a tensor; and the
errors name what the model returns."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from captum_ssa import (
    InactiveStateSensitivity,
    LayeredInfluence,
    StepwiseSensitivity,
    SwitchedLinearProjection,
    ablation_importance,
    ensemble_predict,
    evaluate_graph,
)
from captum_ssa._utils.model_output import describe_output, select_output
from tests.behaviour import hooks_left


class Pair(NamedTuple):
    hidden: Tensor
    scores: Tensor


class Scored:
    """An output object with its logits as an attribute (what a dataclass output is)."""

    def __init__(self, hidden: Tensor, logits: Tensor) -> None:
        self.hidden = hidden
        self.logits = logits


class FakeModelOutput(OrderedDict):
    """What transformers' ``ModelOutput`` is to the selector: a dict whose integer
    indexing counts its entries (``to_tuple``)."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())


# What each kind of model returns, from its hidden features and its logits.
RETURNS = {
    "tensor": lambda hidden, logits: logits,
    "dict": lambda hidden, logits: {"hidden": hidden, "scores": logits},
    "dict_logits": lambda hidden, logits: {"hidden": hidden, "logits": logits},
    "tuple": lambda hidden, logits: (hidden, logits),
    "list": lambda hidden, logits: [hidden, logits],
    "namedtuple": lambda hidden, logits: Pair(hidden, logits),
    "object": lambda hidden, logits: Scored(hidden, logits),
    "model_output": lambda hidden, logits: FakeModelOutput(hidden=hidden, logits=logits),
}


class Classifier(nn.Module):
    """fc1 -> ReLU -> fc2 -> ReLU -> fc3, returning its logits as ``returns`` says; the
    same weights and module names for every ``returns`` (one seed)."""

    def __init__(self, returns: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(5, 8)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 7)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(7, 3)
        self.returns = returns

    def forward(self, x: Tensor) -> Any:
        hidden = self.relu2(self.fc2(self.relu1(self.fc1(x))))
        return RETURNS[self.returns](hidden, self.fc3(hidden))


def model(returns: str = "tensor") -> Classifier:
    return Classifier(returns).double().eval()


def data() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    reference = 2 * torch.randn(40, 5, generator=generator, dtype=torch.float64)
    return x, torch.tensor([0, 1, 2, 0, 1, 2]), reference


# Each kind of output, with the selectors that find its logits (None: the default).
SELECTIONS = [
    ("dict", "scores"),
    ("dict", lambda output: output["scores"]),
    ("dict_logits", None),
    ("dict_logits", "logits"),
    ("tuple", 1),
    ("tuple", -1),
    ("list", 1),
    ("namedtuple", "scores"),
    ("namedtuple", 1),
    ("object", None),
    ("object", "logits"),
    ("model_output", None),
    ("model_output", 1),
    ("model_output", "logits"),
]
SELECTION_IDS = [
    f"{kind}-{'callable' if callable(output) else output!r}" for kind, output in SELECTIONS
]


def explanations(net: Classifier, output: Any) -> dict[str, Any]:
    """What every method says about ``data()`` on ``net``, ``output=`` as given."""
    x, y, reference = data()
    layers = [net.fc1, net.fc2, net.fc3]
    influence = LayeredInfluence(net, layers[:2], output=output).fit(reference)
    insens = InactiveStateSensitivity(net, net.fc2, output=output).fit(reference)
    return {
        "ssa": StepwiseSensitivity(net, layers, output=output).attribute(x, target=y),
        "slp": SwitchedLinearProjection(net, net.fc3, output=output).attribute(x, target=y),
        "insens": insens.attribute(x),
        "chosen": influence.chosen_layer_name,
        "scores": influence.layer_scores,
        "influence": influence.influence(x, target=y),
        "deconvnet": influence.attribute(x),
    }


@pytest.mark.parametrize(("kind", "output"), SELECTIONS, ids=SELECTION_IDS)
def test_every_method_on_a_selected_output_equals_the_tensor_model(kind, output):
    expected = explanations(model("tensor"), None)
    net = model(kind)
    results = explanations(net, output)
    assert results["ssa"] == expected["ssa"]
    assert results["chosen"] == expected["chosen"]
    assert results["scores"] == pytest.approx(expected["scores"], abs=1e-12)
    for name in ("slp", "insens", "influence", "deconvnet"):
        torch.testing.assert_close(results[name], expected[name], atol=1e-12, rtol=0)
    assert hooks_left(net) == 0


def test_the_forward_func_attribute_is_the_users():
    net = model("dict")
    for explainer in (
        StepwiseSensitivity(net, [net.fc1, net.fc3], output="scores"),
        SwitchedLinearProjection(net, net.fc3, output="scores"),
        InactiveStateSensitivity(net, net.fc2, output="scores"),
        LayeredInfluence(net, [net.fc1], output="scores"),
    ):
        assert explainer.forward_func is net
        assert explainer.output == "scores"


@pytest.mark.parametrize(("kind", "output"), SELECTIONS, ids=SELECTION_IDS)
def test_graph_evaluations_on_a_selected_output_equal_the_tensor_model(kind, output):
    x, y, _ = data()
    plain, net = model("tensor"), model(kind)
    layers = [plain.fc1, plain.fc2, plain.fc3]
    graphs = StepwiseSensitivity(plain, layers).class_graphs(x, y)
    graph = graphs[1]
    assert evaluate_graph(net, graph, x, y, output=output) == evaluate_graph(plain, graph, x, y)
    assert torch.equal(
        ensemble_predict(net, graphs, x, output=output), ensemble_predict(plain, graphs, x)
    )
    torch.testing.assert_close(
        ablation_importance(net, "fc2", x, y, metric="loss", output=output),
        ablation_importance(plain, "fc2", x, y, metric="loss"),
    )


# ------------------------------------------------------------------------ errors

DICT_FOUND = r"dict with keys \{'hidden': \(\d+, 7\), 'scores': \(\d+, 3\)\}"


def test_a_target_on_an_output_without_logits_says_what_the_model_returns():
    x, y, reference = data()
    net = model("dict")
    with pytest.raises(TypeError, match=DICT_FOUND + r".*pass output="):
        StepwiseSensitivity(net, [net.fc1, net.fc3]).attribute(x, target=y)
    with pytest.raises(TypeError, match=r"labels points by the model's prediction.*pass output="):
        LayeredInfluence(net, [net.fc1]).fit(reference)
    plain = model()
    graph = StepwiseSensitivity(plain, [plain.fc1, plain.fc3]).attribute(x)
    with pytest.raises(TypeError, match=DICT_FOUND + r".*pass output="):
        evaluate_graph(net, graph, x, y)  # the graph's layers, found by name
    assert hooks_left(net) == 0


def test_methods_that_never_read_the_output_take_any_output_by_default():
    # SLP chooses its neuron in the layer, Insens has no target, SSA without a target
    # starts from the top layer: none of them reads the model's output
    x, y, reference = data()
    expected = model("tensor")
    net = model("dict")
    torch.testing.assert_close(
        SwitchedLinearProjection(net, net.fc2).attribute(x, target=y),
        SwitchedLinearProjection(expected, expected.fc2).attribute(x, target=y),
    )
    torch.testing.assert_close(
        InactiveStateSensitivity(net, net.fc2).fit(reference).attribute(x),
        InactiveStateSensitivity(expected, expected.fc2).fit(reference).attribute(x),
    )
    assert StepwiseSensitivity(net, [net.fc1, net.fc3]).attribute(x) == StepwiseSensitivity(
        expected, [expected.fc1, expected.fc3]
    ).attribute(x)


@pytest.mark.parametrize(
    ("kind", "output", "error", "message"),
    [
        ("dict", "logits", ValueError, r"output='logits', but the model returns a " + DICT_FOUND),
        ("namedtuple", "logits", ValueError, r"namedtuple Pair\(hidden: \(\d+, 7\), scores: "),
        ("tuple", 2, ValueError, r"output=2 is out of range: .*tuple of 2 \(\[0\]: \(\d+, 7\)"),
        ("dict", 0, ValueError, r"output=0 indexes a tuple or list, but .*" + DICT_FOUND),
        ("object", 0, ValueError, r"output=0 indexes .* Scored with tensor attributes \(hidden"),
        ("tensor", "logits", ValueError, r"output='logits', but the model returns a tensor"),
        ("dict", lambda out: out["hidden"].shape, TypeError, r"returns a Size of 2 .*, not"),
        ("model_output", 2, ValueError, r"out of range: .*FakeModelOutput with keys"),
    ],
)
def test_a_selector_that_finds_no_tensor_lists_what_the_model_returns(kind, output, error, message):
    x, y, reference = data()
    net = model(kind)
    explainers = [
        lambda: StepwiseSensitivity(net, [net.fc1, net.fc3], output=output).attribute(x, target=y),
        lambda: SwitchedLinearProjection(net, net.fc3, output=output).attribute(x, target=y),
        lambda: InactiveStateSensitivity(net, net.fc2, output=output).fit(reference),
        lambda: LayeredInfluence(net, [net.fc1], output=output).fit(reference),
    ]
    for explain in explainers:
        with pytest.raises(error, match=message):
            explain()
    assert hooks_left(net) == 0


@pytest.mark.parametrize("output", [1.5, True, ["logits"], b"logits"])
def test_an_output_of_another_form_is_refused_by_the_constructor(output):
    net = model()
    for build in (
        lambda: StepwiseSensitivity(net, [net.fc1, net.fc3], output=output),
        lambda: SwitchedLinearProjection(net, net.fc3, output=output),
        lambda: InactiveStateSensitivity(net, net.fc2, output=output),
        lambda: LayeredInfluence(net, [net.fc1], output=output),
    ):
        with pytest.raises(TypeError, match="output must be None, a key or attribute name"):
            build()


def test_output_is_the_last_keyword_of_every_constructor():
    import inspect

    for method in (
        StepwiseSensitivity,
        SwitchedLinearProjection,
        InactiveStateSensitivity,
        LayeredInfluence,
    ):
        parameters = list(inspect.signature(method.__init__).parameters)
        assert parameters[-1] == "output", method.__name__


# --------------------------------------------------------------- the selector


def test_the_default_takes_a_tensor_or_the_logits_and_leaves_anything_else():
    logits, hidden = torch.randn(2, 3), torch.randn(2, 4)
    assert select_output(logits, None) is logits
    assert select_output({"logits": logits, "hidden": hidden}, None) is logits
    assert select_output(Scored(hidden, logits), None) is logits
    raw = (hidden, logits)
    assert select_output(raw, None) is raw  # a tuple has no logits: the readers decide
    unset = {"logits": None, "x": hidden}  # a ModelOutput's unset logits read as None
    assert select_output(unset, None) is unset


def test_an_integer_key_of_a_dict_is_a_key():
    logits = torch.randn(2, 3)
    assert select_output({1: logits, 0: torch.zeros(1)}, 1) is logits


def test_the_description_names_nested_and_non_tensor_entries():
    described = describe_output({"logits": torch.zeros(2, 3), "cache": (1, 2), "n": None})
    assert described == "a dict with keys {'logits': (2, 3), 'cache': tuple of 2, 'n': NoneType}"
