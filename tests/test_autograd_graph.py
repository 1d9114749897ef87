"""The autograd-graph walk: every node once, without recursion."""

from __future__ import annotations

import sys

import torch

from captum_ssa._utils.autograd_graph import walk


def test_a_graph_deeper_than_the_recursion_limit_is_walked_whole():
    x = torch.randn(3, requires_grad=True)
    y = x
    depth = sys.getrecursionlimit() + 500
    for _ in range(depth):
        y = y * 1.5
    nodes = list(walk(y.grad_fn))
    assert len(nodes) == depth + 1  # the products and x's gradient accumulator
    assert sum(type(n).__name__.startswith("Mul") for n in nodes) == depth


def test_shared_branches_are_visited_once_and_every_node_is_distinct():
    x = torch.randn(3, requires_grad=True)
    shared = torch.relu(x)
    y = (shared * 2 + shared.exp()).sum()
    nodes = list(walk(y.grad_fn))
    assert len({id(n) for n in nodes}) == len(nodes)
    names = sorted(type(n).__name__.rstrip("0123456789") for n in nodes)
    assert names.count("ReluBackward") == 1
    assert names.count("AccumulateGrad") == 1
    assert set(names) >= {"SumBackward", "AddBackward", "MulBackward", "ExpBackward"}


def test_no_graph_gives_no_nodes():
    assert list(walk(None)) == []
