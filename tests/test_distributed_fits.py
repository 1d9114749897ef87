"""Two gloo ranks, each streaming its shard, give the one-process results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa._core.inactive_state_sensitivity import InactiveStateSensitivity
from captum_ssa._core.layered_influence import LayeredInfluence
from captum_ssa.graph.evaluation import (
    ablation_importance,
    evaluate_ensemble,
    evaluate_graph,
)
from tests.graph.test_evaluation import CASES, balanced_model, graph_keeping
from tests.models import masked_transformer, padded, sequences
from tests.ranks import run_rank_then_exit

WORLD_SIZE = 2


def results_of(rank: int, world_size: int) -> dict[str, Any]:
    """Everything the fits and evaluations give over this rank's shard."""
    loader = shard_loader(rank, world_size)
    model, layers, x, _ = balanced_model("cnn")
    explainer = LayeredInfluence(model, [layers["conv1"], layers["conv2"], layers["fc1"]])
    explainer.fit(contiguous_shard_loader(rank, world_size))
    insens = InactiveStateSensitivity(model, [layers["conv2"], layers["fc1"]]).fit(loader)
    graph = graph_keeping(layers, CASES["cnn"], 1)
    graphs = {c: graph_keeping(layers, {**CASES["cnn"], "fc2": [c]}, c) for c in range(3)}
    return {
        "counts": insens._fitted_counts(),
        "reference_size": insens.reference_size,
        "graph": evaluate_graph(model, graph, loader),
        "ensemble": evaluate_ensemble(model, graphs, loader),
        "ablation": ablation_importance(model, "conv2", loader, batch_size=20),
        "layer_scores": explainer.layer_scores,
        "influence": explainer.influence(x[:5] + 0.5),
        "influence_reference_size": explainer.reference_size,
    }


def shard_loader(rank: int, world_size: int) -> DataLoader:
    _, _, x, labels = balanced_model("cnn")
    shard = slice(rank, None, world_size)  # DistributedSampler's split without shuffling
    return DataLoader(TensorDataset(x[shard], labels[shard]), batch_size=5)


def contiguous_shard_loader(rank: int, world_size: int) -> DataLoader:
    """Consecutive halves: the union of the shards in rank order is the data in
    order, so LayeredInfluence's probe folds match one process's exactly."""
    _, _, x, labels = balanced_model("cnn")
    shard = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    return DataLoader(TensorDataset(x[shard], labels[shard]), batch_size=7)


def masked_results_of(rank: int, world_size: int) -> dict[str, Any]:
    """The fits over this rank's consecutive share of token sequences sorted by length,
    in batches padded to their own lengths: the ranks' longest samples differ."""
    model = masked_transformer()
    reference = sorted(sequences(count=30, longest=8, seed=3), key=lambda e: e.shape[1])
    share = reference[rank * 30 // world_size : (rank + 1) * 30 // world_size]
    batches = []
    for start in range(0, len(share), 4):
        ids, mask = padded(share[start : start + 4], left=start % 8 == 0)
        batches.append((ids, None, mask))
    insens = InactiveStateSensitivity(model, [model.fc1, model.head]).fit(batches)
    explainer = LayeredInfluence(model, [model.fc1, model.fc2]).fit(batches, criterion="dispersion")
    ids, mask = padded(sequences(count=4), 9)
    return {
        "frequencies": insens.activation_frequency,
        "reference_size": insens.reference_size,
        "layer_scores": explainer.layer_scores,
        "influence": explainer.influence(ids, mask=mask),
    }


def run_rank(rank: int, world_size: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world_size
    )

    def save() -> None:
        torch.save(results_of(rank, world_size), f"{directory}/rank{rank}.pt")
        torch.save(masked_results_of(rank, world_size), f"{directory}/masked{rank}.pt")

    run_rank_then_exit(save)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_ranks_give_the_one_process_results(tmp_path: Path) -> None:
    # spawned, not forked: a child forked from a process whose OpenMP threads have run
    # can hang for good on a lock one of them held; each rank runs single-threaded
    mp.start_processes(
        run_rank, args=(WORLD_SIZE, str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn"
    )
    expected = results_of(0, 1)
    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["reference_size"] == expected["reference_size"] == 48
        for a, b in zip(got["counts"], expected["counts"]):
            assert torch.equal(a, b)
        # counts: exactly equal (repr, since NaN rates are not equal to themselves)
        assert repr(got["graph"]) == repr(expected["graph"])
        assert repr(got["ensemble"]) == repr(expected["ensemble"])
        assert torch.equal(got["ablation"], expected["ablation"])
        # the reference set is the union of the shards, on every rank
        assert got["influence_reference_size"] == expected["influence_reference_size"] == 48
        assert got["layer_scores"] == pytest.approx(expected["layer_scores"], abs=1e-12)
        torch.testing.assert_close(got["influence"], expected["influence"])

    expected = masked_results_of(0, 1)
    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"masked{rank}.pt", weights_only=False)
        assert got["reference_size"] == expected["reference_size"] == 30
        for a, b in zip(got["frequencies"], expected["frequencies"]):
            assert a.shape == b.shape and torch.equal(a, b)
        assert got["layer_scores"] == pytest.approx(expected["layer_scores"], abs=1e-12)
        torch.testing.assert_close(got["influence"], expected["influence"])
