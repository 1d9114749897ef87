"""The interactive HTML view: the page's data, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import torch

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


def kept_edges(graph: nx.DiGraph, threshold: float) -> nx.DiGraph:
    """The edges the slider keeps: |weight| at least threshold x the layer pair's largest."""
    largest: dict[tuple[str, str], float] = {}
    for (lower, _), (upper, _), weight in graph.edges(data="weight"):
        largest[lower, upper] = max(largest.get((lower, upper), 0.0), abs(weight))
    kept = nx.DiGraph()
    kept.add_nodes_from(graph.nodes)
    for source, sink, weight in graph.edges(data="weight"):
        relative = abs(weight) / largest[source[0], sink[0]]
        # no edge so close to the threshold that the page's rounding could flip it
        assert abs(relative - threshold) > 1e-4
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
