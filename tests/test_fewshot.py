"""k-shot prompts for evaluation-only runs: which pairs are shown, and how the chat turns look."""
from __future__ import annotations

from omegaconf import OmegaConf

from slt_hydra.data import Example, build_messages
from slt_hydra.fewshot import shot_picker
from slt_hydra.schema import DatasetConfig

TRAIN = [Example(s, t, f"train:{i}") for i, (s, t) in enumerate([
    ("IX-1 GO STORE", "I go to the store."),
    ("IX-2 LIKE PIZZA", "You like pizza."),
    ("YESTERDAY IX-1 GO SCHOOL", "Yesterday I went to school."),
    ("fs-JOHN HAVE CAR", "John has a car."),
    ("IX-1 GO SCHOOL", "I go to school."),
])]


def test_zero_shots_means_no_demonstrations():
    assert shot_picker(TRAIN, 0, "random", 1)("IX-1 GO") == []


def test_random_shots_are_seeded_and_per_source():
    pick = shot_picker(TRAIN, 2, "random", seed=3)
    first = pick("IX-1 GO HOME")
    assert len(first) == 2 and len(set(first)) == 2
    assert pick("IX-1 GO HOME") == first  # same source, same shots
    assert shot_picker(TRAIN, 2, "random", seed=3)("IX-1 GO HOME") == first
    draws = {tuple(shot_picker(TRAIN, 2, "random", seed)("IX-1 GO HOME")) for seed in range(10)}
    assert len(draws) > 1  # the seed matters


def test_similar_shots_share_the_most_glosses_and_never_the_query_itself():
    pick = shot_picker(TRAIN, 2, "similar", seed=0)
    shots = pick("IX-1 GO SCHOOL")
    # "IX-1 GO SCHOOL" itself is excluded; the best remaining overlaps are the past-tense school pair (3/4)
    # and "IX-1 GO STORE" (2/4), most similar last (nearest the query).
    assert [s.source for s in shots] == ["IX-1 GO STORE", "YESTERDAY IX-1 GO SCHOOL"]


def test_shots_become_alternating_chat_turns_before_the_query():
    cfg = OmegaConf.structured(DatasetConfig(name="t", system_prompt="Translate.", prompt="{source}"))
    messages = build_messages("IX-2 GO", cfg, shots=TRAIN[:2])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "IX-1 GO STORE" and messages[2]["content"] == "I go to the store."
    assert messages[-1] == {"role": "user", "content": "IX-2 GO"}
    assert build_messages("IX-2 GO", cfg) == [messages[0], messages[-1]]
