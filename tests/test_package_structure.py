"""The package's shape: no import cycles, ``_utils`` at the bottom, Captum's private
names in one module, warnings of the package's own category."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import warnings
from pathlib import Path

import networkx as nx
import pytest
import torch
from packaging.requirements import Requirement
from torch import nn

import captum_ssa
from captum_ssa._utils.warn import CaptumSSAWarning, warn

PACKAGE = Path(captum_ssa.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere (in functions too), except under
    ``if TYPE_CHECKING:``; ``from package import name`` counts as the submodule
    ``package.name`` where one exists, else as the package."""
    tree = ast.parse(path.read_text())
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES and name != this}


IMPORTS = {name: imported_modules(path) for name, path in MODULES.items()}


def test_the_import_graph_has_no_cycles():
    graph = nx.DiGraph(
        [(name, imported) for name, targets in IMPORTS.items() for imported in targets]
    )
    cycles = sorted(sorted(cycle) for cycle in nx.simple_cycles(graph))
    assert cycles == []


def test_utils_import_nothing_above_them():
    upward = {
        name: sorted(target for target in targets if not target.startswith("captum_ssa._utils"))
        for name, targets in IMPORTS.items()
        if name.startswith("captum_ssa._utils")
    }
    assert {name: targets for name, targets in upward.items() if targets} == {}


def test_private_captum_names_are_imported_in_compat_only():
    private = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("captum"):
                if (node.module or "").startswith("captum_ssa"):
                    continue
                hidden = [a.name for a in node.names if a.name.startswith("_")]
                if hidden or "._" in (node.module or ""):
                    private.append(name)
    assert set(private) <= {"captum_ssa._utils._compat"}


def test_the_warning_category_is_public_and_a_user_warning():
    assert captum_ssa.CaptumSSAWarning is CaptumSSAWarning
    assert issubclass(CaptumSSAWarning, UserWarning)


@pytest.mark.parametrize("depth", [0, 3])
@pytest.mark.parametrize("through_a_module", [False, True])
def test_warn_points_at_the_line_that_called_into_the_package(depth, through_a_module):
    # frames whose module is captum_ssa, nested as deep as a public entry point's,
    # warning directly or from a forward hook run by torch's module call
    namespace = {"__name__": "captum_ssa.fake", "warn": warn, "layer": nn.Linear(2, 2)}
    source = (
        "def hook(module, args, output):\n    warn('from a hook')\n"
        "layer.register_forward_hook(hook)\n"
        + ("def level0():\n    layer(torch.ones(1, 2))\n" if through_a_module else "")
        + ("" if through_a_module else "def level0():\n    warn('deep')\n")
        + "".join(f"def level{i}():\n    level{i - 1}()\n" for i in range(1, depth + 1))
    )
    namespace["torch"] = torch
    exec(compile(source, "captum_ssa_fake.py", "exec"), namespace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        namespace[f"level{depth}"]()
    assert [(w.category, w.filename, w.lineno) for w in caught] == [
        (CaptumSSAWarning, __file__, line)
    ]


def test_import_leaves_scikit_learn_scipy_stats_and_pandas_to_the_code_that_uses_them():
    # only LayeredInfluence's linear probe and a few evaluations need them: a second or
    # more of import time that `import captum_ssa` should not pay
    code = (
        "import sys, captum_ssa\n"
        "print(','.join(m for m in ('sklearn', 'scipy.stats', 'scipy.cluster', 'pandas') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"captum_ssa", "__future__"}


def test_every_imported_distribution_is_declared_and_every_declared_one_imported():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {Requirement(spec).name.lower() for spec in project["dependencies"]}
    optional = {
        Requirement(spec).name.lower()
        for specs in project["optional-dependencies"].values()
        for spec in specs
    }
    distributions = importlib.metadata.packages_distributions()
    imported = {
        distribution.lower()
        for module in _imported_top_level_modules()
        for distribution in distributions.get(module, [module])
    }
    assert imported - declared - optional == set()
    assert declared - imported == set()  # no dependency declared but never imported
