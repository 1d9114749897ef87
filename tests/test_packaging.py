"""The repository as a user's clone sees it: one version, honest floors, a licence,
and documentation that names nothing outside the repository."""

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import captum_ssa

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself needs tomli below 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FLOOR_PINS = ROOT / ".ci" / "floors.txt"


def _requirement_floor(requirement: str) -> tuple[str, str]:
    """``"torch>=2.4"`` -> ``("torch", "2.4")``; the floor is the ``>=`` bound."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+).*", requirement)
    assert match, f"{requirement!r} declares no >= floor"
    return match.group(1).lower(), match.group(2)


def _floor_pins() -> dict[str, str]:
    pins = {}
    for line in FLOOR_PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _same_version(declared: str, pinned: str) -> bool:
    """``2.4`` declared and ``2.4.0`` pinned are the same release."""
    as_numbers = [[int(part) for part in v.split(".")] for v in (declared, pinned)]
    width = max(len(numbers) for numbers in as_numbers)
    first, second = ([*numbers, *[0] * (width - len(numbers))] for numbers in as_numbers)
    return first == second


def test_the_installed_version_is_the_package_version():
    assert importlib.metadata.version("captum-ssa") == captum_ssa.__version__


def test_the_version_has_one_source():
    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, attribute = dynamic.rsplit(".", 1)
    assert (module, attribute) == ("captum_ssa._version", "__version__")
    assert re.fullmatch(r"\d+\.\d+\.\d+", captum_ssa.__version__)


@pytest.mark.parametrize(
    "requirement",
    [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["quantus"]],
)
def test_every_runtime_floor_is_pinned_in_the_floors_run(requirement):
    name, floor = _requirement_floor(requirement)
    pins = _floor_pins()
    assert name in pins, f"{name} is missing from .ci/floors.txt"
    assert _same_version(floor, pins[name]), (
        f"pyproject declares {name}>={floor} but the floors run installs {name}=={pins[name]}"
    )


@pytest.mark.parametrize("extra", ["test", "docs"])
def test_every_test_tool_floor_is_pinned_in_the_floors_run(extra):
    pins = _floor_pins()
    for requirement in PROJECT["optional-dependencies"][extra]:
        name, floor = _requirement_floor(requirement)
        assert name in pins and _same_version(floor, pins[name]), requirement


def test_the_floors_run_pins_nothing_undeclared():
    declared = {
        _requirement_floor(r)[0]
        for group in [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
        for r in group
        if not r.startswith("captum-ssa")
    }
    assert set(_floor_pins()) <= declared


def test_the_python_floor_matches_the_classifiers_and_the_floors_run():
    floor = re.fullmatch(r">=\s*3\.(\d+)", PROJECT["requires-python"])
    assert floor, PROJECT["requires-python"]
    minors = sorted(
        int(c.rsplit(".", 1)[1])
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert minors[0] == int(floor.group(1))
    makefile = (ROOT / "Makefile").read_text()
    assert f"FLOORS_PYTHON ?= python3.{floor.group(1)}" in makefile


def test_the_licence_is_declared_and_shipped():
    assert PROJECT["license"] == "BSD-3-Clause"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder" in text
    assert "License :: OSI Approved :: BSD License" not in PROJECT["classifiers"], (
        "PEP 639: the SPDX expression replaces the licence classifier"
    )


def test_the_package_is_marked_typed():
    assert (Path(captum_ssa.__file__).parent / "py.typed").is_file()
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]["captum_ssa"]
    assert "py.typed" in package_data


def _repository_text_files():
    def skipped(part: str) -> bool:
        # caches, virtual environments and build outputs; .ci holds tracked files
        hidden = part.startswith(".") and part != ".ci"
        built = part in {"out", "build", "dist", "_build"} or part.endswith(".egg-info")
        return hidden or built

    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        # docs/tutorials/ holds the copies of tutorials/*.ipynb that `make docs` reads
        if any(skipped(part) for part in relative.parts) or relative.parts[:2] == (
            "docs",
            "tutorials",
        ):
            continue
        if path.is_file() and path.suffix in {".py", ".md", ".toml", ".txt", ".ipynb", ".html"}:
            yield relative, path.read_text(errors="replace")


def test_nothing_in_the_repository_points_outside_it():
    # the specification and the paper copies lived in a folder beside the repository
    # while it was written; a user's clone has neither (the names are spelt in pieces
    # so that this file does not name them either)
    folder, specification = "shared" + "/", "METHODS" + ".md"
    offenders = [
        str(relative)
        for relative, text in _repository_text_files()
        if re.search(rf"\b{folder}", text) or specification in text
    ]
    assert offenders == []


_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)#\s]*)(?:#([^)\s]*))?\)")


def _anchors(markdown: str) -> set[str]:
    explicit = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    headings = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    }
    return explicit | headings


@pytest.mark.parametrize(
    "page",
    [
        Path("README.md"),
        Path("CONTRIBUTING.md"),
        Path("CHANGELOG.md"),
        *sorted(p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md")),
    ],
    ids=str,
)
def test_documentation_links_resolve(page):
    text = (ROOT / page).read_text()
    for target, anchor in _LINK.findall(text):
        destination = (ROOT / page).parent / target if target else ROOT / page
        assert destination.exists(), f"{page} links to missing {target}"
        if anchor and destination.suffix == ".md":
            assert anchor in _anchors(destination.read_text()), (
                f"{page} links to #{anchor}, which {target or page} does not have"
            )


@pytest.mark.parametrize(
    ("method", "page"),
    [
        ("SwitchedLinearProjection", "switched_linear_projection.md"),
        ("InactiveStateSensitivity", "inactive_state_sensitivity.md"),
        ("StepwiseSensitivity", "stepwise_sensitivity.md"),
        ("LayeredInfluence", "layered_influence.md"),
    ],
)
def test_every_method_has_a_page_in_the_index(method, page):
    assert method in captum_ssa.__all__
    index = (ROOT / "docs" / "README.md").read_text()
    assert f"({page})" in index and f"`{method}`" in index
    assert f"`captum_ssa.{method}(" in (ROOT / "docs" / page).read_text()


def test_the_references_give_the_papers_arxiv_ids():
    references = (ROOT / "docs" / "references.md").read_text()
    for arxiv_id in ["1909.11275", "1708.02153", "1311.2901", "1810.03292", "2009.07896"]:
        assert f"arXiv:{arxiv_id}" in references
