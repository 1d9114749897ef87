"""Demo part: class-specific SSA dependency graphs of the digits CNN, and each as a classifier."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
from digits import Digits, DigitsCNN, accuracy

from captum_ssa import (
    StepwiseSensitivity,
    bag_of_nodes,
    evaluate_graph,
    graphs_to_html,
    jaccard_similarity,
)

CLASSES = (3, 8)


def run(model: DigitsCNN, digits: Digits, output_dir: Path) -> list[str]:
    layers = [model.conv1, model.conv2, model.fc1, model.fc2]
    ssa = StepwiseSensitivity(model, layers)
    started = time.perf_counter()
    # global mode, gradient relevance, mean over the class's training images,
    # neurons above the 50th percentile kept: the paper's compression setting
    graphs = ssa.class_graphs(digits.x_train, digits.y_train, classes=list(CLASSES))
    seconds = time.perf_counter() - started

    lines = [
        "Step-wise sensitivity analysis (SSA): class-specific dependency graphs over "
        "conv1, conv2, fc1, fc2",
        f"  built from each class's training images in {seconds:.2f} s "
        "(gradient relevance, mean, global mode, 50th percentile)",
        f"  DigitsCNN test accuracy (no mask): {accuracy(model, digits.x_test, digits.y_test):.3f}",
    ]
    for label, graph in graphs.items():
        graph.save(output_dir / f"ssa_graph_class{label}.graphml")
        figure = graph.draw()
        figure.savefig(output_dir / f"ssa_graph_class{label}.png", dpi=110)
        plt.close(figure)
        masked = evaluate_graph(model, graph, digits.x_test, digits.y_test)
        own = digits.y_test == label
        model_rate = accuracy(model, digits.x_test[own], digits.y_test[own])
        lines.append(
            f"  class {label}: keeps {masked.kept_fraction:.0%} of the hidden neurons; "
            f"as a masked classifier TPR {masked.true_positive_rate:.3f} on test "
            f"{label}s (unmasked model: {model_rate:.3f}), accuracy on all test "
            f"digits {masked.accuracy:.3f}"
        )
    # target is Captum's: one class per example, each class over its own images;
    # top_neurons is a set: both classes together over all the images
    both = (digits.y_train == CLASSES[0]) | (digits.y_train == CLASSES[1])
    per_example = ssa.attribute(digits.x_train[both], target=digits.y_train[both])
    as_set = ssa.attribute(digits.x_train[both], top_neurons=list(CLASSES))
    overlap = jaccard_similarity(
        bag_of_nodes({"target": per_example, "set": as_set}, layers=["conv1", "conv2", "fc1"])
    )
    lines.append(
        f"  over the {int(both.sum())} training images of {CLASSES}: the graph of per-example "
        f"targets and that of the set top_neurons={list(CLASSES)} share hidden neurons "
        f"with Jaccard similarity {overlap[0, 1]:.2f}"
    )
    similarity = jaccard_similarity(bag_of_nodes(graphs, layers=["conv1", "conv2", "fc1"]))
    lines.append(
        f"  the two graphs' hidden neurons overlap with Jaccard similarity "
        f"{similarity[0, 1]:.2f}; graphs in ssa_graph_class<c>.graphml and .png"
    )
    # one page to explore both graphs and their shared subgraph in a browser
    page = graphs_to_html(
        {f"class {label}": graph for label, graph in graphs.items()},
        output_dir / "ssa_class_graphs.html",
        title=f"DigitsCNN: SSA class graphs of {', '.join(map(str, CLASSES))}",
    )
    lines.append(
        f"  interactive view of both graphs and their shared subgraph: {page.name} "
        f"({page.stat().st_size / 1024:.0f} KiB, self-contained)"
    )
    return lines
