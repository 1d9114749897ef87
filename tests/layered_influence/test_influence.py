"""The monotone influence measure of LayeredInfluence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_ssa._core.layered_influence.influence import (
    _influence_of_query_block,
    _reference_blocks,
    check_alpha,
    monotone_influence,
)
from tests.layered_influence.references import slow_influence


def random_problem(seed, queries, references, units, classes):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(queries, units, generator=generator, dtype=torch.float64),
        torch.randint(0, classes, (queries,), generator=generator),
        torch.randn(references, units, generator=generator, dtype=torch.float64),
        torch.randint(0, classes, (references,), generator=generator),
    )


problems = st.tuples(
    st.integers(0, 10_000),  # seed
    st.integers(1, 6),  # queries
    st.integers(1, 9),  # reference points
    st.integers(1, 5),  # units
    st.integers(2, 3),  # classes
)


@settings(max_examples=25, deadline=None)
@given(problems, st.integers(1, 4))
def test_equals_the_pair_loop(problem, points_per_chunk):
    queries, query_labels, reference, reference_labels = random_problem(*problem)
    fast = monotone_influence(
        queries, query_labels, reference, reference_labels, points_per_chunk=points_per_chunk
    )
    slow = slow_influence(queries, query_labels, reference, reference_labels)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "alpha",
    [lambda r: torch.exp(-r), lambda r: 1 / (1 + r), lambda r: torch.ones_like(r)],
    ids=["exp", "cauchy", "constant"],
)
def test_pluggable_alpha_equals_the_pair_loop(alpha):
    queries, query_labels, reference, reference_labels = random_problem(3, 5, 8, 4, 2)
    check_alpha(alpha)
    fast = monotone_influence(
        queries, query_labels, reference, reference_labels, alpha=alpha, points_per_chunk=3
    )
    slow = slow_influence(queries, query_labels, reference, reference_labels, alpha)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


def test_known_answer_in_one_dimension():
    # class 0 at -1, class 1 at +1: each query sees only the other class's point
    reference = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    reference_labels = torch.tensor([0, 1])
    queries = torch.tensor([[2.0], [-3.0]], dtype=torch.float64)
    influence = monotone_influence(queries, torch.tensor([1, 0]), reference, reference_labels)
    # (2 - (-1)) / 3^2 = 1/3 and (-3 - 1) / 4^2 = -1/4: each points away from the other class
    torch.testing.assert_close(influence, torch.tensor([[1 / 3], [-1 / 4]], dtype=torch.float64))


def test_known_sign_and_ranking_in_two_dimensions():
    # class 0 stacked at x0 = -1 symmetrically in x1; query of class 1 at (1, 0)
    reference = torch.tensor([[-1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 5.0]])
    reference_labels = torch.tensor([0, 0, 0, 1])
    influence = monotone_influence(
        torch.tensor([[1.0, 0.0]]), torch.tensor([1]), reference, reference_labels
    )
    # (2, 0)/4 + (2, -1)/5 + (2, 1)/5: x0 decides (positive), x1 cancels out exactly
    torch.testing.assert_close(influence, torch.tensor([[1.3, 0.0]]))
    assert influence.abs().argmax().item() == 0


def test_points_of_the_same_label_are_ignored():
    queries, query_labels, reference, reference_labels = random_problem(1, 4, 6, 3, 2)
    extra = torch.randn(5, 3, dtype=torch.float64)
    base = monotone_influence(queries[:1], query_labels[:1], reference, reference_labels)
    more = monotone_influence(
        queries[:1],
        query_labels[:1],
        torch.cat([reference, extra]),
        torch.cat([reference_labels, query_labels[:1].expand(5)]),
    )
    torch.testing.assert_close(base, more)


@settings(max_examples=15, deadline=None)
@given(problems, st.randoms(use_true_random=False))
def test_permuting_the_reference_changes_nothing(problem, random):
    queries, query_labels, reference, reference_labels = random_problem(*problem)
    order = list(range(len(reference)))
    random.shuffle(order)
    permuted = torch.tensor(order)
    torch.testing.assert_close(
        monotone_influence(queries, query_labels, reference, reference_labels, points_per_chunk=2),
        monotone_influence(
            queries,
            query_labels,
            reference[permuted],
            reference_labels[permuted],
            points_per_chunk=2,
        ),
    )


@settings(max_examples=15, deadline=None)
@given(problems, st.floats(-50, 50))
def test_translation_invariance(problem, shift):
    queries, query_labels, reference, reference_labels = random_problem(*problem)
    offset = shift * torch.linspace(-1, 1, queries.shape[1], dtype=torch.float64)
    torch.testing.assert_close(
        monotone_influence(queries, query_labels, reference, reference_labels),
        monotone_influence(queries + offset, query_labels, reference + offset, reference_labels),
        rtol=1e-6,
        atol=1e-6,
    )


def test_coincident_points_are_skipped_not_infinite():
    point = torch.tensor([[0.3, -0.2, 0.5]])
    reference = torch.cat([point, point + 1])
    influence = monotone_influence(point, torch.tensor([0]), reference, torch.tensor([1, 1]))
    torch.testing.assert_close(influence, -torch.ones(1, 3) / 3)


def test_float32_agrees_with_float64():
    queries, query_labels, reference, reference_labels = random_problem(5, 20, 300, 64, 2)
    exact = monotone_influence(queries, query_labels, reference, reference_labels)
    single = monotone_influence(
        queries.float(), query_labels, reference.float(), reference_labels, points_per_chunk=64
    )
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("alpha", "error"),
    [
        (2.0, TypeError),
        (lambda r: r, ValueError),  # increasing
        (lambda r: -torch.ones_like(r), ValueError),  # negative
        (lambda r: r.sum(), ValueError),  # wrong shape
        (lambda r: 1 / (r - 1), ValueError),  # infinite, and negative below 1
    ],
)
def test_bad_alpha_is_a_clear_error(alpha, error):
    with pytest.raises(error, match="alpha"):
        check_alpha(alpha)


@pytest.mark.parametrize("points_per_chunk", [0, 2.5, True, "8"])
def test_bad_points_per_chunk(points_per_chunk):
    queries, query_labels, reference, reference_labels = random_problem(0, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="points_per_chunk"):
        monotone_influence(
            queries, query_labels, reference, reference_labels, points_per_chunk=points_per_chunk
        )


# ---------------------------------------------------------------- near pairs


def near_problem(distances, units=32, seed=0):
    """float32 queries with norms 10 to 100, random reference points, and one
    differently-labelled reference point at each of ``distances`` from query 0
    (then query 1, ...): the pairs whose squared distance cancels in
    ||a||^2 + ||b||^2 - 2ab."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(3, units, generator=generator, dtype=torch.float64)
    queries = (
        directions / directions.norm(dim=1, keepdim=True) * torch.tensor([[10.0], [40.0], [100.0]])
    )
    reference = 30 * torch.randn(40, units, generator=generator, dtype=torch.float64)
    query_labels = torch.tensor([0, 1, 0])
    reference_labels = torch.randint(0, 2, (40,), generator=generator)
    for position, distance in enumerate(distances):
        step = torch.randn(1, units, generator=generator, dtype=torch.float64)
        reference = torch.cat([reference, queries[position % 3] + distance * step / step.norm()])
        reference_labels = torch.cat([reference_labels, 1 - query_labels[position % 3 :][:1]])
    return queries.float(), query_labels, reference.float(), reference_labels


@pytest.mark.parametrize("points_per_chunk", [1, 7, None])
@pytest.mark.parametrize("alpha", [None, lambda r: 1 / (1 + r)], ids=["inverse-square", "cauchy"])
def test_near_points_equal_the_float64_pair_loop(alpha, points_per_chunk):
    queries, query_labels, reference, reference_labels = near_problem([1e-4, 3e-4, 1e-3, 5e-4])
    fast = monotone_influence(
        queries, query_labels, reference, reference_labels, alpha, points_per_chunk
    )
    # the float32 values themselves, in float64, one pair at a time
    slow = slow_influence(
        queries.double(), query_labels, reference.double(), reference_labels, alpha
    )
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), slow, rtol=2e-6, atol=1e-6 * slow.abs().max())


def added_by_one_point(queries, query_labels, point, label):
    """What one reference point adds to phi (alpha = 1/r^2), in float64."""
    differences = queries.double() - point.double()
    squared = differences.square().sum(1, keepdim=True)
    counted = (query_labels != label)[:, None] & (squared > 0)
    return torch.where(counted, differences / squared, 0.0)


def test_a_near_point_is_not_dropped():
    queries, query_labels, reference, reference_labels = near_problem([1e-4])
    with_point = monotone_influence(queries, query_labels, reference, reference_labels)
    without = monotone_influence(queries, query_labels, reference[:-1], reference_labels[:-1])
    expected = added_by_one_point(queries, query_labels, reference[-1], reference_labels[-1])
    assert expected[0].norm() > 5e3  # 1 / r, r about 1e-4
    torch.testing.assert_close((with_point - without).double(), expected, rtol=1e-5, atol=1e-3)


def test_exactly_coincident_points_are_skipped_in_float32():
    queries, query_labels, reference, reference_labels = near_problem([])
    label = 1 - query_labels[:1]
    with_copy = monotone_influence(
        queries,
        query_labels,
        torch.cat([reference, queries[:1]]),
        torch.cat([reference_labels, label]),
    )
    without = monotone_influence(queries, query_labels, reference, reference_labels)
    expected = added_by_one_point(queries, query_labels, queries[0], label)
    assert torch.equal(expected[0], torch.zeros(32, dtype=torch.float64))
    torch.testing.assert_close((with_copy - without).double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("distances", [[], [1e-3]])
def test_a_first_pass_without_gathering_says_whether_near_pairs_were_left_out(distances):
    # on a GPU a query block is first summed without near pairs (no wait on the device)
    queries, query_labels, reference, reference_labels = near_problem(distances)
    blocks = _reference_blocks(reference, reference_labels, 16)
    arguments = (queries, query_labels, blocks, None, 16)
    first, gathered = torch.empty_like(queries), torch.empty_like(queries)
    left_out = _influence_of_query_block(first, *arguments, gather_near=False)
    assert not _influence_of_query_block(gathered, *arguments, gather_near=True)
    assert left_out == bool(distances)
    expected = monotone_influence(queries, query_labels, reference, reference_labels)
    torch.testing.assert_close(gathered, expected)
    if left_out:  # the near pair is missing from the first pass, and only it
        without = monotone_influence(queries, query_labels, reference[:-1], reference_labels[:-1])
        mask = torch.ones(len(queries), dtype=torch.bool)
        mask[0] = False
        torch.testing.assert_close(first[0], without[0])
        torch.testing.assert_close(first[mask], gathered[mask])
    else:
        torch.testing.assert_close(first, gathered)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.floats(1e-5, 1e-1), max_size=6),
    st.integers(0, 10_000),
    st.integers(1, 8),
)
def test_near_and_far_points_equal_the_float64_pair_loop(distances, seed, points_per_chunk):
    queries, query_labels, reference, reference_labels = near_problem(distances, 8, seed)
    fast = monotone_influence(
        queries, query_labels, reference, reference_labels, points_per_chunk=points_per_chunk
    )
    slow = slow_influence(queries.double(), query_labels, reference.double(), reference_labels)
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-5 * slow.abs().max())


def test_alpha_in_another_dtype_is_cast():
    queries, query_labels, reference, reference_labels = random_problem(2, 4, 9, 3, 2)
    queries, reference = queries.float(), reference.float()
    in_float64 = monotone_influence(
        queries, query_labels, reference, reference_labels, lambda r: 1 / (1 + r.double())
    )
    in_float32 = monotone_influence(
        queries, query_labels, reference, reference_labels, lambda r: 1 / (1 + r)
    )
    assert in_float64.dtype == torch.float32
    torch.testing.assert_close(in_float64, in_float32)


def test_alpha_returning_no_tensor_is_a_clear_error():
    queries, query_labels, reference, reference_labels = random_problem(0, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="alpha must return a tensor"):
        monotone_influence(queries, query_labels, reference, reference_labels, lambda r: 1.0)
