"""k-shot prompting for evaluation-only runs: which train pairs go into each prompt.

`random`: k pairs drawn with the run's seed, one draw per source (reproducible).
`similar`: the k train pairs whose glosses share the most tokens with the source (Jaccard overlap),
ties broken by train order, so the choice is deterministic too.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from slt_hydra.data import Example

SELECTIONS = ("random", "similar")


def shot_picker(train: Sequence[Example], k: int, selection: str, seed: int) -> Callable[[str], list[Example]]:
    """A function source -> the k demonstration pairs for its prompt (most similar last, nearest the query)."""
    if k <= 0:
        return lambda source: []
    if selection == "random":
        def pick_random(source: str) -> list[Example]:
            rng = random.Random(f"{seed}:{source}")  # same source, same shots, whatever the order of calls
            return rng.sample(list(train), min(k, len(train)))
        return pick_random

    token_sets = [frozenset(example.source.split()) for example in train]

    def pick_similar(source: str) -> list[Example]:
        query = frozenset(source.split())
        scored = []
        for index, tokens in enumerate(token_sets):
            union = len(query | tokens)
            overlap = len(query & tokens) / union if union else 0.0
            if train[index].source != source:  # never show the answer itself
                scored.append((overlap, -index))
        best = sorted(scored, reverse=True)[:k]
        return [train[-negative] for _, negative in reversed(best)]
    return pick_similar
