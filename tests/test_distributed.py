"""torch.distributed: each rank streams its shard, the sums are all-reduced, and every
rank gets the graph of one process over all the data.

Two local gloo processes on the CPU; NCCL on GPUs runs the same code.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import StepwiseSensitivity
from captum_ssa._utils.distributed import all_reduce_sum, is_distributed
from tests.models import build
from tests.ranks import run_rank_then_exit

OPTIONS = {
    "mean_global": {"aggregation": "mean", "mode": "global"},
    "tukey_global": {"aggregation": "tukey", "mode": "global", "percentile": 30},
    "mean_local": {"aggregation": "mean", "mode": "local", "branching": 2},
    "tukey_local": {"aggregation": "tukey", "mode": "local", "percentile": 60},
}
WORLD_SIZE = 2


def dataset() -> tuple[StepwiseSensitivity, torch.Tensor, torch.Tensor]:
    model, layers, shape = build("cnn", 0)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(14, *shape, generator=generator)
    y = torch.randint(0, 3, (14,), generator=generator)
    return StepwiseSensitivity(model, list(layers.values())), x, y


def summary(graph) -> dict:
    names = graph.layer_names
    return {
        "neurons": [graph.neurons(name).tolist() for name in names],
        "relevances": [graph.relevance(name) for name in names],
        "matrices": [graph.relevance_matrix(u, lower) for lower, u in zip(names, names[1:])],
        "edges": [graph.edges(u, lower).tolist() for lower, u in zip(names, names[1:])],
        "target": graph.target,
        "examples": graph.metadata["num_examples"],
    }


def graphs(x: torch.Tensor, y: torch.Tensor, ssa: StepwiseSensitivity) -> dict:
    """Every option's graph, from per-example targets and from one class, on (x, y)."""
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    results = {
        name: summary(ssa.attribute(loader, target="labels", **options))
        for name, options in OPTIONS.items()
    }
    results["class_graphs"] = {
        label: summary(graph)
        for label, graph in ssa.class_graphs(loader, mode="local", branching=2).items()
    }
    return results


def run_rank(rank: int, address: str, folder: str) -> None:
    # two processes share the cores: one thread each, not both fighting over all of them
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=WORLD_SIZE)

    def body() -> None:
        assert is_distributed()
        assert all_reduce_sum(torch.tensor([rank + 1.0])).item() == 3.0
        ssa, x, y = dataset()
        # uneven shards: rank 0 takes 9 examples, rank 1 takes 5
        shard = slice(0, 9) if rank == 0 else slice(9, None)
        torch.save(graphs(x[shard], y[shard], ssa), Path(folder) / f"rank{rank}.pt")

    run_rank_then_exit(body)


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


@pytest.mark.filterwarnings("ignore:no neuron of")
def test_two_gloo_ranks_give_every_rank_the_one_process_graph(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    # spawned, not forked: a child forked from a process whose OpenMP threads have run
    # can hang for good on a lock one of them held (seen after earlier tests)
    multiprocessing.start_processes(
        run_rank, args=(address, str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn"
    )
    ssa, x, y = dataset()
    expected = graphs(x, y, ssa)
    assert not is_distributed()
    assert expected["mean_global"]["examples"] == 14
    assert sum(graph["examples"] for graph in expected["class_graphs"].values()) == 14
    for rank in range(WORLD_SIZE):
        assert_same(torch.load(tmp_path / f"rank{rank}.pt"), expected)


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key == "class_graphs":
            assert_same(got[key], value)
            continue
        assert got[key]["neurons"] == value["neurons"], key
        assert got[key]["edges"] == value["edges"], key
        assert got[key]["target"] == value["target"], key
        assert got[key]["examples"] == value["examples"], key
        for name in ("relevances", "matrices"):
            for mine, theirs in zip(got[key][name], value[name]):
                torch.testing.assert_close(mine, theirs)
