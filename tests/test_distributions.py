"""The wheel and the sdist as a user gets them: built with `python -m build` (the wheel from
the unpacked sdist, so the sdist must hold everything a build needs), the wheel installed into
a fresh virtual environment with only torch, and a smoke script run there, outside the
repository. The sdist leaves the tests out (MANIFEST.in says why)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import captum_ssa

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FILES = sorted(
    str(path.relative_to(ROOT))
    for path in (ROOT / "captum_ssa").rglob("*")
    if path.is_file() and path.suffix in {".py", ".html", ".typed"}
)

# one small call per method on a model made here, nothing from the repository
SMOKE = """
import torch
from torch import nn

import captum_ssa
from captum_ssa import (
    InactiveStateSensitivity,
    LayeredInfluence,
    StepwiseSensitivity,
    SwitchedLinearProjection,
)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
model.eval()
x = torch.randn(32, 6)
y = model(x).argmax(1)
weights = SwitchedLinearProjection(model, model[4]).attribute(x, target=y)
assert weights.shape == x.shape
(omega,) = InactiveStateSensitivity(model, [model[2]]).fit(x).attribute(x)
assert omega.shape == x.shape
graph = StepwiseSensitivity(model, [model[1], model[3], model[4]]).attribute(x, target=0)
assert graph.layer_names == ["1", "3", "4"]
heatmap = LayeredInfluence(model, [model[0], model[2]]).fit(x).attribute(x)
assert heatmap.shape == x.shape
print("smoke", captum_ssa.__version__)
"""


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_the_sdist_holds_the_package_and_no_tests(distributions: tuple[Path, Path]) -> None:
    sdist, _ = distributions
    prefix = f"captum_ssa-{captum_ssa.__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
    assert set(PACKAGE_FILES) <= names
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"} <= names
    assert not [name for name in names if name.startswith(("tests/", "tutorials/", "docs/"))]


def test_the_wheel_holds_the_package_and_its_data(distributions: tuple[Path, Path]) -> None:
    _, wheel = distributions
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert set(PACKAGE_FILES) <= names
    assert "captum_ssa/py.typed" in names
    assert any(name.endswith("graph/view.html") for name in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as archive:
        description = archive.read(metadata).decode()
    # the README is the long description: on PyPI a relative link leads nowhere
    assert "](https://github.com/captum-ssa/captum-ssa/" in description
    assert "](docs/" not in description and "](tutorials/" not in description


@pytest.mark.skipif(
    torch.__version__.split("+")[0] != "2.13.0",
    reason="installs the CPU build torch==2.13.0 that `make test` pins; any other torch "
    "(the floors run's) would download a CUDA build of several GB",
)
def test_the_wheel_works_in_a_fresh_environment_with_only_torch(
    distributions: tuple[Path, Path], tmp_path: Path
) -> None:
    _, wheel = distributions
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, str(wheel)], check=True)
    result = subprocess.run(
        [str(python), "-c", SMOKE], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"smoke {captum_ssa.__version__}"
