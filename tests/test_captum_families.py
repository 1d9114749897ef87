"""Captum's generic test families, run on the package's four classes.

Captum tests its attribution methods with config-driven families
(``tests/attr/test_targets.py``, ``test_hook_removal.py``,
``test_dataloader_attr.py`` in its repository): a list of configs in the format
of :mod:`captum.testing.attr.helpers.test_config` names the algorithms, a model
from :mod:`captum.testing.helpers.basic_models`, a layer and the
``attribute`` arguments, and each family turns every applicable (config,
algorithm) pair into a test. The family modules are not shipped with Captum, so
their assertions are restated here, with the same helpers
(``parse_test_config``, ``get_target_layer``, ``gen_test_name``):

- **targets**: for a config whose ``target`` is a list or tensor, the batch
  result equals each example's own result with its own target (and with its
  target as a one-element list);
- **hook removal**: no forward, forward-pre or backward hook is left on any
  module after a normal call, after a call with a wrong target or neuron
  selector, and after the explained layer raises (Captum swaps in a module
  that raises at the first call; here the layer raises at its *k*-th call, for
  every call the method makes, since our methods run the model several times);
- **dataloader**: what Captum's ``DataLoaderAttribution`` asserts, the result
  over a ``DataLoader`` equals the concatenated results over its batches. Our
  ``attribute`` takes tensors, so this reads: batches of a ``DataLoader`` give
  the tensor's result, and where a method does read a ``DataLoader``
  (``fit`` of Insens and LayeredInfluence, ``attribute`` of SSA) its result
  from the loader equals its result from the tensor.

Our classes join configs shaped like Captum's own neuron configs (the same
models, layers and selectors) the way Captum registers its neuron methods, with
two adaptations: a fitted method is fitted on the config's inputs after it is
built, and our errors are ``ValueError``/``TypeError`` where Captum asserts
(Captum's classes keep Captum's ``AssertionError``). What does not apply is
left out on purpose: SSA returns one graph for the batch, so the targets family
(batch = per example) does not apply to it; Insens ignores ``target``, so a
wrong target is no error for it.

Captum's own entries for NeuronGradient (and NeuronConductance, Captum's neuron
method with a target) are taken from the shipped config and run as controls
with Captum's exact expectations, so a Captum release that changes the
contract shows up here.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import torch
from captum.attr import Attribution, NeuronConductance, NeuronGradient

# Captum's test helpers ship in the wheel from captum 0.9 on; the floors run (0.8) skips
pytest.importorskip("captum.testing", reason="captum.testing ships with captum 0.9 and later")
from captum.testing.attr.helpers.gen_test_utils import (
    gen_test_name,
    get_target_layer,
    parse_test_config,
)
from captum.testing.attr.helpers.test_config import config as captum_config
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import (
    DependencyGraph,
    InactiveStateSensitivity,
    LayeredInfluence,
    StepwiseSensitivity,
    SwitchedLinearProjection,
)
from tests.behaviour import assert_same_snapshot, snapshot
from tests.stepwise_sensitivity.test_passes import assert_same_graph

OURS = (SwitchedLinearProjection, InactiveStateSensitivity, LayeredInfluence, StepwiseSensitivity)
CONTROLS = (NeuronGradient, NeuronConductance)
FITTED = (InactiveStateSensitivity, LayeredInfluence)

_generator = torch.Generator().manual_seed(1234)


def _randn(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=_generator)


# Our classes in Captum's config format, shaped like Captum's neuron entries.
OUR_CONFIG: list[dict[str, Any]] = [
    {
        "name": "basic_neuron",
        "algorithms": [SwitchedLinearProjection, NeuronGradient],
        "model": BasicModel_MultiLayer(),
        "layer": "relu",
        "attribute_args": {"inputs": _randn(4, 3), "neuron_selector": 3},
    },
    {
        "name": "basic_neuron_pre_activation",
        "algorithms": [
            SwitchedLinearProjection,
            InactiveStateSensitivity,
            NeuronGradient,
        ],
        "model": BasicModel_MultiLayer(),
        "layer": "linear1",
        "attribute_args": {"inputs": 3 * _randn(6, 3), "neuron_selector": (slice(0, 3),)},
    },
    {
        "name": "conv_neuron",
        "algorithms": [
            SwitchedLinearProjection,
            InactiveStateSensitivity,
            NeuronGradient,
        ],
        "model": BasicModel_ConvNet(),
        "layer": "conv2",
        "attribute_args": {"inputs": 100 * _randn(4, 1, 10, 10), "neuron_selector": (0, 1, 0)},
    },
    {
        "name": "basic_neuron_multi_input",
        "algorithms": [SwitchedLinearProjection, NeuronGradient],
        "model": BasicModel_MultiLayer_MultiInput(),
        "layer": "model.relu",
        "attribute_args": {
            "inputs": (10 * _randn(12, 3), 5 * _randn(12, 3)),
            "additional_forward_args": (2 * _randn(12, 3), 5),
            "neuron_selector": (3,),
        },
    },
    {
        "name": "basic_neuron_multi_input_function_selector",
        "algorithms": [SwitchedLinearProjection, NeuronGradient],
        "model": BasicModel_MultiLayer_MultiInput(),
        "layer": "model.relu",
        "attribute_args": {
            "inputs": (10 * _randn(12, 3), 5 * _randn(12, 3)),
            "additional_forward_args": (2 * _randn(12, 3), 5),
            "neuron_selector": lambda x: torch.sum(x, 1),
        },
    },
    {
        "name": "basic_neuron_batch_sum_selector",
        "algorithms": [SwitchedLinearProjection, NeuronGradient],
        "model": BasicModel_MultiLayer(),
        "layer": "relu",
        "attribute_args": {"inputs": _randn(4, 3), "neuron_selector": lambda x: torch.sum(x)},
    },
    {
        "name": "conv_neuron_slice_selector",
        "algorithms": [
            SwitchedLinearProjection,
            InactiveStateSensitivity,
            NeuronGradient,
        ],
        "model": BasicModel_ConvNet(),
        "layer": "conv2",
        "attribute_args": {
            "inputs": 100 * _randn(4, 1, 10, 10),
            "neuron_selector": (slice(0, 2, 1), 1, slice(0, 2, 1)),
        },
    },
    # with targets: SLP's target picks a unit of the layer output, LayeredInfluence's a
    # class of the model output, Insens ignores it
    {
        "name": "basic_multiple_target",
        "algorithms": [SwitchedLinearProjection, InactiveStateSensitivity],
        "model": BasicModel_MultiLayer(),
        "layer": "linear2",
        "attribute_args": {"inputs": 3 * _randn(4, 3), "target": [0, 1, 1, 0]},
    },
    {
        "name": "basic_tensor_multiple_target",
        "algorithms": [SwitchedLinearProjection, InactiveStateSensitivity],
        "model": BasicModel_MultiLayer(),
        "layer": "linear1",
        "attribute_args": {"inputs": 3 * _randn(4, 3), "target": torch.tensor([0, 1, 1, 0])},
    },
    {
        "name": "basic_multi_input_multi_target",
        "algorithms": [SwitchedLinearProjection, InactiveStateSensitivity],
        "model": BasicModel_MultiLayer_MultiInput(),
        "layer": "model.linear2",
        "attribute_args": {
            "inputs": (10 * _randn(6, 3), 5 * _randn(6, 3)),
            "additional_forward_args": (2 * _randn(6, 3), 5),
            "target": [0, 1, 1, 0, 0, 1],
        },
    },
    # SSA: a list of layers, Captum's multi-layer form; one graph for the batch
    {
        "name": "basic_ssa",
        "algorithms": [StepwiseSensitivity],
        "model": BasicModel_MultiLayer(),
        "layer": ["linear1", "linear2"],
        "attribute_args": {"inputs": 3 * _randn(6, 3), "target": 1},
    },
    {
        "name": "conv_ssa_multiple_target",
        "algorithms": [StepwiseSensitivity],
        "model": BasicModel_ConvNet(),
        "layer": ["conv1", "conv2", "softmax"],
        "attribute_args": {"inputs": 10 * _randn(4, 1, 10, 10), "target": [0, 3, 3, 5]},
    },
]


# LayeredInfluence compares points the model labels differently, and Captum's basic
# models predict one class everywhere (their all-ones weights make every hidden unit
# of a layer alike): its entries are copies of ours whose all-ones layers get the
# first random weights under which the model predicts two classes on the inputs.
_ALL_ONES = {
    "basic_neuron_pre_activation": ["linear1", "linear2"],
    "conv_neuron": ["fc1", "fc2"],
    "conv_neuron_slice_selector": ["fc1", "fc2"],
    "basic_multiple_target": ["linear1", "linear2"],
    "basic_tensor_multiple_target": ["linear1", "linear2"],
    "basic_multi_input_multi_target": ["model.linear1", "model.linear2"],
}


def _predicts_two_classes(model: nn.Module, args: dict[str, Any]) -> bool:
    inputs = args["inputs"]
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        output = model(*inputs, *args.get("additional_forward_args", ()))
    return output.argmax(1).unique().numel() > 1


def _for_layered_influence(entry: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    for seed in itertools.count():
        model = copy.deepcopy(entry["model"])
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in layers:
                weight = get_target_layer(model, layer).weight
                weight.copy_(torch.randn(weight.shape, generator=generator))
        if _predicts_two_classes(model, entry["attribute_args"]):
            name = entry["name"] + "_two_classes"
            return {**entry, "name": name, "algorithms": [LayeredInfluence], "model": model}
    raise AssertionError("unreachable")


OUR_CONFIG += [
    _for_layered_influence(e, _ALL_ONES[e["name"]]) for e in OUR_CONFIG if e["name"] in _ALL_ONES
]


def _captum_controls() -> list[dict[str, Any]]:
    """Captum's own entries for its controls, restricted to them."""
    entries = []
    for entry in captum_config:
        algorithms = [a for a in entry["algorithms"] if a in CONTROLS]
        if algorithms and "layer" in entry and not entry.get("noise_tunnel", False):
            entries.append({**entry, "name": "captum_" + entry["name"], "algorithms": algorithms})
    return entries


CONFIG = OUR_CONFIG + _captum_controls()


def _cases(applies: Callable[[type, dict[str, Any]], bool], family: str) -> Iterator[Any]:
    for entry in CONFIG:
        algorithms, model, args, layer, noise_tunnel, baseline_distr = parse_test_config(entry)
        for algorithm in algorithms:
            if applies(algorithm, args):
                name = gen_test_name(family, entry["name"], algorithm, noise_tunnel)
                yield pytest.param(algorithm, model, args, layer, baseline_distr, id=name)


def _build(algorithm: type, model: nn.Module, layer: Any, args: dict[str, Any]) -> Attribution:
    """Construct as Captum does, ``algorithm(model, target_layer)``; fit where needed,
    on the config's own inputs."""
    explainer = algorithm(model, get_target_layer(model, layer))
    if algorithm in FITTED:
        explainer.fit(args["inputs"], additional_forward_args=args.get("additional_forward_args"))
    return explainer


def _attribute(explainer: Attribution, args: dict[str, Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's "did not already require gradients"
        return explainer.attribute(**args)


def _assert_same(a: Any, b: Any, delta: float) -> None:
    if isinstance(a, DependencyGraph):  # to float rounding, as SSA's own stream tests
        assert_same_graph(a, b)
        return
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    assert len(a) == len(b)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=delta)


def _example(args: dict[str, Any], i: int, batch: int) -> dict[str, Any]:
    """The arguments for example ``i`` alone, as Captum's targets family slices them."""
    single = dict(args)
    inputs = args["inputs"]
    single["inputs"] = (
        inputs[i : i + 1] if isinstance(inputs, Tensor) else tuple(t[i : i + 1] for t in inputs)
    )
    extra = args.get("additional_forward_args")
    if extra is not None:
        extra = extra if isinstance(extra, tuple) else (extra,)
        single["additional_forward_args"] = tuple(
            a[i : i + 1] if isinstance(a, Tensor) else a for a in extra
        )
    if "baselines" in args and isinstance(args["baselines"], Tensor):
        single["baselines"] = args["baselines"][i : i + 1]
    target = args.get("target")
    if isinstance(target, (list, Tensor)) and len(target) == batch:
        single["target"] = target[i]
    return single


def _batch_size(args: dict[str, Any]) -> int:
    inputs = args["inputs"]
    return len(inputs) if isinstance(inputs, Tensor) else len(inputs[0])


# ----------------------------------------------------------------------- targets


def _targets_apply(algorithm: type, args: dict[str, Any]) -> bool:
    return algorithm is not StepwiseSensitivity and isinstance(args.get("target"), (list, Tensor))


@pytest.mark.parametrize(
    ("algorithm", "model", "args", "layer", "baseline_distr"),
    list(_cases(_targets_apply, "test_target")),
)
def test_target(algorithm, model, args, layer, baseline_distr):
    model, args = copy.deepcopy((model, args))
    explainer = _build(algorithm, model, layer, args)
    whole = _attribute(explainer, args)
    batch = _batch_size(args)
    for i in range(batch):
        single = _example(args, i, batch)
        if baseline_distr:
            single["baselines"] = args["baselines"]
        expected = (
            whole[i : i + 1] if isinstance(whole, Tensor) else tuple(w[i : i + 1] for w in whole)
        )
        _assert_same(_attribute(explainer, single), expected, 1e-4)
        if len(args["target"]) == batch:  # and with the target as a one-element list
            single["target"] = args["target"][i : i + 1]
            _assert_same(_attribute(explainer, single), expected, 1e-4)


# ------------------------------------------------------------------ hook removal


def _check_no_hooks(model: nn.Module) -> None:
    for module in model.modules():
        assert len(module._forward_hooks) == 0
        assert len(module._backward_hooks) == 0
        assert len(module._forward_pre_hooks) == 0


def _first_layer(model: nn.Module, layer: Any) -> nn.Module:
    return get_target_layer(model, layer[0] if isinstance(layer, list) else layer)


def _calls_of(explainer: Attribution, module: nn.Module, args: dict[str, Any]) -> int:
    """How many times a normal call runs ``module``."""
    original = module.forward
    calls = itertools.count()

    def counted(*a: Any, **k: Any) -> Any:
        next(calls)
        return original(*a, **k)

    module.forward = counted  # type: ignore[method-assign]
    try:
        _attribute(explainer, args)
    finally:
        del module.forward
    return next(calls)


def _raise_at_call(module: nn.Module, k: int) -> None:
    """Make ``module`` raise, as Captum's ErrorModule does, at its ``k``-th call."""
    original = module.forward
    calls = itertools.count(1)

    def failing(*a: Any, **kw: Any) -> Any:
        if next(calls) == k:
            raise AssertionError("Raising error on execution")
        return original(*a, **kw)

    module.forward = failing  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("algorithm", "model", "args", "layer", "baseline_distr"),
    list(_cases(lambda algorithm, args: True, "test_hook_removal")),
)
def test_hook_removal(algorithm, model, args, layer, baseline_distr):
    ours = algorithm in OURS
    check = (
        (lambda m, before: assert_same_snapshot(before, snapshot(m)))
        if ours
        else (lambda m, before: _check_no_hooks(m))
    )

    # normal
    model, args = copy.deepcopy((model, args))
    before = snapshot(model)
    explainer = _build(algorithm, model, layer, args)
    _attribute(explainer, args)
    check(model, before)

    # incorrect target or neuron: Captum's classes assert, ours raise their own errors
    wrong = dict(args)
    if "target" in args and algorithm is not InactiveStateSensitivity:  # Insens ignores it
        wrong["target"] = (9999,) * 20
    if "neuron_selector" in args:
        wrong["neuron_selector"] = (9999,) * 20
    if wrong != args:
        with pytest.raises(Exception) as raised:
            _attribute(explainer, wrong)
        if not ours:
            assert raised.type is AssertionError
        check(model, before)

    # the explained layer raises, at each call the method makes
    module = _first_layer(model, layer)
    for k in range(1, _calls_of(explainer, module, args) + 1):
        _raise_at_call(module, k)
        try:
            with pytest.raises(AssertionError, match="Raising error on execution"):
                _attribute(explainer, args)
        finally:
            del module.forward
        check(model, before)


# -------------------------------------------------------------------- dataloader


def _loader(args: dict[str, Any], batch_size: int) -> tuple[DataLoader, list[dict[str, Any]]]:
    """A DataLoader over the inputs, and the arguments of each of its batches."""
    inputs = args["inputs"]
    tensors = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    batch = _batch_size(args)
    starts = range(0, batch, batch_size)
    per_batch = []
    for start in starts:
        rows = slice(start, start + batch_size)
        part = dict(args)
        part["inputs"] = (
            inputs[rows] if isinstance(inputs, Tensor) else tuple(t[rows] for t in inputs)
        )
        extra = args.get("additional_forward_args")
        if extra is not None:
            part["additional_forward_args"] = tuple(
                a[rows] if isinstance(a, Tensor) else a for a in extra
            )
        target = args.get("target")
        if isinstance(target, (list, Tensor)) and len(target) == batch:
            part["target"] = target[rows]
        per_batch.append(part)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size), per_batch


def _concatenated(results: list[Any]) -> Any:
    if isinstance(results[0], Tensor):
        return torch.cat(results)
    return tuple(torch.cat(parts) for parts in zip(*results))


@pytest.mark.parametrize(
    ("algorithm", "model", "args", "layer", "baseline_distr"),
    list(_cases(lambda algorithm, args: True, "test_dataloader")),
)
def test_dataloader(algorithm, model, args, layer, baseline_distr):
    model, args = copy.deepcopy((model, args))
    loader, per_batch = _loader(args, batch_size=2)
    explainer = _build(algorithm, model, layer, args)
    whole = _attribute(explainer, args)
    if algorithm is StepwiseSensitivity:
        # SSA reads the stream itself: the graph of the loader is the tensor's
        target = args.get("target")
        if isinstance(target, (list, Tensor)):  # one per example: the stream's labels
            labelled = TensorDataset(*loader.dataset.tensors, torch.as_tensor(target))
            loader, target = DataLoader(labelled, batch_size=2), "labels"
        streamed = _attribute(explainer, {**args, "inputs": loader, "target": target})
        _assert_same(streamed, whole, 0.0)
        return
    # DataLoaderAttribution's default reduce: the batches' results concatenated
    _assert_same(_concatenated([_attribute(explainer, part) for part in per_batch]), whole, 1e-5)
    if algorithm in FITTED and "additional_forward_args" not in args:
        # a fit from the loader equals the fit from the tensor
        from_loader = algorithm(model, get_target_layer(model, layer)).fit(loader)
        _assert_same(_attribute(from_loader, args), whole, 1e-5)
