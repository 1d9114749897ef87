"""Layer capture across threads and wrappers (``captum_ssa/_utils/hooks.py``), for all
four methods: a forward that runs the model in a worker thread, ``nn.DataParallel``
(on the CPU it calls the model itself; on two or more GPUs its replicas run in
threads, which the capture refuses with a clear error), concurrent explanations
that share a model or not, and the user's layer names inside wrappers
(DataParallel's ``module``, ``torch.compile``'s ``_orig_mod``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from captum_ssa import (
    DependencyGraph,
    InactiveStateSensitivity,
    LayeredInfluence,
    StepwiseSensitivity,
)
from captum_ssa._utils.hooks import modules_by_name, unique_layer_names
from tests.behaviour import hooks_left
from tests.models import build
from tests.test_captum_contract import METHODS, _reference_like, ids, same


def cnn(seed: int = 5) -> tuple[nn.Module, list[nn.Module], Tensor, Tensor]:
    """conv-BN-ReLU-pool-conv-ReLU-pool-fc-ReLU-fc (eval mode), a batch and targets."""
    model, named, shape = build("cnn_bn", seed)
    generator = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(4, *shape, generator=generator)
    return model, list(named.values()), x, torch.tensor([0, 2, 1, 2])


class Eager(nn.Module):
    """The model inside a wrapper (its layers named ``model.<name>``), called in the
    caller's thread: what the wrappers below compute, and how they name layers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor) -> Tensor:
        return self.model(*args)


class InPool(Eager):
    """Runs the model in a worker thread of a ``ThreadPoolExecutor`` and returns its
    output, as serving wrappers do (exceptions come back through the future)."""

    def forward(self, *args: Tensor) -> Tensor:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self.model, *args).result()


class InThread(Eager):
    """Runs the model in a ``threading.Thread``, passing its exceptions on."""

    def forward(self, *args: Tensor) -> Tensor:
        result: list[Tensor] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(self.model(*args))
            except BaseException as error:  # passed on to the caller's thread
                errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]


def _replica(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as ``torch.nn.parallel.replicate`` makes one: every module
    shallow-copied, sharing its hooks with the original, on the same weights."""
    copies = {module: module._replicate_for_data_parallel() for module in model.modules()}
    for module, copy in copies.items():
        copy._modules = {name: copies[child] for name, child in module._modules.items()}
        copy._parameters = dict(module._parameters)
    return copies[model]


class CpuDataParallel(nn.Module):
    """``nn.DataParallel``'s forward on two or more GPUs, on the CPU: a replica per
    chunk of the batch, each in its own thread, the outputs concatenated."""

    def __init__(self, model: nn.Module, copies: int = 2) -> None:
        super().__init__()
        self.module = model
        self.copies = copies

    def forward(self, x: Tensor) -> Tensor:
        replicas = [_replica(self.module) for _ in range(self.copies)]
        with ThreadPoolExecutor(self.copies) as pool:
            outputs = list(pool.map(lambda r, c: r(c), replicas, x.chunk(self.copies)))
        return torch.cat(outputs)


# -------------------------------------------------------------- worker threads


@pytest.mark.parametrize("wrapper", [InPool, InThread], ids=["pool", "thread"])
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_a_forward_in_a_worker_thread_gives_the_eager_result(method, wrapper):
    model, layers, x, y = cnn()
    expected = method.explain(method.build(Eager(model), layers, x), x, y)
    same(method.explain(method.build(wrapper(model), layers, x), x, y), expected)
    assert hooks_left(model) == 0


@pytest.mark.parametrize("jacobian_mode", ["auto", "reverse"])
def test_insens_in_a_worker_thread_leaves_forward_mode_for_reverse(jacobian_mode):
    # conv1's units outnumber the input's features: "auto" picks forward mode, whose
    # torch.func.jvp does not follow the forward into the worker thread
    model, layers, x, y = cnn()
    reference = _reference_like(x)
    expected = (
        InactiveStateSensitivity(Eager(model), layers[0])
        .fit(reference)
        .attribute(x, target=y, jacobian_mode="forward")
    )
    threaded = InactiveStateSensitivity(InPool(model), layers[0]).fit(reference)
    result = threaded.attribute(x, target=y, jacobian_mode=jacobian_mode)
    torch.testing.assert_close(result, expected)
    with pytest.raises(RuntimeError, match="jacobian_mode='forward' cannot be used here"):
        threaded.attribute(x, target=y, jacobian_mode="forward")
    assert hooks_left(model) == 0


# ---------------------------------------------------------------- DataParallel


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_data_parallel_on_the_cpu_gives_the_eager_result(method):
    model, layers, x, y = cnn()
    expected = method.explain(method.build(model, layers, x), x, y)
    wrapped = nn.DataParallel(model)  # without GPUs it calls the model itself
    same(method.explain(method.build(wrapped, layers, x), x, y), expected)
    assert hooks_left(model) == 0


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_data_parallel_replicas_are_a_clear_error(method):
    model, layers, x, y = cnn()
    with pytest.raises(RuntimeError, match=r"DataParallel's replicas.*model\.module"):
        method.explain(method.build(CpuDataParallel(model), layers, x), x, y)
    assert hooks_left(model) == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_data_parallel_over_gpus_is_a_clear_error(method):
    model, layers, x, y = cnn()
    model.cuda()
    with pytest.raises(RuntimeError, match=r"DataParallel's replicas.*model\.module"):
        method.explain(method.build(nn.DataParallel(model), layers, x.cuda()), x.cuda(), y.cuda())
    assert hooks_left(model) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_data_parallel_on_one_gpu_gives_the_cpu_result(method):
    model, layers, x, y = cnn()
    expected = method.explain(method.build(model, layers, x), x, y)
    model.cuda()
    x, y = x.cuda(), y.cuda()
    wrapped = nn.DataParallel(model, device_ids=[0])  # calls the model itself
    result = method.explain(method.build(wrapped, layers, x), x, y)
    if isinstance(result, DependencyGraph):  # the same neurons (other kernels)
        assert result.layer_names == expected.layer_names
        for name in result.layer_names:
            assert torch.equal(result.neurons(name), expected.neurons(name))
    else:
        torch.testing.assert_close(result.cpu(), expected, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------- concurrent explanations


def _explain_concurrently(method: Any, jobs: list[tuple[Any, Tensor, Tensor]]) -> None:
    """Each ``(explainer, inputs, target)`` explained a few times in its own thread, all
    threads at once, gives its sequential result every time."""
    expected = [method.explain(*job) for job in jobs]
    results: list[list[Any]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(position: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                results[position].append(method.explain(*jobs[position]))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for runs, wanted in zip(results, expected):
        for result in runs:
            same(result, wanted)


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_concurrent_explanations_of_one_model_keep_their_own_results(method):
    # two wrappers of one model: two explanations that hook the same layers
    model, layers, x, y = cnn()
    first = method.build(InThread(model), layers, x)
    second = method.build(InPool(model), layers, x)
    _explain_concurrently(method, [(first, x, y), (second, x.flip(0) * 0.5, y.flip(0))])
    assert hooks_left(model) == 0


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_concurrent_explanations_of_two_models_keep_their_own_results(method):
    (model_a, layers_a, x, y), (model_b, layers_b, _, _) = cnn(5), cnn(4)
    first = method.build(InPool(model_a), layers_a, x)
    second = method.build(InPool(model_b), layers_b, x)
    _explain_concurrently(method, [(first, x, y), (second, x, y)])
    assert hooks_left(model_a) == hooks_left(model_b) == 0


# ------------------------------------------------------------------ layer names


class HandCompiled(nn.Module):
    """What ``torch.compile`` returns, by hand: the model as ``_orig_mod``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._orig_mod = model

    def forward(self, x: Tensor) -> Tensor:
        return self._orig_mod(x)


WRAPPERS = {
    "DataParallel": nn.DataParallel,
    "_orig_mod": HandCompiled,
    "both": lambda model: nn.DataParallel(HandCompiled(model)),
}


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=list(WRAPPERS))
def test_ssa_names_the_layers_of_a_wrapped_model_as_the_user_does(wrap):
    model, layers, x, y = cnn()
    expected = StepwiseSensitivity(model, layers).attribute(x, target=y)
    graph = StepwiseSensitivity(wrap(model), layers).attribute(x, target=y)
    assert graph.layer_names == ["conv1", "conv2", "fc1", "fc2"]
    assert torch.equal(graph.neurons("conv1"), expected.neurons("conv1"))
    assert graph == expected


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=list(WRAPPERS))
def test_layered_influence_names_the_layers_of_a_wrapped_model_as_the_user_does(wrap):
    model, layers, x, _ = cnn()
    explainer = LayeredInfluence(wrap(model), layers[:-1]).fit(_reference_like(x))
    assert list(explainer.layer_scores) == ["conv1", "conv2", "fc1"]
    assert explainer.chosen_layer_name in ("conv1", "conv2", "fc1")


def test_layer_names_skip_only_the_levels_wrappers_add():
    model, layers, _, _ = cnn()
    wrapped = nn.DataParallel(HandCompiled(model))
    assert unique_layer_names(wrapped, layers) == ["conv1", "conv2", "fc1", "fc2"]
    # a "module" of the user's own is a name the user wrote
    outer = nn.Sequential()
    outer.add_module("module", model)
    assert unique_layer_names(outer, layers[:1]) == ["module.conv1"]
    # both spellings find the module: the graph's names and named_modules()'s
    by_name = modules_by_name(wrapped)
    assert by_name["conv1"] is by_name["module._orig_mod.conv1"] is model.conv1


def test_layer_names_of_a_torch_compile_module():
    model, layers, _, _ = cnn()
    try:
        compiled = torch.compile(model, backend="eager")
    except Exception as error:  # torch.compile unavailable here
        pytest.skip(f"torch.compile cannot run: {error}")
    assert unique_layer_names(compiled, layers) == ["conv1", "conv2", "fc1", "fc2"]


def test_a_saved_graph_of_a_wrapped_model_masks_it_by_the_users_names(tmp_path):
    model, layers, x, y = cnn()
    wrapped = nn.DataParallel(model)
    graph = StepwiseSensitivity(wrapped, layers).attribute(x, target=y)
    graph.save(tmp_path / "graph.json")
    loaded = DependencyGraph.load(tmp_path / "graph.json")  # no modules: found by name
    assert loaded.layers is None
    with torch.no_grad(), graph.mask(wrapped):
        expected = wrapped(x)
    with torch.no_grad(), loaded.mask(wrapped):
        torch.testing.assert_close(wrapped(x), expected)
