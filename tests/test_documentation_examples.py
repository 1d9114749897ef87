"""Every Python block of README.md and docs/*.md runs as written, in order, top to bottom of
its page: one fresh interpreter per page, the blocks executed one after another in one
namespace, from a folder that has the repository's tutorials/ (the pages say to run them from
the root of a clone) and nothing else, so that files the blocks write land in a scratch folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [Path("README.md"), *sorted(p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# Runs the blocks of one page; a failure names the page and the block, counted from 1.
_RUNNER = """
import json, sys
page, blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for number, block in enumerate(blocks, 1):
    exec(compile(block, f"{page}, Python block {number}", "exec"), namespace)
print(f"{len(blocks)} blocks of {page} ran")
"""


def python_blocks(page: Path) -> list[str]:
    return _BLOCK.findall((ROOT / page).read_text())


def test_the_blocks_are_found():
    # a fence the pattern misses would silently go untested
    for page in PAGES:
        text = (ROOT / page).read_text()
        assert len(python_blocks(page)) == text.count("```python\n"), page
    assert len(python_blocks(Path("README.md"))) >= 4  # one example per method at least


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=str)
def test_every_python_block_runs_as_written(page: Path, tmp_path: Path) -> None:
    (tmp_path / "tutorials").symlink_to(ROOT / "tutorials", target_is_directory=True)
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([str(page), python_blocks(page)]))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
    }
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
