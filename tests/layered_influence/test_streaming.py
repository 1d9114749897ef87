"""LayeredInfluence fit over a stream: one pass per purpose, only the chosen layer kept."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa._core.layered_influence import LayeredInfluence
from captum_ssa._core.layered_influence.layer_choice import gini_coefficient
from tests.layered_influence.references import slow_influence
from tests.layered_influence.test_explainer import zoo_model
from tests.models import layer_output


def cnn_reference(count: int = 90):
    model, layers, shape = zoo_model("cnn")
    reference = torch.randn(count, *shape, generator=torch.Generator().manual_seed(5))
    candidates = [layers["conv1"], layers["conv2"], layers["fc1"]]
    return model, candidates, reference


def loader_of(reference: Tensor) -> DataLoader:
    labels = torch.zeros(len(reference), dtype=torch.long)
    return DataLoader(TensorDataset(reference, labels), batch_size=16)  # 90 = 5 x 16 + 10


def tensor_bytes(explainer: LayeredInfluence) -> int:
    """Every tensor the fitted explainer holds, in bytes (its reference included)."""
    fit = explainer._fit
    assert fit is not None
    held = [*fit.reference.blocks]
    for holder in (explainer, fit, fit.reference):
        held += [value for value in vars(holder).values() if isinstance(value, Tensor)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in held}.values())


def test_a_loader_gives_the_one_batch_fit_and_keeps_only_the_chosen_layer() -> None:
    model, candidates, reference = cnn_reference()
    one_batch = LayeredInfluence(model, candidates).fit(reference)
    streamed = LayeredInfluence(model, candidates).fit(loader_of(reference), show_progress=True)
    assert streamed.chosen_layer_name == one_batch.chosen_layer_name
    assert streamed.layer_scores == pytest.approx(one_batch.layer_scores, abs=1e-12)
    assert streamed.reference_size == one_batch.reference_size == len(reference)
    queries = torch.randn(3, *reference.shape[1:], generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(streamed.influence(queries), one_batch.influence(queries))

    chosen_units = layer_output(model, streamed.chosen_layer, reference[:1]).numel()
    kept = streamed._fit.reference
    assert kept is not None and len(kept.blocks) == 1  # one preallocated buffer
    assert kept.nbytes == len(reference) * chosen_units * 4
    # besides it, only the labels and the mean: no other candidate's activations
    assert tensor_bytes(streamed) == kept.nbytes + len(reference) * 8 + chosen_units * 4


def test_a_given_layer_reads_once_and_keeps_the_batches_unconcatenated() -> None:
    model, candidates, reference = cnn_reference()
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    try:
        explainer = LayeredInfluence(model, candidates).fit(
            iter(loader_of(reference)), layer=candidates[0], batch_size=7
        )
    finally:
        handle.remove()
    assert sum(calls) == len(reference)  # one pass
    kept = explainer._fit.reference
    assert kept is not None
    units = layer_output(model, candidates[0], reference[:1]).numel()
    assert [len(block) for block in kept.blocks] == calls  # one block per forward pass
    assert kept.nbytes == len(reference) * units * 4
    one_batch = LayeredInfluence(model, candidates).fit(reference, layer=candidates[0])
    queries = reference[:4] + 0.1
    torch.testing.assert_close(explainer.influence(queries), one_batch.influence(queries))
    with pytest.raises(ValueError, match="kept the reference activations of layer conv1 only"):
        explainer.influence(queries, layer=candidates[1])


def test_choosing_needs_a_reference_that_can_be_read_twice() -> None:
    model, candidates, reference = cnn_reference()
    with pytest.raises(ValueError, match="iterator, which can be read only once"):
        LayeredInfluence(model, candidates).fit(iter(loader_of(reference)))


def plain_dispersion(model, layer, reference: Tensor) -> float:
    """Gini of the mean |phi| over the reference points, by the pair loop."""
    with torch.no_grad():
        labels = model(reference).argmax(1)
    activations = layer_output(model, layer, reference).flatten(1).double()
    influence = slow_influence(activations, labels, activations, labels)
    return gini_coefficient(influence.abs().mean(0))


def test_dispersion_on_all_points_equals_the_pair_loop_and_a_subsample_ignores_batching() -> None:
    model, candidates, reference = cnn_reference(40)
    model = model.double()
    reference = reference.double()
    everything = LayeredInfluence(model, candidates).fit(reference, criterion="dispersion")
    for layer, name in zip(candidates, ["conv1", "conv2", "fc1"]):
        expected = plain_dispersion(model, layer, reference)
        assert everything.layer_scores[name] == pytest.approx(expected, rel=1e-9)
    few = LayeredInfluence(model, candidates).fit(
        reference, criterion="dispersion", dispersion_points=15
    )
    streamed = LayeredInfluence(model, candidates).fit(
        loader_of(reference), criterion="dispersion", dispersion_points=15
    )
    assert streamed.layer_scores == pytest.approx(few.layer_scores, rel=1e-12)
    assert few.layer_scores != pytest.approx(everything.layer_scores, rel=1e-6)


class StorageSizes(TorchFunctionMode):
    """Records the storage (address, bytes) of every tensor a torch function returns."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: set[tuple[int, int]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, Tensor):
                storage = value.untyped_storage()
                self.storages.add((storage.data_ptr(), storage.nbytes()))
        return result


@pytest.mark.parametrize(
    ("as_stream", "batch_size", "blocks", "large"),
    [
        (True, None, 25, 0),  # 400 = 25 x 16: the batches' own outputs, kept as they are
        (False, 100, 1, 1),  # four forward passes into one preallocated buffer
        # one forward pass of all points: its output is kept, and the network above
        # the layer runs on a clone of it (so that an in-place op cannot change it)
        (False, None, 1, 2),
    ],
)
def test_no_second_copy_of_the_kept_activations_is_made(
    as_stream: bool, batch_size: int | None, blocks: int, large: int
) -> None:
    model, candidates, reference = cnn_reference(400)
    data = loader_of(reference) if as_stream else reference
    with StorageSizes() as recorded:
        explainer = LayeredInfluence(model, candidates).fit(
            data, layer=candidates[0], batch_size=batch_size
        )
    kept = explainer._fit.reference
    assert kept is not None and kept.nbytes == 400 * 256 * 4
    assert len(kept.blocks) == blocks
    # whatever else existed during the fit (the batches, the other candidates'
    # outputs, the model's activations) is small next to what is kept, where the
    # old fit's concatenation and centred copy were each as large as it
    assert len([size for _, size in recorded.storages if size * 2 > kept.nbytes]) == large
