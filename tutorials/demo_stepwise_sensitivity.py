"""Demo part: class-specific SSA dependency graphs of the digits CNN, and each as a classifier."""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from pathlib import Path

import matplotlib.pyplot as plt
from digits import Digits, DigitsCNN, accuracy

from captum_ssa import (
    DependencyGraph,
    StepwiseSensitivity,
    bag_of_nodes,
    evaluate_ensemble,
    evaluate_graph,
    graphs_to_html,
    jaccard_similarity,
)

CLASSES = (3, 8)
# the paper's weight_act_abs: |W[n, k]| times the absolute mean activation of k
# over the class's images, the strategy with the best class-2 TPR on its circles
RELEVANCE = "weight_act_abs"
HIDDEN_LAYERS = ["pool1", "pool2", "relu3"]


def named(graphs: Mapping[int, DependencyGraph]) -> dict[Hashable, DependencyGraph]:
    """The class graphs keyed "class c", as the page and the overlap table show them."""
    return {f"class {label}": graph for label, graph in graphs.items()}


def run(model: DigitsCNN, digits: Digits, output_dir: Path) -> list[str]:
    # the paper's semantics: the neurons are ReLU outputs (the pooling after
    # each conv's ReLU, so a channel is the activation that reaches the next
    # layer), with the logits on top; see the README's "Matching the paper"
    layers = [model.pool1, model.pool2, model.relu3, model.fc2]
    ssa = StepwiseSensitivity(model, layers)
    started = time.perf_counter()
    # global mode, mean over each class's training images, neurons above the
    # 50th percentile kept: the paper's compression setting, for all ten classes
    # so that the ensemble has one graph per class
    all_graphs = ssa.class_graphs(digits.x_train, digits.y_train, relevance=RELEVANCE)
    seconds = time.perf_counter() - started
    graphs = {label: all_graphs[label] for label in CLASSES}

    lines = [
        "Step-wise sensitivity analysis (SSA): class-specific dependency graphs over "
        "pool1, pool2, relu3 (ReLU outputs) and fc2 (logits)",
        f"  all {len(all_graphs)} class graphs built from each class's training images "
        f"in {seconds:.2f} s "
        f"(relevance={RELEVANCE!r}, mean, global mode, 50th percentile)",
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
        # a TPR alone flatters a masked network that answers `label` for
        # everything; precision, false positives and the predicted share say so
        lines.append(
            f"  class {label}: keeps {masked.kept_fraction:.0%} of the hidden neurons; as a "
            f"masked classifier on the test digits TPR {masked.true_positive_rate:.3f} "
            f"(unmasked model: {model_rate:.3f}), precision {masked.precision:.3f}, "
            f"false-positive rate {masked.false_positive_rate:.3f}, predicts {label} for "
            f"{masked.predicted_fraction:.0%} of them (true share {own.float().mean():.0%}); "
            f"accuracy on all test digits {masked.accuracy:.3f}"
        )
    ensemble = evaluate_ensemble(model, all_graphs, digits.x_test, digits.y_test)
    rates = ensemble.classes
    lines.append(
        f"  ensemble of the {len(all_graphs)} class graphs (each input gets the class whose "
        f"masked network "
        f"scores it highest): test accuracy {ensemble.accuracy:.3f} "
        f"(unmasked {ensemble.model_accuracy:.3f}); per class TPR / precision: "
        + ", ".join(
            f"{label}: {rate.true_positive_rate:.2f}/{rate.precision:.2f}"
            for label, rate in rates.items()
        )
    )
    # target is Captum's: one class per example, each class over its own images;
    # top_neurons is a set: both classes together over all the images
    both = (digits.y_train == CLASSES[0]) | (digits.y_train == CLASSES[1])
    per_example = ssa.attribute(
        digits.x_train[both], target=digits.y_train[both], relevance=RELEVANCE
    )
    as_set = ssa.attribute(digits.x_train[both], top_neurons=list(CLASSES), relevance=RELEVANCE)
    overlap = jaccard_similarity(
        bag_of_nodes({"target": per_example, "set": as_set}, layers=HIDDEN_LAYERS)
    )
    lines.append(
        f"  over the {int(both.sum())} training images of {CLASSES}: the graph of per-example "
        f"targets and that of the set top_neurons={list(CLASSES)} share hidden neurons "
        f"with Jaccard similarity {overlap[0, 1]:.2f}"
    )
    similarity = jaccard_similarity(bag_of_nodes(named(graphs), layers=HIDDEN_LAYERS))
    lines.append(
        f"  the two graphs' hidden neurons overlap with Jaccard similarity "
        f"{similarity[0, 1]:.2f}; graphs in ssa_graph_class<c>.graphml and .png"
    )
    # one page to explore both graphs and their shared subgraph in a browser
    page = graphs_to_html(
        named(graphs),
        output_dir / "ssa_class_graphs.html",
        title=f"DigitsCNN: SSA class graphs of {', '.join(map(str, CLASSES))}",
        # the logits by name: the search box finds "digit 8"
        class_names={digit: f"digit {digit}" for digit in range(10)},
        # each hidden neuron's top test digits and switched-weights pattern, on hover
        examples=digits.x_test,
    )
    lines.append(
        f"  interactive view of both graphs and their shared subgraph, with each hidden "
        f"neuron's top test digits: {page.name} "
        f"({page.stat().st_size / 1024:.0f} KiB, self-contained)"
    )
    return lines
