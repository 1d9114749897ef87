"""Moved to :mod:`captum_ssa.graph`; kept until the importers move."""

from captum_ssa.graph.view import graphs_to_html

__all__ = ["graphs_to_html"]
