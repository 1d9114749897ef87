"""Tutorial notebooks: stored executed, run in fast mode, show the paper's numbers beside ours."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

import captum_ssa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))

import run_notebooks

TUTORIALS = Path(run_notebooks.__file__).resolve().parent
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
FAST_CELL_TIMEOUT = 120  # seconds; a fast notebook takes well under 30 in all


def _names(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _text(notebook: nbformat.NotebookNode) -> str:
    """Markdown sources and every text or HTML output, where a table can be."""
    parts = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    for cell in _code_cells(notebook):
        for output in cell.outputs:
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
            parts.append(data.get("text/markdown", ""))
    return "\n".join(parts)


def test_the_notebooks_are_found() -> None:
    # guard the parametrisation: an empty glob would pass every test below vacuously
    assert len(NOTEBOOKS) >= 4, _names(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_names(NOTEBOOKS))
def test_the_stored_notebook_is_executed(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    cells = _code_cells(notebook)
    assert cells, "a tutorial without code"
    assert "FAST" in cells[0].source and "CAPTUM_SSA_FAST" in cells[0].source, (
        "the first code cell must choose the sizes from CAPTUM_SSA_FAST"
    )
    counts = [cell.execution_count for cell in cells]
    assert all(count is not None for count in counts), f"unexecuted cells: {counts}"
    # one run from top to bottom, not cells re-run by hand in another order
    assert counts == sorted(counts), counts
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, [f"{error.ename}: {error.evalue}" for error in errors]
    images = [
        output for cell in cells for output in cell.outputs if "image/png" in output.get("data", {})
    ]
    assert images, "no stored figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_names(NOTEBOOKS))
def test_the_notebook_states_the_papers_numbers_beside_ours(path: Path) -> None:
    # a table with a column named "paper": a markdown header row or a printed table
    text = _text(nbformat.read(path, as_version=4))
    header_rows = [line for line in text.splitlines() if "|" in line or "<th" in line]
    assert any("paper" in line.lower() for line in header_rows), "no table with a paper column"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_names(NOTEBOOKS))
def test_the_notebook_runs_in_fast_mode(path: Path) -> None:
    executed = run_notebooks.execute_notebook(path, fast=True, timeout=FAST_CELL_TIMEOUT)
    cells = _code_cells(executed)
    assert all(cell.execution_count is not None for cell in cells)
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors


def test_the_kernel_is_this_interpreter_in_tutorials_with_the_fast_flag(tmp_path: Path) -> None:
    # nbclient starts the "python3" kernel spec; it must run the virtualenv's
    # Python (where captum_ssa is installed), not some other python on PATH,
    # in tutorials/ (the notebooks import its modules), with the fast flag set
    notebook = nbformat.v4.new_notebook()
    # ... and the captum_ssa of the checkout under test, not another installed copy
    source = (
        "import os, sys, captum_ssa; print(sys.executable, os.getcwd(), "
        "os.environ.get('CAPTUM_SSA_FAST'), captum_ssa.__file__)"
    )
    notebook.cells = [nbformat.v4.new_code_cell(source)]
    path = tmp_path / "which_python.ipynb"
    nbformat.write(notebook, path)
    executed = run_notebooks.execute_notebook(path, fast=True, timeout=60)
    # stderr may carry import-time warnings (tqdm's, without ipywidgets)
    (printed,) = [out["text"] for out in executed.cells[0].outputs if out.get("name") == "stdout"]
    executable, directory, flag, package = printed.split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(package).resolve() == Path(captum_ssa.__file__).resolve()
    assert Path(directory).resolve() == TUTORIALS
    assert flag == "1"


def test_the_fast_flag_is_restored_after_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fast run inside a full session (or the reverse) must not leak into later kernels
    monkeypatch.setenv(run_notebooks.FAST_VARIABLE, "0")
    with run_notebooks.fast_environment(True):
        assert os.environ[run_notebooks.FAST_VARIABLE] == "1"
    assert os.environ[run_notebooks.FAST_VARIABLE] == "0"
    monkeypatch.delenv(run_notebooks.FAST_VARIABLE)
    with run_notebooks.fast_environment(True):
        pass
    assert run_notebooks.FAST_VARIABLE not in os.environ


def test_notebook_names_resolve_in_tutorials_and_default_to_all() -> None:
    assert run_notebooks.notebook_paths([]) == NOTEBOOKS
    first = NOTEBOOKS[0]
    assert run_notebooks.notebook_paths([first.name]) == [first]
