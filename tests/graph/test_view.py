"""The interactive HTML view: the page's data, and the page itself in headless Chromium."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import torch
from torch import Tensor

from captum_ssa.graph import DependencyGraph, graphs_to_html, shared_subgraph

NAMES = ["low", "mid", "top"]
SIZES = [7, 6, 3]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
HIGHLIGHTS = ("ancestor", "descendant", "selected")
# installed before the page loads, so that errors of its first run are caught too
COLLECT_ERRORS = (
    "window.pageErrors = [];"
    "window.addEventListener('error', e => window.pageErrors.push(String(e.message)));"
    "window.addEventListener('unhandledrejection', e => window.pageErrors.push(String(e.reason)));"
)


def sparse_graph(kept: list[list[int]], target: Any, seed: int) -> DependencyGraph:
    """Random relevances and signed weights; about two thirds of the kept pairs as edges."""
    generator = torch.Generator().manual_seed(seed)
    neurons = [torch.tensor(k, dtype=torch.long) for k in kept]
    edges = []
    for lower in range(len(NAMES) - 1):
        pairs = torch.cartesian_prod(neurons[lower], neurons[lower + 1]).reshape(-1, 2)
        edges.append(pairs[torch.rand(len(pairs), generator=generator) < 0.65])
    return DependencyGraph(
        NAMES,
        None,
        neurons,
        [torch.rand(size, generator=generator) for size in SIZES],
        [torch.randn(len(neurons[i + 1]), SIZES[i], generator=generator) for i in range(2)],
        edges,
        target=target,
    )


@pytest.fixture
def graphs() -> dict[int, DependencyGraph]:
    return {
        0: sparse_graph([[0, 1, 2, 4, 6], [0, 1, 3, 5], [0, 2]], 0, seed=0),
        1: sparse_graph([[1, 2, 3, 4], [0, 1, 2, 3, 5], [1, 2]], 1, seed=1),
    }


def page_data(path: Path) -> dict[str, Any]:
    """The JSON blob of a written page."""
    html = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html)
    assert found is not None
    return json.loads(found.group(1))


def view_networkx(view: dict[str, Any]) -> nx.DiGraph:
    """A view of the page read back as the networkx graph it was written from."""
    graph = nx.DiGraph()
    for layer in view["layers"]:
        for index, relevance in zip(layer["neurons"], layer["relevance"]):
            graph.add_node((layer["name"], index), relevance=relevance)
    for lower, pair in enumerate(view["edges"]):
        lower_name, upper_name = view["layers"][lower]["name"], view["layers"][lower + 1]["name"]
        for source, sink, weight in zip(pair["lower"], pair["upper"], pair["weight"]):
            graph.add_edge((lower_name, source), (upper_name, sink), weight=weight)
    return graph


def assert_same_graph(actual: nx.DiGraph, expected: nx.DiGraph) -> None:
    """Same nodes and edges; relevances and weights to the page's six digits."""
    assert set(actual.nodes) == set(expected.nodes)
    assert set(actual.edges) == set(expected.edges)
    for node, relevance in expected.nodes(data="relevance"):
        assert actual.nodes[node]["relevance"] == pytest.approx(relevance, rel=1e-5)
    for source, sink, weight in expected.edges(data="weight"):
        assert actual.edges[source, sink]["weight"] == pytest.approx(weight, rel=1e-5)


def test_page_holds_every_graph_and_fetches_nothing(
    graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    path = graphs_to_html(graphs, tmp_path / "view.html", title="Two classes")
    html = path.read_text(encoding="utf-8")
    # inline scripts and styles only: no attribute or rule that could load anything
    assert re.search(r"\b(src|href)\s*=|<link|@import|url\(", html) is None
    data = page_data(path)
    assert data["title"] == "Two classes"
    assert [view["name"] for view in data["views"]] == ["0", "1", "shared by all 2"]
    for view, graph in zip(data["views"], graphs.values()):
        assert [layer["size"] for layer in view["layers"]] == SIZES
        assert_same_graph(view_networkx(view), graph.to_networkx())


def test_shared_view_is_the_shared_subgraph(
    graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    data = page_data(graphs_to_html(graphs, tmp_path / "view.html"))
    common = shared_subgraph(list(graphs.values())).to_networkx()
    assert common.number_of_nodes() > 0 and common.number_of_edges() > 0
    assert_same_graph(view_networkx(data["views"][-1]), common)
    assert "[0, 1]" in data["views"][-1]["note"]
    alone = page_data(graphs_to_html(graphs, tmp_path / "alone.html", shared=False))
    assert [view["name"] for view in alone["views"]] == ["0", "1"]


def test_to_html_writes_one_view_titled_by_target(
    graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    path = graphs[1].to_html(tmp_path / "one.html")
    data = page_data(path)
    assert data["title"] == "Dependency graph of target 1"
    assert [view["name"] for view in data["views"]] == ["target 1"]
    assert page_data(graphs[1].to_html(tmp_path / "t.html", title="mine"))["title"] == "mine"


def test_names_cannot_end_the_data_script(tmp_path: Path) -> None:
    name = "</script><b>&"
    graph = DependencyGraph(
        [name, "top"],
        None,
        [[0], [0]],
        [torch.ones(1), torch.ones(1)],
        [torch.ones(1, 1)],
        [[[0, 0]]],
    )
    path = graphs_to_html({"<!--": graph}, tmp_path / "view.html")
    html = path.read_text(encoding="utf-8")
    assert html.count("</script>") == 2  # the data's and the script's own
    data = page_data(path)
    assert data["views"][0]["name"] == "<!--"
    assert data["views"][0]["layers"][0]["name"] == name


def test_values_that_are_not_finite_are_null(tmp_path: Path) -> None:
    relevance = torch.tensor([float("nan"), 1.0])
    graph = DependencyGraph(
        ["low", "top"],
        None,
        [[0, 1], [0]],
        [relevance, torch.ones(1)],
        [torch.tensor([[float("inf"), 2.0]])],
        [[[0, 0], [1, 0]]],
    )
    view = page_data(graphs_to_html({"g": graph}, tmp_path / "view.html"))["views"][0]
    assert view["layers"][0]["relevance"] == [None, 1.0]
    assert view["edges"][0]["weight"] == [None, 2.0]


def test_argument_errors(graphs: dict[int, DependencyGraph], tmp_path: Path) -> None:
    path = tmp_path / "view.html"
    with pytest.raises(TypeError, match="mapping from names"):
        graphs_to_html([graphs[0]], path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        graphs_to_html({}, path)
    with pytest.raises(TypeError, match=r"graphs\['a'\] must be a DependencyGraph"):
        graphs_to_html({"a": "graph"}, path)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="differ as text"):
        graphs_to_html({1: graphs[0], "1": graphs[1]}, path)
    other = DependencyGraph(
        ["a", "b"], None, [[0], [0]], [torch.ones(1)] * 2, [torch.ones(1, 1)], [[]]
    )
    with pytest.raises(ValueError, match="shared=False"):
        graphs_to_html({"x": graphs[0], "y": other}, path)
    assert not path.exists()
    graphs_to_html({"x": graphs[0], "y": other}, path, shared=False)
    assert path.exists()


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium under Selenium; skipped without one, except in CI."""
    binary = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None  # type: ignore[assignment]
    if binary is None or driver_path is None or webdriver is None:
        reason = (
            "the graph view's browser tests need Chromium, its driver and Selenium: "
            "apt-get install chromium chromium-driver; pip install -e '.[test]'"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # the explicit driver path keeps Selenium from looking for (downloading) one
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_window_size(1280, 900)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": COLLECT_ERRORS})
    yield driver
    driver.quit()


def open_page(driver: Any, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # what an earlier page left in the console is not this page's
    driver.get(path.as_uri())
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.body.dataset.ready || window.pageErrors.length")
    )


def page_errors(driver: Any) -> list[str]:
    """Uncaught errors and console errors since the last call."""
    console = [
        entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
    ]
    return driver.execute_script("return window.pageErrors") + console


def requested_urls(driver: Any) -> list[str]:
    """The URLs the browser requested since the last call."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def rendered_nodes(driver: Any) -> set[tuple[str, int]]:
    ids = driver.execute_script(
        "return [...document.querySelectorAll('[data-node]')].map(e => e.dataset.node)"
    )
    assert len(ids) == len(set(ids))
    return {(node.rsplit(":", 1)[0], int(node.rsplit(":", 1)[1])) for node in ids}


def choose_view(driver: Any, position: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "view")).select_by_index(position)


def set_threshold(driver: Any, threshold: float) -> None:
    driver.execute_script(
        "const slider = document.getElementById('threshold'); slider.value = arguments[0];"
        "slider.dispatchEvent(new Event('input'));",
        threshold,
    )


def node_element(driver: Any, node: tuple[str, int]) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-node="{node[0]}:{node[1]}"]')


def highlighted(driver: Any) -> dict[str, set[tuple[str, int]]]:
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('[data-highlighted]')]"
        ".map(e => [e.dataset.highlighted, e.dataset.node])"
    )
    found: dict[str, set[tuple[str, int]]] = {
        "ancestor": set(),
        "descendant": set(),
        "selected": set(),
    }
    for kind, node in pairs:
        layer, index = node.rsplit(":", 1)
        found[kind].add((layer, int(index)))
    return found


def kept_edges(graph: nx.DiGraph, threshold: float, page_weights: bool = False) -> nx.DiGraph:
    """The edges the slider keeps: |weight| at least threshold x the layer pair's largest.

    page_weights: the weights are the page's own (rounded as it stores them), so the page's
    arithmetic is this one's, and edges may lie at the threshold."""
    largest: dict[tuple[str, str], float] = {}
    for (lower, _), (upper, _), weight in graph.edges(data="weight"):
        largest[lower, upper] = max(largest.get((lower, upper), 0.0), abs(weight))
    kept = nx.DiGraph()
    kept.add_nodes_from(graph.nodes)
    for source, sink, weight in graph.edges(data="weight"):
        relative = abs(weight) / largest[source[0], sink[0]]
        # no edge so close to the threshold that the page's rounding could flip it
        assert page_weights or abs(relative - threshold) > 1e-4
        if relative >= threshold:
            kept.add_edge(source, sink)
    return kept


def test_every_neuron_of_every_view_is_rendered_without_errors_or_requests(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    path = graphs_to_html(graphs, tmp_path / "view.html")
    requested_urls(browser)
    open_page(browser, path)
    expected = [graph.to_networkx() for graph in graphs.values()]
    expected.append(shared_subgraph(list(graphs.values())).to_networkx())
    for position, graph in enumerate(expected):
        choose_view(browser, position)
        assert rendered_nodes(browser) == set(graph.nodes)
        count = browser.execute_script("return document.getElementById('edge-count').textContent")
        assert count.startswith(f"{graph.number_of_edges()} of {graph.number_of_edges()} edges")
        drawn = browser.execute_script(
            "const c = document.getElementById('edges');"
            "const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let opaque = 0; for (let i = 3; i < pixels.length; i += 4) opaque += pixels[i] > 0;"
            "return opaque"
        )
        assert drawn > 0
    assert page_errors(browser) == []
    assert requested_urls(browser) == [path.as_uri()]


@pytest.mark.parametrize("threshold", [0.0, 0.45])
def test_click_highlights_ancestors_and_descendants(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path, threshold: float
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(browser, graphs_to_html(graphs, tmp_path / "view.html"))
    choose_view(browser, 1)
    set_threshold(browser, threshold)
    reference = kept_edges(graphs[1].to_networkx(), threshold)
    count = browser.execute_script("return document.getElementById('edge-count').textContent")
    assert count.startswith(f"{reference.number_of_edges()} of ")
    for node in sorted(reference.nodes):
        ActionChains(browser, duration=0).move_to_element(
            node_element(browser, node)
        ).click().perform()
        assert highlighted(browser) == {
            "ancestor": nx.ancestors(reference, node),
            "descendant": nx.descendants(reference, node),
            "selected": {node},
        }
    # the background clears the selection
    ActionChains(browser, duration=0).move_to_element_with_offset(
        browser.find_element("id", "neurons"), 0, 0
    ).click().perform()
    assert highlighted(browser) == {kind: set() for kind in HIGHLIGHTS}
    assert page_errors(browser) == []


def test_hover_shows_relevance_and_strongest_edges(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, graphs_to_html(graphs, tmp_path / "view.html"))
    graph = graphs[0].to_networkx()
    node = ("mid", 3)
    ActionChains(browser, duration=0).move_to_element(node_element(browser, node)).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    assert tooltip.is_displayed()
    text = tooltip.text
    shown = re.search(r"^layer mid\nindex 3\nrelevance (\S+)\n", text)
    assert shown is not None, text
    assert float(shown.group(1)) == pytest.approx(graph.nodes[node]["relevance"], rel=1e-3)
    strongest_input = max(graph.in_edges(node, data="weight"), key=lambda e: abs(e[2]))
    strongest_output = max(graph.out_edges(node, data="weight"), key=lambda e: abs(e[2]))
    inputs, outputs = text.split("strongest outputs")
    assert inputs.split("strongest inputs\n")[1].startswith(f"low:{strongest_input[0][1]} ")
    assert outputs.lstrip("\n").startswith(f"top:{strongest_output[1][1]} ")
    assert page_errors(browser) == []


def test_hostile_names_and_values_that_are_not_finite_render(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    graph = DependencyGraph(
        ["</script><b>", "top"],
        None,
        [[0, 1], [0]],
        [torch.tensor([math.nan, 1.0]), torch.ones(1)],
        [torch.tensor([[math.inf, 2.0]])],
        [[[0, 0], [1, 0]]],
    )
    open_page(browser, graphs_to_html({"<!--": graph}, tmp_path / "view.html", title="<i>x"))
    assert browser.title == "<i>x"
    assert rendered_nodes(browser) == {("</script><b>", 0), ("</script><b>", 1), ("top", 0)}
    ActionChains(browser, duration=0).move_to_element(
        node_element(browser, ("</script><b>", 0))
    ).perform()
    assert "relevance not finite" in browser.find_element(By.ID, "tooltip").text
    assert page_errors(browser) == []


def test_a_few_thousand_edges_render(browser: Any, tmp_path: Path) -> None:
    sizes = [48, 64, 48, 10]
    neurons = [torch.arange(size) for size in sizes]
    graph = DependencyGraph(
        [f"layer{i}" for i in range(len(sizes))],
        None,
        neurons,
        [torch.rand(size) for size in sizes],
        [torch.rand(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)],
        [torch.cartesian_prod(neurons[i], neurons[i + 1]) for i in range(len(sizes) - 1)],
    )
    assert graph.to_networkx().number_of_edges() == 48 * 64 + 64 * 48 + 48 * 10
    open_page(browser, graph.to_html(tmp_path / "large.html"))
    assert rendered_nodes(browser) == set(graph.to_networkx().nodes)
    assert page_errors(browser) == []


# ---------------------------------------------------------------- issue 20: the page as a tool


def dense_graph(sizes: list[int], seed: int = 0) -> DependencyGraph:
    """Every pair of neurons of consecutive layers an edge; random signed weights."""
    generator = torch.Generator().manual_seed(seed)
    neurons = [torch.arange(size) for size in sizes]
    return DependencyGraph(
        [f"layer{depth}" for depth in range(len(sizes))],
        None,
        neurons,
        [torch.rand(size, generator=generator) for size in sizes],
        [torch.randn(upper, lower, generator=generator) for lower, upper in zip(sizes, sizes[1:])],
        [torch.cartesian_prod(low, up) for low, up in zip(neurons, neurons[1:])],
    )


def top_k_edges(graph: nx.DiGraph, k: int, threshold: float = 0.0) -> nx.DiGraph:
    """The edges the page shows: among the k largest |weight| into their upper neuron, and
    at least threshold x the layer pair's largest."""
    slider = kept_edges(graph, threshold) if threshold > 0 else graph
    kept = nx.DiGraph()
    kept.add_nodes_from(graph.nodes)
    for node in graph.nodes:
        strongest = sorted(graph.in_edges(node, data="weight"), key=lambda e: -abs(e[2]))[:k]
        kept.add_edges_from((s, t) for s, t, _ in strongest if slider.has_edge(s, t))
    return kept


def edge_count(driver: Any) -> int:
    text = driver.execute_script("return document.getElementById('edge-count').textContent")
    return int(text.split(" of ")[0])


def transform(driver: Any) -> list[float]:
    text = driver.execute_script("return document.getElementById('stage').dataset.transform")
    return [float(value) for value in text.split(",")]


def centre_of(driver: Any, node: str) -> tuple[float, float]:
    return tuple(  # type: ignore[return-value]
        driver.execute_script(
            'const c = document.querySelector(`[data-node="${arguments[0]}"]`);'
            "return [Number(c.getAttribute('cx')), Number(c.getAttribute('cy'))]",
            node,
        )
    )


def wait_painted(driver: Any) -> None:
    """Two animation frames: whatever was scheduled for the next frame has been painted."""
    driver.execute_async_script(
        "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done));"
    )


def wait_settled(driver: Any) -> None:
    """Until the full paint that follows zooming or panning a page of many edges is painted."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.body.dataset.settling === 'false'")
    )
    wait_painted(driver)


def metadata_text(value: Any) -> str:
    """A metadata value as the provenance panel writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(metadata_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def test_page_data_carries_version_metadata_and_class_names(
    graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    import captum_ssa

    graphs[0]._metadata = {"relevance": "gradient", "percentile": 50, "scale": math.nan}
    path = graphs_to_html(graphs, tmp_path / "view.html", class_names={1: "one", 2: "two"})
    data = page_data(path)
    assert data["version"] == captum_ssa.__version__
    assert data["top_k"] == 8
    assert data["views"][0]["metadata"] == {
        "relevance": "gradient",
        "percentile": 50,
        "scale": None,
    }
    assert data["views"][2]["metadata"] == {"shared_by": [0, 1]}
    assert [view.get("label") for view in data["views"]] == ["0", "one (1)", "shared by all 2"]
    # the top layer's neurons are the model's outputs: labelled by class
    assert data["views"][0]["layers"][-1]["labels"] == {"2": "two"}  # it keeps top:0 and top:2
    assert data["views"][1]["layers"][-1]["labels"] == {"1": "one", "2": "two"}
    assert "labels" not in data["views"][1]["layers"][0]
    one = page_data(graphs[1].to_html(tmp_path / "one.html", class_names={1: "one"}))
    assert one["views"][0]["name"] == "target 1" and one["views"][0]["label"] == "one (target 1)"
    assert page_data(graphs[1].to_html(tmp_path / "all.html", top_k=None))["top_k"] == 0


def test_max_edges_keeps_the_strongest_in_edges_and_warns(tmp_path: Path) -> None:
    from captum_ssa._utils.warn import CaptumSSAWarning

    graph = dense_graph([12, 9, 3], seed=3)
    total = 12 * 9 + 9 * 3
    with pytest.warns(CaptumSSAWarning, match=f"{total} edges, more than max_edges=60") as caught:
        path = graph.to_html(tmp_path / "view.html", max_edges=60)
    assert caught[0].filename == __file__
    view = page_data(path)["views"][0]
    # k in-edges per neuron: 9k + 3k <= 60, so k = 5
    assert view["left_out"] == {"edges": total - 60, "of": total, "per_neuron": 5, "max_edges": 60}
    expected = top_k_edges(graph.to_networkx(), 5)
    assert set(view_networkx(view).edges) == set(expected.edges)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = page_data(graph.to_html(tmp_path / "full.html", max_edges=total))["views"][0]
    assert "left_out" not in full
    assert view_networkx(full).number_of_edges() == total


def test_new_argument_errors(graphs: dict[int, DependencyGraph], tmp_path: Path) -> None:
    path = tmp_path / "view.html"
    for top_k in (-1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be"):
            graphs_to_html(graphs, path, top_k=top_k)  # type: ignore[arg-type]
    for max_edges in (0, 1.5):
        with pytest.raises(ValueError, match="max_edges must be"):
            graphs_to_html(graphs, path, max_edges=max_edges)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="class_names must be a mapping"):
        graphs_to_html(graphs, path, class_names=["zero"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="class_names must be a mapping"):
        graphs[0].to_html(path, class_names=[(0, "zero")])  # type: ignore[arg-type]
    assert not path.exists()


def test_zoom_pan_and_reset_move_the_view(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    graph = dense_graph([120, 90, 5])
    open_page(browser, graph.to_html(tmp_path / "view.html"))
    assert transform(browser) == [1, 0, 0]
    first, second = centre_of(browser, "layer1:10"), centre_of(browser, "layer1:11")
    # too close for their indices at first; the wheel brings them apart and shows them
    visible = (
        "return document.querySelectorAll("
        "'text.index[visibility=visible][data-index-of^=\"layer1:\"]').length"
    )
    assert browser.execute_script(visible) == 0
    box = browser.execute_script(
        "const b = document.getElementById('stage').getBoundingClientRect(); return [b.left, b.top]"
    )
    # mouse events carry whole pixels
    pointer = (round(box[0] + first[0]), round(box[1] + first[1]))
    browser.execute_script(
        "document.getElementById('stage').dispatchEvent(new WheelEvent('wheel', "
        "{deltaY: -500, clientX: arguments[0], clientY: arguments[1], bubbles: true, "
        "cancelable: true}))",
        *pointer,
    )
    wait_painted(browser)
    k, x, y = transform(browser)
    assert k == pytest.approx(math.exp(1.0), rel=1e-3)
    # the point under the pointer stays there: the neuron moves k times its distance from it
    at = (pointer[0] - box[0], pointer[1] - box[1])
    assert centre_of(browser, "layer1:10") == pytest.approx(
        [at[i] + k * (first[i] - at[i]) for i in range(2)], abs=0.11
    )
    spread = centre_of(browser, "layer1:11")[0] - centre_of(browser, "layer1:10")[0]
    assert spread == pytest.approx(k * (second[0] - first[0]), rel=1e-2)
    assert browser.execute_script(visible) > 0
    # dragging the background pans by the distance dragged, and selects nothing
    ActionChains(browser, duration=0).move_to_element_with_offset(
        browser.find_element("id", "neurons"), -400, 300
    ).click_and_hold().move_by_offset(60, 0).move_by_offset(60, -40).release().perform()
    wait_painted(browser)
    assert transform(browser) == pytest.approx([k, x + 120, y - 40], abs=1e-3)
    assert highlighted(browser)["selected"] == set()
    browser.find_element("id", "reset-view").click()
    wait_painted(browser)
    assert transform(browser) == [1, 0, 0]
    assert centre_of(browser, "layer1:10") == pytest.approx(first)
    assert page_errors(browser) == []


def search_for(driver: Any, query: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "search")
    box.clear()
    box.send_keys(query + Keys.ENTER)
    return str(driver.find_element(By.ID, "search-status").text)


def test_search_selects_a_neuron_by_id_or_label_and_a_graph_by_name(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    names = {0: "zero", 1: "one", 2: "two"}
    open_page(browser, graphs_to_html(graphs, tmp_path / "view.html", class_names=names))
    labels = browser.execute_script(
        "return [...document.querySelectorAll('#view option')].map(o => o.textContent)"
    )
    assert labels == ["zero (0)", "one (1)", "shared by all 2"]
    reference = graphs[0].to_networkx()
    assert search_for(browser, "mid:3") == "selected mid:3"
    assert highlighted(browser) == {
        "ancestor": nx.ancestors(reference, ("mid", 3)),
        "descendant": nx.descendants(reference, ("mid", 3)),
        "selected": {("mid", 3)},
    }
    # graph 0 keeps top:0 and top:2, labelled by class
    assert search_for(browser, "TWO") == "selected top:2"
    assert highlighted(browser)["selected"] == {("top", 2)}
    # a neuron only the other graph keeps: the page switches to it
    assert search_for(browser, "top:1") == "selected top:1"
    assert browser.execute_script("return document.getElementById('view').value") == "1"
    assert search_for(browser, "shared") == "graph shared by all 2"
    assert browser.execute_script("return document.getElementById('view').value") == "2"
    assert search_for(browser, "low:99") == 'nothing matches "low:99"'
    assert page_errors(browser) == []


def test_the_url_hash_keeps_and_restores_the_state(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    path = graphs_to_html(graphs, tmp_path / "view.html")
    open_page(browser, path)
    choose_view(browser, 1)
    set_threshold(browser, 0.45)
    browser.execute_script(
        "const k = document.getElementById('top-k'); k.value = '2';"
        "k.dispatchEvent(new Event('input'));"
    )
    ActionChains(browser, duration=0).move_to_element(
        node_element(browser, ("mid", 1))
    ).click().perform()
    browser.execute_script(
        "document.getElementById('stage').dispatchEvent(new WheelEvent('wheel', "
        "{deltaY: -200, clientX: 500, clientY: 400, bubbles: true, cancelable: true}))"
    )
    wait_painted(browser)
    state = highlighted(browser), edge_count(browser), transform(browser)
    url = browser.current_url
    fragment = url.split("#", 1)[1]
    assert "graph=1" in fragment and "threshold=0.45" in fragment and "top=2" in fragment
    assert "selected=mid%3A1" in fragment and "zoom=" in fragment
    browser.get("about:blank")
    open_page(browser, Path(path))  # without the hash: the default state
    assert highlighted(browser)["selected"] == set() and transform(browser) == [1, 0, 0]
    browser.get("about:blank")
    browser.get(url)
    wait_painted(browser)
    assert browser.execute_script("return document.getElementById('view').value") == "1"
    assert browser.execute_script("return document.getElementById('threshold').value") == "0.45"
    assert browser.execute_script("return document.getElementById('top-k').value") == "2"
    assert (highlighted(browser), edge_count(browser), transform(browser)) == state
    reference = top_k_edges(graphs[1].to_networkx(), 2, 0.45)
    assert state[1] == reference.number_of_edges()
    assert state[0]["ancestor"] == nx.ancestors(reference, ("mid", 1))
    # a hash changed by hand (a pasted link) applies too
    browser.execute_script("location.hash = 'graph=0&threshold=0&top=0&selected=low%3A0'")
    wait_painted(browser)
    assert highlighted(browser)["selected"] == {("low", 0)}
    assert edge_count(browser) == graphs[0].to_networkx().number_of_edges()
    assert page_errors(browser) == []


def provenance(driver: Any) -> dict[str, str]:
    return dict(
        driver.execute_script(
            "return [...document.querySelectorAll('#provenance-table tr')]"
            ".map(r => [r.dataset.key, r.querySelector('.value').textContent])"
        )
    )


def test_provenance_matches_the_graph_metadata_and_the_legend_names_every_colour(
    browser: Any, tmp_path: Path
) -> None:
    import captum_ssa
    from captum_ssa import StepwiseSensitivity
    from tests.models import build

    model, layers, shape = build("mlp")
    x = torch.randn(12, *shape, generator=torch.Generator().manual_seed(0))
    graph = StepwiseSensitivity(model, list(layers.values())).attribute(x, target=1, branching=3)
    assert graph.metadata["model"] == "MLP" and graph.metadata["num_examples"] == 12
    # the model inside a wrapper; a plain function by its name
    wrapped = StepwiseSensitivity(torch.nn.DataParallel(model), list(layers.values()))
    assert wrapped.attribute(x, target=1, branching=3).metadata["model"] == "MLP"

    def logits(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    function = StepwiseSensitivity(logits, list(layers.values()))
    assert function.attribute(x, target=1, branching=3).metadata["model"] == "logits"
    # the model's name is provenance, not part of the graph (a wrapper computes the same graph)
    renamed = copy.copy(graph)
    renamed._metadata = {**graph.metadata, "model": "Wrapper"}
    assert renamed == graph
    renamed._metadata = {**graph.metadata, "mode": "local"}
    assert renamed != graph
    open_page(browser, graph.to_html(tmp_path / "view.html"))
    shown = provenance(browser)
    metadata = json.loads(json.dumps(graph.metadata))
    assert {key: shown[key] for key in metadata} == {
        key: metadata_text(value) for key, value in metadata.items()
    }
    assert shown["layers"] == "fc1, fc2, fc3"
    assert shown["version"] == f"captum-ssa {captum_ssa.__version__}"
    # every layer's colour is in the legend, under the layer's name
    legend = dict(
        browser.execute_script(
            "return [...document.querySelectorAll('#layer-colours li')]"
            ".map(li => [li.dataset.layer, li.querySelector('.swatch').dataset.colour])"
        )
    )
    fills = browser.execute_script(
        "return [...document.querySelectorAll('[data-node]')]"
        ".map(c => [c.dataset.node, c.getAttribute('fill')])"
    )
    assert {node.rsplit(":", 1)[0]: fill for node, fill in fills} == legend
    assert set(legend) == {"fc1", "fc2", "fc3"}
    text = browser.find_element("id", "edge-legend").text
    assert "Step II relevance" in text and "not a weight of the network" in text
    assert page_errors(browser) == []


def test_the_default_top_k_bounds_the_edges_per_neuron(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    graph = dense_graph([20, 16, 12, 4], seed=2)
    full = graph.to_networkx()
    open_page(browser, graph.to_html(tmp_path / "view.html"))
    reference = top_k_edges(full, 8)
    assert max(degree for _, degree in reference.in_degree) == 8
    assert edge_count(browser) == reference.number_of_edges() == 16 * 8 + 12 * 8 + 4 * 8
    for node in [("layer1", 3), ("layer2", 0), ("layer3", 2)]:
        ActionChains(browser, duration=0).move_to_element(node_element(browser, node)).perform()
        # the hover lists the 5 strongest inputs, marking those out of the top k
        inputs = browser.find_element(By.ID, "tooltip").text.split("strongest inputs\n")[1]
        for line in inputs.split("strongest outputs")[0].strip().split("\n"):
            source = line.split(" ")[0]
            layer, index = source.rsplit(":", 1)
            assert line.endswith("(hidden)") != reference.has_edge((layer, int(index)), node)
        ActionChains(browser, duration=0).click().perform()
        assert highlighted(browser) == {
            "ancestor": nx.ancestors(reference, node),
            "descendant": nx.descendants(reference, node),
            "selected": {node},
        }
    # top 3 with a threshold; 0: every edge
    browser.execute_script(
        "const k = document.getElementById('top-k'); k.value = '3';"
        "k.dispatchEvent(new Event('input'));"
    )
    set_threshold(browser, 0.3)
    assert edge_count(browser) == top_k_edges(full, 3, 0.3).number_of_edges()
    browser.execute_script(
        "const k = document.getElementById('top-k'); k.value = '0';"
        "k.dispatchEvent(new Event('input'));"
    )
    set_threshold(browser, 0)
    assert edge_count(browser) == full.number_of_edges()
    assert page_errors(browser) == []


def png_uri(colour: tuple[int, int, int]) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3, 3), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_per_neuron_examples_show_on_hover_and_in_the_panel(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from captum_ssa.graph.view import _page, _page_data, _views

    graph = graphs[0]
    data = _page_data(_views({0: graph}, shared=False), "examples")
    examples: dict[str, Any] = {}
    # images (with a pattern) for "low", token text and tabular values for "mid"
    for index in graph.neurons("low").tolist():
        examples[f"low:{index}"] = {
            "top": [
                {
                    "example": e,
                    "activation": 1.0 / (e + 1),
                    "image": png_uri((index, e, 9)),
                    "text": None,
                    "values": None,
                }
                for e in range(3)
            ],
            "pattern": png_uri((200, index, 0)),
        }
    for index in graph.neurons("mid").tolist():
        examples[f"mid:{index}"] = {
            "top": [
                {
                    "example": 7,
                    "activation": 2.5,
                    "image": None,
                    "text": f"the cat {index}",
                    "values": None,
                },
                {
                    "example": 8,
                    "activation": 1.5,
                    "image": None,
                    "text": None,
                    "values": [0.5, -1.0, 0.25, 2.0],
                },
            ],
            "pattern": None,
        }
    data["views"][0]["neuron_examples"] = examples
    path = tmp_path / "view.html"
    path.write_text(_page(data), encoding="utf-8")
    open_page(browser, path)
    images = (
        "return [...arguments[0].querySelectorAll('.examples img')].map(i => i.getAttribute('src'))"
    )
    for node, entry in examples.items():
        layer, index = node.split(":")
        ActionChains(browser, duration=0).move_to_element(
            node_element(browser, (layer, int(index)))
        ).perform()
        tooltip = browser.find_element(By.ID, "tooltip")
        assert "top-activating examples" in tooltip.text
        assert browser.execute_script(images, tooltip) == [
            item["image"] for item in entry["top"] if item["image"]
        ]
        ActionChains(browser, duration=0).click().perform()
        panel = browser.find_element(By.ID, "neuron-panel")
        assert panel.is_displayed() and f"Selected: {node}" in panel.text
        assert browser.execute_script(images, panel) == [
            item["image"] for item in entry["top"] if item["image"]
        ]
        pattern = browser.execute_script(
            "const p = arguments[0].querySelector('.pattern img');"
            "return p === null ? null : p.getAttribute('src')",
            panel,
        )
        assert pattern == entry["pattern"]
        if layer == "mid":
            assert f"the cat {index}" in panel.text and "#7: 2.500" in panel.text
            heights = browser.execute_script(
                "return [...arguments[0].querySelectorAll('.bars span')]"
                ".map(s => [s.className, parseFloat(s.style.height)])",
                panel,
            )
            # 30 px for the largest |value|, to a tenth of a pixel
            assert [kind for kind, _ in heights] == ["positive", "negative", "positive", "positive"]
            assert [height for _, height in heights] == pytest.approx([7.5, 15, 3.75, 30], abs=0.06)
    # the top layer has no examples: no section
    ActionChains(browser, duration=0).move_to_element(node_element(browser, ("top", 0))).perform()
    assert "top-activating examples" not in browser.find_element(By.ID, "tooltip").text
    assert page_errors(browser) == []


def test_exports_parse_and_hold_the_selected_subgraph(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    import base64
    import io
    import xml.etree.ElementTree as ElementTree

    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(browser, graphs_to_html(graphs, tmp_path / "view.html"))
    set_threshold(browser, 0.3)
    reference = kept_edges(graphs[0].to_networkx(), 0.3)
    full = graphs[0].to_networkx()
    # nothing selected: everything shown
    shown = nx.parse_graphml(browser.execute_script("return graphView.exportGraphML()"))
    assert set(shown.nodes) == {f"{layer}:{index}" for layer, index in reference.nodes}
    assert shown.number_of_edges() == reference.number_of_edges()
    node = ("mid", 1)
    ActionChains(browser, duration=0).move_to_element(node_element(browser, node)).click().perform()
    up = nx.ancestors(reference, node) | {node}
    down = nx.descendants(reference, node) | {node}
    expected = {(s, t) for s, t in reference.edges if {s, t} <= up or {s, t} <= down}
    name = "{}:{}".format
    graphml = nx.parse_graphml(browser.execute_script("return graphView.exportGraphML()"))
    assert set(graphml.nodes) == {name(*n) for n in up | down}
    assert set(graphml.edges) == {(name(*s), name(*t)) for s, t in expected}
    for source, sink in expected:
        attributes = graphml.edges[name(*source), name(*sink)]
        assert attributes["weight"] == pytest.approx(full.edges[source, sink]["weight"], rel=1e-5)
    for n in up | down:
        attributes = graphml.nodes[name(*n)]
        assert (attributes["layer"], attributes["index"]) == n
        assert attributes["relevance"] == pytest.approx(full.nodes[n]["relevance"], rel=1e-5)
    linked = nx.node_link_graph(
        json.loads(browser.execute_script("return graphView.exportJSON()")), edges="links"
    )
    assert set(linked.nodes) == set(graphml.nodes) and set(linked.edges) == set(graphml.edges)
    assert linked.graph["selected"] == "mid:1" and linked.graph["threshold"] == 0.3
    svg = ElementTree.fromstring(browser.execute_script("return graphView.exportSVG()"))
    namespace = "{http://www.w3.org/2000/svg}"
    circles = svg.findall(f"{namespace}circle")
    assert {c.get("data-node") for c in circles} == {name(*n) for n in full.nodes}
    assert len(svg.findall(f"{namespace}path")) > 0
    png = browser.execute_script("return graphView.exportPNG()")
    assert png.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1])))
    size = browser.execute_script(
        "const c = document.getElementById('edges'); return [c.width, c.height]"
    )
    assert list(image.size) == size
    assert len(image.convert("RGB").getcolors(1 << 20) or []) > 2  # white, edges and neurons
    assert page_errors(browser) == []


def test_export_buttons_download_files(
    browser: Any, graphs: dict[int, DependencyGraph], tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    open_page(browser, graphs_to_html(graphs, tmp_path / "view.html"))
    for button in ("export-graphml", "export-json", "export-svg", "export-png"):
        browser.find_element("id", button).click()
    names = {"0.graphml", "0.json", "0.svg", "0.png"}
    WebDriverWait(browser, 10).until(lambda _: {p.name for p in downloads.iterdir()} >= names)
    graph = nx.read_graphml(downloads / "0.graphml")
    assert graph.number_of_edges() == graphs[0].to_networkx().number_of_edges()
    assert page_errors(browser) == []


def test_a_page_over_max_edges_says_how_many_were_left_out(browser: Any, tmp_path: Path) -> None:
    graph = dense_graph([30, 20, 4])
    with pytest.warns(UserWarning, match="max_edges=300"):
        path = graph.to_html(tmp_path / "view.html", max_edges=300, top_k=None)
    open_page(browser, path)
    note = browser.find_element("id", "left-out")
    assert note.is_displayed()
    # k in-edges per neuron: 20k + 4k <= 300, k = 12
    assert note.text.startswith(f"{30 * 20 + 20 * 4 - 12 * 24} of {30 * 20 + 20 * 4} edges left")
    assert "the 12 strongest in-edges" in note.text
    assert edge_count(browser) == 12 * 24
    assert page_errors(browser) == []


def opaque_pixels(driver: Any) -> int:
    return int(
        driver.execute_script(
            "const c = document.getElementById('edges');"
            "const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let opaque = 0; for (let i = 3; i < pixels.length; i += 4) opaque += pixels[i] > 0;"
            "return opaque"
        )
    )


def test_many_edges_draw_from_cached_bins_as_the_filters_and_selection_change(
    browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    # 10,200 edges: hairlines, composed of one cached picture per weight bin
    graph = dense_graph([60, 80, 60, 10], seed=4)
    path = graph.to_html(tmp_path / "view.html", top_k=None)
    full = view_networkx(page_data(path)["views"][0])
    open_page(browser, path)
    drawn = {}
    for threshold in (0.5, 0.05, 0.3, 0.0, 0.3):
        set_threshold(browser, threshold)
        wait_painted(browser)
        expected = kept_edges(full, threshold, page_weights=True)
        assert edge_count(browser) == expected.number_of_edges()
        drawn[threshold] = opaque_pixels(browser)
    # fewer edges cover fewer pixels; the same threshold the same pixels, blitted or stroked
    assert 0 < drawn[0.5] < drawn[0.3] < drawn[0.05] <= drawn[0.0]
    node = ("layer1", 7)
    ActionChains(browser, duration=0).move_to_element(node_element(browser, node)).click().perform()
    reference = kept_edges(full, 0.3, page_weights=True)
    assert highlighted(browser)["ancestor"] == nx.ancestors(reference, node)
    browser.execute_script(
        "document.getElementById('stage').dispatchEvent(new WheelEvent('wheel', "
        "{deltaY: -300, clientX: 600, clientY: 400, bubbles: true, cancelable: true}))"
    )
    wait_painted(browser)
    # the wheel's frame is the last full paint moved and scaled; the full paint follows
    assert opaque_pixels(browser) > 0
    wait_settled(browser)
    assert opaque_pixels(browser) > 0
    browser.execute_script("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
    browser.execute_script("document.dispatchEvent(new KeyboardEvent('keydown', {key: '0'}))")
    wait_settled(browser)
    assert transform(browser) == [1, 0, 0]
    assert opaque_pixels(browser) == drawn[0.3]
    assert page_errors(browser) == []


def test_examples_from_the_model_cover_every_kept_hidden_neuron_of_every_view(
    browser: Any, tmp_path: Path
) -> None:
    # the page and neuron_examples together, on class graphs from the model and their
    # shared subgraph (which is not itself built from a forward pass)
    from captum_ssa import StepwiseSensitivity
    from captum_ssa.graph.neuron_examples import neuron_examples
    from tests.models import CNN

    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(24, 1, 10, 10)
    labels = torch.arange(24) % 2
    layers = [model.conv1, model.conv2, model.fc1, model.fc2]
    graphs = StepwiseSensitivity(model, layers).class_graphs(x, labels, classes=[0, 1])

    class CountedBatches:
        """Two batches of ``x``, counting the passes over them."""

        passes = 0

        def __iter__(self) -> Iterator[Tensor]:
            CountedBatches.passes += 1
            return iter(x.split(12))

    # the graphs know their model: no forward_func needed, also for the shared view
    path = graphs_to_html(graphs, tmp_path / "examples.html", examples=CountedBatches())
    assert CountedBatches.passes == 1  # one pass over the examples for all three views
    views = page_data(path)["views"]
    assert len(views) == 3  # the two classes and their shared subgraph
    for view, graph in zip(views, [*graphs.values(), shared_subgraph(list(graphs.values()))]):
        kept = {
            f"{layer['name']}:{index}"
            for layer in view["layers"][:-1]
            for index in layer["neurons"]
        }
        assert set(view["neuron_examples"]) == kept
        expected = neuron_examples(graph, x, forward_func=model)
        for key in kept:
            shown = view["neuron_examples"][key]
            assert [e["example"] for e in shown["top"]] == [
                e["example"] for e in expected[key]["top"]
            ]
            assert all(e["image"].startswith("data:image/png;base64,") for e in shown["top"])
            assert shown["pattern"].startswith("data:image/png;base64,")  # ReLU net: exact
    open_page(browser, path)
    assert page_errors(browser) == []
