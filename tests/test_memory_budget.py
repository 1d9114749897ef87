import pytest

from captum_ssa import get_memory_budget, memory_budget, set_memory_budget
from captum_ssa._utils.memory_budget import DEFAULT_MEMORY_BUDGET_BYTES, rows_within_budget


def test_context_sets_and_restores_the_budget():
    assert get_memory_budget() == DEFAULT_MEMORY_BUDGET_BYTES
    with memory_budget(1000):
        assert get_memory_budget() == 1000
        assert rows_within_budget(300) == 3
        assert rows_within_budget(5000) == 1
    assert get_memory_budget() == DEFAULT_MEMORY_BUDGET_BYTES


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1MB"])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="memory budget"):
        set_memory_budget(bad)
    assert get_memory_budget() == DEFAULT_MEMORY_BUDGET_BYTES
