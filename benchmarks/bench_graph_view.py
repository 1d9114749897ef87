"""Page size and render times of the interactive graph view (``graphs_to_html``).

Graphs measured:

- the demo's page: the class graphs of 3 and 8 of the digits CNN (trained as in
  ``tutorials/demo.py``) and their shared subgraph, with each hidden neuron's top test
  digits and switched-weights pattern (``examples=``);
- synthetic graphs, every pair of neurons of consecutive layers an edge, random
  relevances and weights: layers 48-64-48-10 (6,624 edges), 128-256-256-10
  (100,864 edges) with the page's default top 8 in-edges per neuron and with
  all edges shown, and 256-2048-1 (526,336 edges: the VGG-11 graph of issue 20,
  ``features[26], classifier[3], classifier[6]``), written with the default
  ``max_edges`` (the strongest in-edges per neuron, 98,352 edges) and in full.

For each page, in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium, software rendering), medians over
fresh loads of:

- load: from navigation start to the page's ``performance.mark("graph-view-rendered")``,
  which the page sets two animation frames after its first render: after the
  first paint;
- slider: a new edge threshold (0.5, 0.05, 0.3, 0 in turn) until two animation
  frames later (redrawn and painted); median and largest;
- click: selecting a neuron (ancestors, descendants, redraw) until painted;
- zoom: one wheel step until painted (on pages of over 2,000 edges in the top k,
  that frame shows the last full paint moved and scaled); zoom settled: until the
  full paint that follows once the view rests 150 ms.

``--screenshot PATH`` also saves the demo page with a fc1 neuron selected and
hovered (the README's picture). Run from the repository root::

    python benchmarks/bench_graph_view.py [--loads 7] [--screenshot docs/graph_view.png]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_ssa import CaptumSSAWarning, DependencyGraph, StepwiseSensitivity, graphs_to_html

# the demo's data and model
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tutorials"))
from digits import load_digits_tensors, train_digits_cnn

RESULTS = ("load ms", "slider ms", "slider max ms", "click ms", "zoom ms", "zoom settled ms")
SLIDER_STEPS = ("0.5", "0.05", "0.3", "0")
# from a change of the page until two animation frames later: the change is painted
TIME_UNTIL_PAINTED = """
const [change, done] = [arguments[0], arguments[arguments.length - 1]];
const started = performance.now();
new Function(change)();
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - started)));
"""
SET_THRESHOLD = (
    "const s = document.getElementById('threshold'); s.value = '{value}';"
    "s.dispatchEvent(new Event('input'));"
)
# as TIME_UNTIL_PAINTED, until the full paint that follows a zoom (after SETTLE_MS of rest)
TIME_UNTIL_SETTLED = """
const [change, done] = [arguments[0], arguments[arguments.length - 1]];
const started = performance.now();
new Function(change)();
const painted = () => requestAnimationFrame(() => done(performance.now() - started));
const wait = () =>
  document.body.dataset.settling === "false" ? painted() : requestAnimationFrame(wait);
requestAnimationFrame(wait);
"""
WHEEL = (
    "const s = document.getElementById('stage'), b = s.getBoundingClientRect();"
    "s.dispatchEvent(new WheelEvent('wheel', {{deltaY: {delta}, clientX: b.left + b.width / 2,"
    " clientY: b.top + b.height / 2, bubbles: true, cancelable: true}}));"
)
CLICK_NODE = (
    "document.querySelector('[data-node=\"{node}\"]')"
    ".dispatchEvent(new MouseEvent('click', {{bubbles: true}}));"
)


def demo_graphs() -> tuple[dict[str, DependencyGraph], Tensor]:
    """The demo's class graphs and the test digits whose top examples the page shows."""
    digits = load_digits_tensors()
    model = train_digits_cnn(digits.x_train, digits.y_train)
    ssa = StepwiseSensitivity(model, [model.conv1, model.conv2, model.fc1, model.fc2])
    graphs = ssa.class_graphs(digits.x_train, digits.y_train, classes=[3, 8])
    return {f"class {label}": graph for label, graph in graphs.items()}, digits.x_test


def dense_graph(sizes: list[int], seed: int = 0) -> DependencyGraph:
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


def start_browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_window_size(1280, 800)
    return driver


def load(driver: Any, page: Path) -> float:
    """Milliseconds from navigation start to the first render."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.as_uri())
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.body.dataset.ready")
    )
    return driver.execute_script(
        "return performance.getEntriesByName('graph-view-rendered')[0].startTime"
    )


def measure(driver: Any, page: Path, node: str, loads: int) -> dict[str, float]:
    first, slider, click, zoom, settled = [], [], [], [], []
    for _ in range(loads):
        first.append(load(driver, page))
        for value in SLIDER_STEPS:
            slider.append(
                driver.execute_async_script(TIME_UNTIL_PAINTED, SET_THRESHOLD.format(value=value))
            )
        for delta in (-100, 100):
            zoom.append(driver.execute_async_script(TIME_UNTIL_PAINTED, WHEEL.format(delta=delta)))
            # the full paint that follows (the page's settle time included)
            settled.append(
                driver.execute_async_script(TIME_UNTIL_SETTLED, WHEEL.format(delta=delta))
            )
        click.append(driver.execute_async_script(TIME_UNTIL_PAINTED, CLICK_NODE.format(node=node)))
    return {
        "load ms": statistics.median(first),
        "slider ms": statistics.median(slider),
        "slider max ms": max(slider),
        "click ms": statistics.median(click),
        "zoom ms": statistics.median(zoom),
        "zoom settled ms": statistics.median(settled),
    }


def screenshot(driver: Any, page: Path, path: Path) -> None:
    """The demo page with the slider at 0.3 and the top fc1 neuron clicked and hovered."""
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.set_window_size(1280, 880)
    load(driver, page)
    driver.execute_script(SET_THRESHOLD.format(value="0.3"))
    # the most relevant fc1 neuron: its edge to the class survives the slider
    neuron = max(
        driver.find_elements(By.CSS_SELECTOR, "[data-node^='fc1:']"),
        key=lambda circle: float(circle.get_attribute("r")),
    )
    ActionChains(driver).move_to_element(neuron).click().perform()
    # a 256-colour palette keeps the picture small enough to check in
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    driver.set_window_size(1280, 800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7, help="fresh page loads per graph")
    parser.add_argument("--screenshot", type=Path, help="save the demo page's picture here")
    args = parser.parse_args()

    demo = "demo: classes 3, 8 + shared, with examples"
    demo_views, test_digits = demo_graphs()
    # page, (graphs, layer of the neuron clicked, graphs_to_html's keywords)
    cases: dict[str, tuple[dict[Any, DependencyGraph], str, dict[str, Any]]] = {
        demo: (
            demo_views,
            "fc1",
            {
                "title": "DigitsCNN: SSA class graphs of 3, 8",
                "class_names": {digit: f"digit {digit}" for digit in range(10)},
                "examples": test_digits,
            },
        ),
        "synthetic 48-64-48-10": ({"s": dense_graph([48, 64, 48, 10])}, "layer1", {}),
    }
    wide = {"s": dense_graph([128, 256, 256, 10])}
    cases["synthetic 128-256-256-10, top 8"] = (wide, "layer1", {"max_edges": None})
    cases["synthetic 128-256-256-10, all"] = (wide, "layer1", {"max_edges": None, "top_k": None})
    vgg = {"s": dense_graph([256, 2048, 1])}
    cases["synthetic 256-2048-1, max_edges 100k"] = (vgg, "layer1", {})
    cases["synthetic 256-2048-1, all"] = (vgg, "layer1", {"max_edges": None, "top_k": None})
    driver = start_browser()
    try:
        with tempfile.TemporaryDirectory() as folder:
            print(f"| page | neurons | edges | size KiB | write ms | {' | '.join(RESULTS)} |")
            print("|---" * (5 + len(RESULTS)) + "|")
            for case, (graphs, layer, keywords) in cases.items():
                page = Path(folder) / "view.html"
                started = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CaptumSSAWarning)  # the page says it too
                    graphs_to_html(graphs, page, **{"title": case, **keywords})
                written = 1000 * (time.perf_counter() - started)
                first = next(iter(graphs.values())).to_networkx()
                node = next(f"{name}:{index}" for name, index in first.nodes if name == layer)
                results = measure(driver, page, node, args.loads)
                edges = driver.execute_script(
                    "return document.getElementById('edge-count').textContent"
                ).split(" edges")[0]
                print(
                    f"| {case} | {first.number_of_nodes()} | {edges} | "
                    f"{page.stat().st_size / 1024:.0f} | {written:.0f} | "
                    + " | ".join(f"{results[key]:.1f}" for key in RESULTS)
                    + " |",
                    flush=True,
                )
                if args.screenshot is not None and case == demo:
                    screenshot(driver, page, args.screenshot)
    finally:
        driver.quit()
    if args.screenshot is not None:
        print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
