"""Moved to :mod:`captum_ssa.graph`; kept until the importers move."""

from captum_ssa.graph.model import DependencyGraph, LayerRef, Target

__all__ = ["DependencyGraph", "LayerRef", "Target"]
