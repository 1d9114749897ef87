"""Compiled and wrapped models (``captum_ssa/_utils/compiled.py``): a ``torch.compile``d
module, a compiled function, a function that calls a compiled module, and a
``DistributedDataParallel`` model are explained through the module the user wrote, with
the user's layers: every method gives the uncompiled model's result, warns what it warns,
and leaves the model as it was. ``backend="eager"`` and ``"aot_eager"`` make the same
``OptimizedModule`` as the default backend without a C compiler; ``aot_eager`` also gives
the compiled backward (``CompiledFunction``) the methods used to trip over."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from captum_ssa import (
    CaptumSSAWarning,
    InactiveStateSensitivity,
    LayeredInfluence,
    StepwiseSensitivity,
    SwitchedLinearProjection,
    evaluate_graph,
)
from captum_ssa._utils.compiled import eager
from tests.behaviour import assert_same_snapshot, hooks_left, snapshot
from tests.test_captum_contract import METHODS, _reference_like, cnn, ids, same

TOLERANCE = {"atol": 1e-6, "rtol": 0}


def compiled_or_skip(model: nn.Module, backend: str, x: Tensor) -> Any:
    """``torch.compile(model, backend=backend)``, run once on ``x`` so that its code for
    inputs shaped so is compiled."""
    try:
        compiled = torch.compile(model, backend=backend)
        compiled(x)
    except Exception as error:  # torch.compile unavailable on this platform
        pytest.skip(f"torch.compile cannot run here: {error}")
    return compiled


@pytest.fixture(scope="module", params=["eager", "aot_eager"])
def compiled_cnn(request: Any) -> tuple[Any, nn.Module, list[nn.Module], Tensor, Tensor]:
    """The contract's CNN compiled (one compilation per backend for the module's tests:
    every explanation leaves the model as it was)."""
    model, layers, x, y = cnn()
    return compiled_or_skip(model, request.param, x), model, layers, x, y


def explained(method: Any, model: Any, layers: list[nn.Module], x: Tensor, y: Tensor) -> Any:
    """``method``'s result on ``model`` and the warnings it gave, as messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = method.explain(method.build(model, layers, x), x, y)
    return result, sorted(str(w.message) for w in caught if w.category is CaptumSSAWarning)


# The forms a compiled model reaches an explainer in, each with its uncompiled
# counterpart (a function names layers by their class, a module by their names): the
# compiled module itself, and a function that calls it (run eagerly under
# torch.compiler's "force_eager" stance).
FORMS: dict[str, Callable[[Any], Any]] = {
    "module": lambda model: model,
    "calling function": lambda model: lambda x: model(x),
}
NEEDS_STANCE = {"calling function"}


def form_or_skip(name: str, compiled: Any, model: nn.Module) -> tuple[Any, Any]:
    """``(the compiled form, the same form of the uncompiled model)``."""
    if name in NEEDS_STANCE and not hasattr(torch.compiler, "set_stance"):
        pytest.skip("a function calling a compiled model runs eagerly from torch 2.6 on")
    return FORMS[name](compiled), FORMS[name](model)


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_a_compiled_module_gives_the_uncompiled_result(method, compiled_cnn):
    compiled, model, layers, x, y = compiled_cnn
    expected, expected_warnings = explained(method, model, layers, x, y)
    before = snapshot(model)
    training = compiled.training
    result, result_warnings = explained(method, compiled, layers, x, y)
    same(result, expected, **TOLERANCE)
    assert result_warnings == expected_warnings  # no "did not run", no CompiledFunction
    assert_same_snapshot(before, snapshot(model))
    assert compiled.training is training and hooks_left(compiled) == 0


# LayeredInfluence.attribute needs the module (DeconvNet overrides its nn.ReLU
# modules): a function is explained by fit and influence.
FUNCTION_METHODS = [m for m in METHODS if m.name != "LayeredInfluence"]


@pytest.mark.parametrize("method", FUNCTION_METHODS, ids=ids(FUNCTION_METHODS))
def test_a_function_calling_a_compiled_module_gives_the_uncompiled_result(method, compiled_cnn):
    compiled, model, layers, x, y = compiled_cnn
    forward, uncompiled = form_or_skip("calling function", compiled, model)
    expected, expected_warnings = explained(method, uncompiled, layers, x, y)
    before = snapshot(model)
    result, result_warnings = explained(method, forward, layers, x, y)
    same(result, expected, **TOLERANCE)
    assert result_warnings == expected_warnings
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("method", FUNCTION_METHODS, ids=ids(FUNCTION_METHODS))
def test_a_compiled_function_gives_the_uncompiled_result(method):
    model, layers, x, y = cnn()
    try:
        forward = torch.compile(lambda inputs: model(inputs), backend="eager")
    except Exception as error:
        pytest.skip(f"torch.compile cannot run here: {error}")
    expected, expected_warnings = explained(method, lambda inputs: model(inputs), layers, x, y)
    result, result_warnings = explained(method, forward, layers, x, y)
    same(result, expected, **TOLERANCE)
    assert result_warnings == expected_warnings
    assert hooks_left(model) == 0


@pytest.mark.parametrize("form", list(FORMS))
def test_layered_influence_fits_and_scores_through_a_compiled_model(form, compiled_cnn):
    compiled, model, layers, x, y = compiled_cnn
    forward, uncompiled = form_or_skip(form, compiled, model)
    reference = _reference_like(x)
    expected = LayeredInfluence(uncompiled, layers[:-1]).fit(reference)
    explainer = LayeredInfluence(forward, layers[:-1]).fit(reference)
    assert explainer.layer_scores == pytest.approx(expected.layer_scores, abs=1e-6)
    assert explainer.chosen_layer_name == expected.chosen_layer_name
    torch.testing.assert_close(
        explainer.influence(x, target=y), expected.influence(x, target=y), **TOLERANCE
    )


@pytest.mark.parametrize("jacobian_mode", ["forward", "reverse"])
@pytest.mark.parametrize("form", list(FORMS))
def test_insens_jacobians_run_through_a_compiled_model(form, jacobian_mode, compiled_cnn):
    # forward mode runs the model under torch.func.jvp, which refuses compiled backwards
    compiled, model, layers, x, _ = compiled_cnn
    forward, uncompiled = form_or_skip(form, compiled, model)
    reference = _reference_like(x)
    expected = InactiveStateSensitivity(uncompiled, layers[0]).fit(reference)
    explainer = InactiveStateSensitivity(forward, layers[0]).fit(reference)
    torch.testing.assert_close(
        explainer.attribute(x, jacobian_mode=jacobian_mode),
        expected.attribute(x, jacobian_mode=jacobian_mode),
        **TOLERANCE,
    )


@pytest.mark.parametrize("form", list(FORMS))
def test_slp_on_a_compiled_relu_net_does_not_warn(form, compiled_cnn):
    compiled, model, layers, x, y = compiled_cnn
    forward, uncompiled = form_or_skip(form, compiled, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptumSSAWarning)
        weights, _ = SwitchedLinearProjection(forward, layers[-1]).attribute(
            x, target=y, baselines=0.0, return_convergence_delta=True
        )
    expected = SwitchedLinearProjection(uncompiled, layers[-1]).attribute(x, target=y)
    torch.testing.assert_close(weights, expected, **TOLERANCE)


def test_graph_mask_and_evaluation_run_a_compiled_model_as_written(compiled_cnn):
    compiled, model, layers, x, y = compiled_cnn
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip("a compiled model runs eagerly inside graph.mask from torch 2.6 on")
    graph = StepwiseSensitivity(model, layers).attribute(x, target=1)
    with torch.no_grad():
        with graph.mask(model):
            expected = model(x)
        with graph.mask(compiled):
            masked = compiled(x)
    assert not torch.allclose(expected, model(x))  # the mask changes the output
    torch.testing.assert_close(masked, expected, **TOLERANCE)
    assert evaluate_graph(compiled, graph, x, y) == evaluate_graph(model, graph, x, y)
    assert hooks_left(model) == 0


# ------------------------------------------------------ torch without set_stance


def test_without_set_stance_graph_mask_refuses_a_compiled_model(compiled_cnn, monkeypatch):
    compiled, model, layers, x, _ = compiled_cnn
    graph = StepwiseSensitivity(model, layers).attribute(x, target=1)
    monkeypatch.delattr(torch.compiler, "set_stance", raising=False)
    refused = pytest.raises(TypeError, match=r"torch.compile'd.*Pass the original module")
    with refused, graph.mask(compiled):
        pass
    assert hooks_left(model) == 0
    # the module itself, and an evaluation (which runs the original), still work
    with graph.mask(model):
        pass
    evaluate_graph(compiled, graph, x, torch.zeros(len(x), dtype=torch.long))


def test_without_set_stance_a_layer_that_never_ran_may_be_behind_compiled_code(monkeypatch):
    # compiled code calls no hook that it did not trace: a layer that never ran is then
    # the likely sign of a compiled model inside forward_func (torch before 2.6)
    model, layers, x, y = cnn()
    skipped = lambda inputs: model.fc2(torch.zeros(len(inputs), 6))  # noqa: E731
    monkeypatch.delattr(torch.compiler, "set_stance", raising=False)
    with pytest.raises(ValueError, match=r"did not run.*torch.compile'd model inside"):
        StepwiseSensitivity(skipped, layers).attribute(x, target=y)
    monkeypatch.undo()
    if hasattr(torch.compiler, "set_stance"):  # where compiled code runs eagerly: no hint
        with pytest.raises(ValueError, match=r"did not run") as raised:
            StepwiseSensitivity(skipped, layers).attribute(x, target=y)
        assert "torch.compile" not in str(raised.value)
    assert hooks_left(model) == 0


# ---------------------------------------------------------- DistributedDataParallel


@pytest.fixture
def process_group(tmp_path: Any) -> Any:
    """A one-process gloo group, for a ``DistributedDataParallel`` on the CPU."""
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group of the test run's own")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_distributed_data_parallel_is_explained_through_its_module(method, process_group):
    model, layers, x, y = cnn()
    expected, expected_warnings = explained(method, model, layers, x, y)
    wrapped = nn.parallel.DistributedDataParallel(model)
    # its forward would broadcast buffers and prepare gradient buckets: it never runs
    calls = []
    wrapped.register_forward_pre_hook(lambda *_: calls.append(1))
    before = snapshot(model)
    result, result_warnings = explained(method, wrapped, layers, x, y)
    same(result, expected, **TOLERANCE)
    assert result_warnings == expected_warnings
    assert not calls
    assert_same_snapshot(before, snapshot(model))


# ---------------------------------------------------------------- the stance


def current_stance() -> str:
    from torch._dynamo import eval_frame

    return eval_frame._stance.stance


def test_the_eager_stance_holds_while_any_thread_needs_it_and_is_restored(compiled_cnn):
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip("torch.compiler.set_stance exists from torch 2.6 on")
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def first() -> None:
        with eager():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        try:
            first_in.wait(5)
            with eager():
                second_in.set()
                first_out.wait(5)
                seen.append(current_stance())  # the first has left, this one has not
        except BaseException as error:  # reported in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and seen == ["force_eager"]
    assert current_stance() == "default"


def test_concurrent_explanations_through_a_compiled_model_keep_their_results(compiled_cnn):
    compiled, model, layers, x, y = compiled_cnn
    forward, uncompiled = form_or_skip("calling function", compiled, model)
    expected = SwitchedLinearProjection(uncompiled, layers[-1]).attribute(x, target=y)
    results: list[Tensor] = []

    def explain() -> None:
        for _ in range(3):
            results.append(SwitchedLinearProjection(forward, layers[-1]).attribute(x, target=y))

    threads = [threading.Thread(target=explain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    for result in results:
        torch.testing.assert_close(result, expected, **TOLERANCE)
    assert current_stance() == "default"
