"""Sphinx configuration of the documentation site (`make docs`).

Sphinx with MyST-NB: the method pages stay the Markdown files GitHub shows, autodoc with
napoleon reads the Captum-style docstrings (Args/Returns/Examples), and the tutorials are the
stored executed notebooks (never executed here). Nothing is fetched: no intersphinx, and the
link check is nitpicky mode under -W (every internal reference must resolve).
"""

import importlib
import re
import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

import captum_ssa

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "captum-ssa"
author = "the captum-ssa contributors"
copyright = "the captum-ssa contributors"
release = version = captum_ssa.__version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
root_doc = "index"
# the GitHub index of docs/ (index.md is the site's); the copied notebooks are built
exclude_patterns = ["_build", "README.md"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# the stored outputs are the tutorials' record: shown as they are, never re-executed
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 4

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = True
# Type fields ("int, optional", "Tensor or tuple") name third-party and builtin types that no
# local inventory describes (nothing is fetched), plain words, and private modules and bases
# that the reference does not document; every other reference must resolve.
nitpick_ignore_regex = [
    (
        "py:.*",
        r"(torch|numpy|np|nn|captum|networkx|nx|matplotlib|pandas|quantus|typing|"
        r"collections|types|enum|pathlib|os|abc|dataclasses|contextlib)(\..*)?",
    ),
    (
        "py:.*",
        r"(Tensor|Module|ndarray|Figure|Axes|DiGraph|DataFrame|Path|Callable|Iterable|"
        r"Iterator|Sequence|Mapping|Any|Union|Optional|TensorOrTupleOfTensorsGeneric|TargetType|"
        r"BaselineType|Literal|Generator|NamedTuple|Hashable|PathLike|Attribution|TypeAlias|"
        r"Target|Node)",
    ),
    (
        "py:class",
        r"(int|float|str|bool|dict|list|tuple|set|object|type|slice|None|\.\.\.|"
        r"optional|iterable|batches|scalar|ints|collection|array)",
    ),
    (
        "py:class",
        r"captum_ssa\.(_.*|.*\._.*|graph\.model\.GraphData|graph\.comparison\.Graph|"
        r".*\.R|.*\.WeightedCall)",
    ),
    # the graph package's docstring names its modules, which are documented through it
    ("py:mod", r"captum_ssa\.(graph|evaluation)\..*"),
]
html_theme = "furo"
html_title = f"captum-ssa {release}"
html_static_path: list[str] = []


def _copy_tutorials() -> None:
    """The notebooks live in tutorials/; Sphinx reads sources under docs/ only."""
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    for stale in target.glob("*.ipynb"):
        stale.unlink()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        shutil.copyfile(notebook, target / notebook.name)


_copy_tutorials()

PUBLIC_MODULES = [
    "captum_ssa",
    "captum_ssa.graph",
    "captum_ssa.evaluation",
    "captum_ssa.relevance",
]


def _check_every_public_name_is_documented(app: Sphinx, exception: Exception | None) -> None:
    """The API reference names every public class and function, or the build fails."""
    if exception is not None:
        return
    documented = set(app.env.get_domain("py").objects)  # type: ignore[attr-defined]
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (isinstance(obj, type) or callable(obj)):
                continue  # constants (BUILT_IN, PRESETS, DEFAULT_METRICS) are listed as data
            candidates = {f"{module_name}.{name}", f"{obj.__module__}.{name}"}
            candidates |= {f"{m}.{name}" for m in PUBLIC_MODULES}
            if not candidates & documented:
                missing.append(f"{module_name}.{name}")
    if missing:
        raise RuntimeError(f"the API reference lacks {', '.join(missing)}")


def _resolve_unqualified(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Docstrings name the package's objects as the reader knows them (``StepwiseSensitivity``,
    ``DependencyGraph.mask``, a method of the class at hand); resolve such a name when exactly
    one documented object ends with it, else leave it to nitpicky mode to report."""
    if node.get("refdomain") != "py":
        return None

    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")
    matches = [
        name
        for name, entry in domain.objects.items()
        if (name == target or name.endswith("." + target)) and not entry.aliased
    ]
    if node.get("py:class"):
        inside = [m for m in matches if m.endswith(f"{node['py:class']}.{target}")]
        matches = inside or matches
    if len(matches) != 1:
        return None
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], matches[0], node, contnode
    )


# the ids the pages mark as GitHub does, ``<a id="x"></a>``
_HTML_ANCHOR = re.compile(r'^<a id="([^"]+)"></a>$', re.MULTILINE)
HTML_ANCHORS = {
    anchor for page in DOCS.glob("*.md") for anchor in _HTML_ANCHOR.findall(page.read_text())
}
_LINK_TO_ANCHOR = re.compile(r"\[([^\]`]+)\]\((?:[\w.-]+\.md)?#([\w-]+)\)")


def _html_anchors_as_targets(app: Sphinx, docname: str, source: list[str]) -> None:
    """GitHub's anchors as MyST targets, and the links to them as references to those targets
    (MyST resolves ``page.md#id`` against headings only, before myst-parser 5)."""

    def as_reference(link: re.Match[str]) -> str:
        text, anchor = link.groups()
        return f"{{ref}}`{text} <{anchor}>`" if anchor in HTML_ANCHORS else link.group(0)

    text = _HTML_ANCHOR.sub(r"(\1)=", source[0])
    source[0] = _LINK_TO_ANCHOR.sub(as_reference, text)


def setup(app: Sphinx) -> None:
    app.connect("source-read", _html_anchors_as_targets)
    app.connect("missing-reference", _resolve_unqualified)
    app.connect("build-finished", _check_every_public_name_is_documented)
