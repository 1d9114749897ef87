"""Execute the tutorial notebooks: refresh their stored outputs, or check them in fast mode.

Run from the repository root::

    python tutorials/run_notebooks.py                       # every tutorials/*.ipynb, in place
    python tutorials/run_notebooks.py 03_insens.ipynb       # one notebook, in place
    python tutorials/run_notebooks.py --fast                # CAPTUM_SSA_FAST=1, into a temp dir

Full mode is how a maintainer refreshes the outputs committed with the
notebooks. Fast mode sets ``CAPTUM_SSA_FAST=1`` for the kernel (each notebook
then picks small sizes and runs in seconds) and writes the executed copies to a
temporary folder, leaving the committed notebooks untouched. The kernel runs
with ``tutorials/`` as its working directory, so the notebooks import the
tutorial modules (``digits.py``, ``ssa_circles.py``, ...) directly.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
FAST_VARIABLE = "CAPTUM_SSA_FAST"
FULL_TIMEOUT = 600  # seconds per cell; full mode trains several models in one cell
FAST_TIMEOUT = 120


@contextmanager
def fast_environment(fast: bool) -> Iterator[None]:
    """Set (or clear) ``CAPTUM_SSA_FAST`` for kernels started inside the block.

    The kernel inherits this process's environment, so the variable is set
    here and restored afterwards rather than passed through nbclient.
    """
    previous = os.environ.get(FAST_VARIABLE)
    if fast:
        os.environ[FAST_VARIABLE] = "1"
    else:
        os.environ.pop(FAST_VARIABLE, None)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FAST_VARIABLE, None)
        else:
            os.environ[FAST_VARIABLE] = previous


def execute_notebook(
    path: Path, fast: bool, timeout: Optional[int] = None
) -> nbformat.NotebookNode:
    r"""
    Execute one notebook with ``tutorials/`` as the working directory.

    Args:
        path (Path): The ``.ipynb`` file.
        fast (bool): Run with ``CAPTUM_SSA_FAST=1`` (small sizes).
        timeout (int, optional): Seconds allowed per cell. Default: 120 in
                    fast mode, 600 in full mode.

    Returns:
        *NotebookNode*, the executed notebook (not written anywhere).
    """
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout or (FAST_TIMEOUT if fast else FULL_TIMEOUT),
        # the "python3" spec that ipykernel installs into the virtualenv starts
        # `python`, which jupyter_client replaces by this interpreter
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    with fast_environment(fast):
        client.execute()
    return notebook


def notebook_paths(names: Sequence[str]) -> list[Path]:
    """The named notebooks (file names or paths), or every ``tutorials/*.ipynb``."""
    if not names:
        return sorted(TUTORIALS.glob("*.ipynb"))
    return [Path(name) if Path(name).exists() else TUTORIALS / name for name in names]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: every tutorials/*.ipynb")
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"set {FAST_VARIABLE}=1 and write the executed copies to a temporary folder",
    )
    parser.add_argument("--timeout", type=int, help="seconds per cell")
    args = parser.parse_args(argv)

    output_dir = Path(tempfile.mkdtemp(prefix="notebooks-")) if args.fast else None
    for path in notebook_paths(args.notebooks):
        started = time.perf_counter()
        notebook = execute_notebook(path, args.fast, args.timeout)
        target = output_dir / path.name if output_dir else path
        nbformat.write(notebook, target)
        print(f"{path.name}: {time.perf_counter() - started:.1f} s -> {target}", flush=True)


if __name__ == "__main__":
    main()
