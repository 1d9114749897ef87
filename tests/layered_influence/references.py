"""Plain references for LayeredInfluence: slow, loop-based, obviously right."""

from __future__ import annotations

import math

import torch


def slow_influence(queries, query_labels, reference, reference_labels, alpha=None):
    """phi(x) = sum over differently-labelled y of alpha(r) (h(x) - h(y)), pair by pair;
    alpha = 1/r^2 when None."""
    queries, reference = queries.detach(), reference.detach()
    influence = torch.zeros_like(queries)
    for i in range(len(queries)):
        for j in range(len(reference)):
            if int(query_labels[i]) == int(reference_labels[j]):
                continue
            difference = queries[i] - reference[j]
            squared = float((difference * difference).sum())
            if squared == 0:
                continue
            if alpha is None:
                influence[i] += difference / squared
            else:
                distance = torch.tensor(math.sqrt(squared), dtype=torch.float64)
                influence[i] += float(alpha(distance)) * difference
    return influence


def slow_sequence_influence(queries, query_labels, reference, reference_labels):
    """phi(x) for token sequences, pair by pair: each a (length, units) tensor of its
    real tokens, a pair compared on its common prefix, alpha = 1/r^2. Returns one
    (length, units) tensor per query."""
    influences = []
    for query, query_label in zip(queries, query_labels):
        influence = torch.zeros_like(query)
        for point, label in zip(reference, reference_labels):
            if int(label) == int(query_label):
                continue
            common = min(len(query), len(point))
            difference = query[:common] - point[:common]
            squared = float((difference * difference).sum())
            if squared > 0:
                influence[:common] += difference / squared
        influences.append(influence)
    return influences
