"""SSA's options: checked once, before any forward pass, and held together.

:meth:`StepwiseSensitivity.attribute` and ``class_graphs`` share every option
but the starting neurons. :meth:`Options.checked` is the one place that checks
them (so that a bad option costs no model run) and resolves the relevance
function; the passes and Steps read the resulting :class:`Options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from captum_ssa._core.stepwise_sensitivity.relevance import (
    RelevanceFunction,
    absolute_after_aggregation,
    needs_gradients,
    resolve_relevance,
)
from captum_ssa._core.stepwise_sensitivity.steps import (
    AGGREGATIONS,
    UPPER_AGGREGATIONS,
    check_signed_relevance,
)
from captum_ssa._utils.validation import positive_int

MODES = ("global", "local")
PASSES = ("auto", "per_pair", "single")


@dataclass(frozen=True)
class Options:
    """The checked options of one SSA call (see ``StepwiseSensitivity.attribute``)."""

    relevance: RelevanceFunction
    relevance_name: str
    absolute: bool
    aggregation: str
    mode: str
    percentile: float
    branching: Optional[int]
    max_neurons: Optional[int]
    upper_neurons_per_chunk: Optional[int]
    passes: str
    show_progress: bool
    upper_aggregation: str = "mean"

    @classmethod
    def checked(
        cls,
        relevance: Any,
        absolute: bool,
        aggregation: str,
        mode: str,
        percentile: float,
        branching: Optional[int],
        max_neurons: Optional[int],
        upper_neurons_per_chunk: Optional[int],
        show_progress: bool,
        passes: str,
        upper_aggregation: str = "mean",
    ) -> Options:
        """Check every option and resolve the relevance function, or raise naming the
        option."""
        relevance_function, relevance_name = resolve_relevance(relevance)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if not absolute:
            check_signed_relevance(relevance_function)
        if absolute_after_aggregation(relevance_function) and aggregation != "mean":
            raise ValueError(
                f"relevance={relevance_name!r} is the absolute value of the mean over the "
                f"data, so it needs aggregation='mean', not {aggregation!r}; for Tukey "
                "outliers use 'activation' or 'weight_activation' (absolute per example)"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(percentile, bool) or not 0 <= percentile <= 100:
            raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
        if passes not in PASSES:
            raise ValueError(f"passes must be one of {PASSES}, got {passes!r}")
        if upper_aggregation not in UPPER_AGGREGATIONS:
            raise ValueError(
                f"upper_aggregation must be one of {UPPER_AGGREGATIONS}, got {upper_aggregation!r}"
            )
        # in the order of the fields
        return cls(
            relevance_function,
            relevance_name,
            absolute,
            aggregation,
            mode,
            percentile,
            positive_int("branching", branching),
            positive_int("max_neurons", max_neurons),
            positive_int("upper_neurons_per_chunk", upper_neurons_per_chunk),
            passes,
            show_progress,
            upper_aggregation,
        )

    @property
    def absolute_of_mean(self) -> bool:
        """Whether Step II's mean is followed by an absolute value (the relevance says)."""
        return absolute_after_aggregation(self.relevance)

    def pass_structure(self, one_shot: bool, layers: int) -> str:
        """``"per_pair"`` or ``"single"``: how the data is read (``passes``).

        Step IV of a pair decides the upper neurons of the pair below and needs
        the whole dataset, so a graph takes either one pass per layer pair, with
        relevances only of the neurons kept above, or one pass computing every
        pair for every upper neuron. A backward pass per upper neuron costs about
        a forward pass, so skipping the dropped neurons saves more than the
        extra passes cost; a relevance that declares it needs no gradients costs
        a fraction of a forward pass whatever the number of neurons, so there
        one pass wins. A one-shot iterator can be read only once.
        """
        if self.passes != "auto":
            return self.passes
        if one_shot or (layers > 2 and not needs_gradients(self.relevance)):
            return "single"
        return "per_pair"

    def metadata(self) -> dict[str, Any]:
        """How a graph was made, as recorded in ``DependencyGraph.metadata``."""
        return {
            "relevance": self.relevance_name,
            "absolute": self.absolute,
            "aggregation": self.aggregation,
            "mode": self.mode,
            "percentile": self.percentile,
            "branching": self.branching,
            "max_neurons": self.max_neurons,
            "upper_aggregation": self.upper_aggregation,
        }
