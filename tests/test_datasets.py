"""The public-corpus configs (conf/dataset/{aslg_pc12,how2sign,isign,hub}.yaml) compose and read their
official layouts; what cannot work (no gloss column, offline Hub) is refused with a message naming the fix."""
from __future__ import annotations

import socket
import sys
import types
from pathlib import Path

import pytest

from conftest import compose_config
from slt_hydra.data import DataError, load_splits

ASLG = {  # ASLG-PC12 style: synthetic ASL gloss / lowercased English (Europarl)
    "train": [("X-I BE DESC-VERY PLEASE", "i am very pleased"), ("DEBATE BE CLOSE", "the debate is closed"),
              ("VOTE WILL TAKE PLACE TOMORROW", "the vote will take place tomorrow")],
    "dev": [("WRITE STATEMENT SEE MINUTE", "written statements see minutes")],
    "test": [("APPROVAL MINUTE PREVIOUS SITTING", "approval of the minutes of the previous sitting"),
             ("X-I THANK X-YOU", "i thank you")],
}
H2S_SPLITS = {"train": "how2sign_realigned_train.csv", "dev": "how2sign_realigned_val.csv",
              "test": "how2sign_realigned_test.csv"}
AS_GLOSS = ("dataset.input=gloss", "dataset.source_field=GLOSS")  # How2Sign read as gloss text (a column you add)
H2S = {  # How2Sign style: English SENTENCE, plus the GLOSS column a user added
    "train": [("IX-1 SHOW YOU HOW TIE KNOT", 'I\'m going to show you how to tie a "bowline" knot.'),
              ("FIRST TAKE ROPE", "First, take the rope.")],
    "dev": [("NEXT PULL TIGHT", "Next, pull it tight.")],
    "test": [("THAT ALL", "That's all there is to it.")],
}


def cfg_for(tmp_path: Path, *overrides: str):
    return compose_config(list(overrides), tmp_path / "run").dataset


def pairs(examples):
    return [(e.source, e.target) for e in examples]


# --------------------------------------------------------------------------- ASLG-PC12


def write_aslg(folder: Path, data=ASLG, newline="\n") -> Path:
    folder.mkdir(exist_ok=True)
    for split, rows in data.items():
        (folder / f"{split}.asl").write_text("".join(g + newline for g, _ in rows))
        (folder / f"{split}.en").write_text("".join(t + newline for _, t in rows))
    return folder


def test_aslg_pc12_reads_per_split_parallel_files(tmp_path):
    folder = write_aslg(tmp_path / "aslg", newline="\r\n")
    cfg = cfg_for(tmp_path, "dataset=aslg_pc12", f"dataset.path={folder}")
    assert (cfg.name, cfg.format, cfg.tokenize, cfg.lowercase) == ("aslg_pc12", "parallel", "13a", True)
    data, counts = load_splits(cfg)
    for split, rows in ASLG.items():
        assert pairs(data[split]) == rows, split
    assert data["train"][1].origin == f"{folder / 'train.asl'}:2"
    assert counts["rows_train"] == 3 and counts["rows_test"] == 2


def test_aslg_pc12_release_files_can_be_named_per_split(tmp_path):
    folder = write_aslg(tmp_path / "aslg")
    (folder / "sample-corpus-asl-en.asl").write_text("GLOSS-A B\nGLOSS-C\n")
    (folder / "sample-corpus-asl-en.en").write_text("a b\nc\n")
    cfg = cfg_for(tmp_path, "dataset=aslg_pc12", f"dataset.path={folder}",
                  "dataset.splits.train.source=sample-corpus-asl-en.asl",
                  "dataset.splits.train.target=sample-corpus-asl-en.en")
    data, _ = load_splits(cfg, splits=("train",))
    assert pairs(data["train"]) == [("GLOSS-A B", "a b"), ("GLOSS-C", "c")]


def test_aslg_pc12_text2gloss_swaps_the_sides(tmp_path):
    folder = write_aslg(tmp_path / "aslg")
    cfg = cfg_for(tmp_path, "dataset=aslg_pc12", f"dataset.path={folder}", "dataset.direction=text2gloss")
    data, _ = load_splits(cfg)
    assert pairs(data["dev"]) == [("written statements see minutes", "WRITE STATEMENT SEE MINUTE")]


def test_aslg_pc12_drops_repeated_pairs_from_train(tmp_path):
    leaky = {**ASLG, "test": ASLG["test"] + [ASLG["train"][1]]}  # "the debate is closed" again
    folder = write_aslg(tmp_path / "aslg", leaky)
    data, counts = load_splits(cfg_for(tmp_path, "dataset=aslg_pc12", f"dataset.path={folder}"))
    assert ASLG["train"][1] not in pairs(data["train"]) and len(data["train"]) == 2
    assert counts["dropped_leak_train"] == 1 and counts["leak_test"] == 1
    assert pairs(data["test"])[-1] == ASLG["train"][1]  # the evaluation side is kept


def test_aslg_pc12_line_count_mismatch_is_refused(tmp_path):
    folder = write_aslg(tmp_path / "aslg")
    (folder / "train.en").write_text("i am very pleased\nthe debate is closed\n")  # one line short
    with pytest.raises(DataError) as error:
        load_splits(cfg_for(tmp_path, "dataset=aslg_pc12", f"dataset.path={folder}"))
    message = str(error.value)
    assert "differ in length" in message and "train.asl has 3 lines" in message and "train.en has 2" in message


def test_aslg_pc12_without_a_path_says_how_to_set_it(tmp_path):
    with pytest.raises(DataError, match=r"dataset.path is not set.*dataset.path=DIR"):
        load_splits(cfg_for(tmp_path, "dataset=aslg_pc12"))


# --------------------------------------------------------------------------- How2Sign


def write_h2s(folder: Path, times=("START_REALIGNED", "END_REALIGNED"), gloss=True, data=H2S) -> Path:
    folder.mkdir(exist_ok=True)
    header = ["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", *times, "SENTENCE"]
    header += ["GLOSS"] if gloss else []
    for split, rows in data.items():
        lines = ["\t".join(header)]
        for i, (g, sentence) in enumerate(rows):
            fields = ["-fZc293MpJk", "-fZc293MpJk-1-rgb_front", f"-fZc293MpJk_{i}", f"-fZc293MpJk_{i}-1-rgb_front",
                      f"{i * 3.5:.2f}", f"{i * 3.5 + 3:.2f}", sentence] + ([g] if gloss else [])
            lines.append("\t".join(fields))
        (folder / H2S_SPLITS[split]).write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("times", [("START_REALIGNED", "END_REALIGNED"), ("START", "END")])
def test_how2sign_reads_the_realigned_files_with_a_gloss_column(tmp_path, times):
    folder = write_h2s(tmp_path / "h2s", times)
    cfg = cfg_for(tmp_path, "dataset=how2sign", *AS_GLOSS, f"dataset.path={folder}")
    assert (cfg.format, cfg.target_field, cfg.tokenize) == ("tsv", "SENTENCE", "13a")
    data, counts = load_splits(cfg)
    for split, rows in H2S.items():
        assert pairs(data[split]) == rows, split  # the quotes inside a sentence survive
    assert data["dev"][0].origin == f"{folder / 'how2sign_realigned_val.csv'}:2"
    assert counts["rows_train"] == 2


def test_how2sign_text2gloss_swaps_the_sides(tmp_path):
    folder = write_h2s(tmp_path / "h2s")
    cfg = cfg_for(tmp_path, "dataset=how2sign", *AS_GLOSS, f"dataset.path={folder}",
                  "dataset.direction=text2gloss")
    data, _ = load_splits(cfg)
    assert pairs(data["test"]) == [("That's all there is to it.", "THAT ALL")]


def test_how2sign_files_without_the_gloss_column_get_the_how2sign_hint(tmp_path):
    folder = write_h2s(tmp_path / "h2s", gloss=False)  # the files as released, read as gloss text
    cfg = cfg_for(tmp_path, "dataset=how2sign", *AS_GLOSS, f"dataset.path={folder}")
    with pytest.raises(DataError) as error:
        load_splits(cfg)
    message = str(error.value)
    assert "how2sign_realigned_train.csv" in message and "['GLOSS'] not found" in message
    assert "How2Sign ships no gloss column" in message and "dataset.source_field=COLUMN" in message
    assert "SENTENCE_NAME" in message  # the header that was found


def test_how2sign_without_a_source_field_is_refused_before_reading(tmp_path):
    # no path either: the missing glosses are the problem to report first
    with pytest.raises(DataError) as error:
        load_splits(cfg_for(tmp_path, "dataset=how2sign", "dataset.input=gloss", "dataset.source_field=''"))
    message = str(error.value)
    assert "dataset.source_field is not set" in message and "How2Sign ships no gloss column" in message


@pytest.mark.parametrize("column", ["SENTENCE_NAME", "START_REALIGNED", "SENTENCE"])
def test_how2sign_ids_times_or_the_target_are_not_a_source(tmp_path, column):
    folder = write_h2s(tmp_path / "h2s")
    cfg = cfg_for(tmp_path, "dataset=how2sign", "dataset.input=gloss", f"dataset.path={folder}",
                  f"dataset.source_field={column}")
    with pytest.raises(DataError, match="How2Sign ships no gloss column") as error:
        load_splits(cfg)
    assert f"{column!r}" in str(error.value)


# --------------------------------------------------------------------------- iSign


def write_isign(folder: Path, gloss: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    rows = {"train": [("a1b2", "How are you?", "YOU HOW"), ("c3d4", "I am fine.", "I FINE")],
            "dev": [("e5f6", "Thank you.", "THANK-YOU")], "test": [("g7h8", "Good morning.", "GOOD MORNING")]}
    for split, items in rows.items():
        head = "uid,text" + (",gloss" if gloss else "")
        body = [f'{u},"{t}"' + (f",{g}" if gloss else "") for u, t, g in items]
        (folder / f"{split}.csv").write_text("\n".join([head, *body]) + "\n")
    return folder


@pytest.mark.parametrize("direction", ["gloss2text", "text2gloss"])
def test_isign_read_as_gloss_text_is_refused_with_the_options(tmp_path, direction):
    folder = write_isign(tmp_path / "isign")
    cfg = cfg_for(tmp_path, "dataset=isign", "dataset.input=gloss", "dataset.source_field=gloss",
                  f"dataset.path={folder}", f"dataset.direction={direction}")
    with pytest.raises(DataError) as error:
        load_splits(cfg)
    message = str(error.value)
    assert "train.csv" in message and "['gloss'] not found" in message and "['uid', 'text']" in message
    assert "iSign ships no gloss" in message and "dataset.input=pose dataset.source_field=uid" in message
    assert "dataset=aslg_pc12" in message and "dataset.source_field=COLUMN" in message


@pytest.mark.parametrize("column,needle", [("uid", "metadata column"), ("text", "copy its input"),
                                           ("''", "dataset.source_field is not set")])
def test_isign_cannot_be_tricked_into_training_on_nothing(tmp_path, column, needle):
    folder = write_isign(tmp_path / "isign")
    cfg = cfg_for(tmp_path, "dataset=isign", "dataset.input=gloss", f"dataset.path={folder}",
                  f"dataset.source_field={column}")
    with pytest.raises(DataError) as error:
        load_splits(cfg)
    assert needle in str(error.value) and "iSign ships no gloss" in str(error.value)


def test_isign_with_a_gloss_column_added_loads(tmp_path):
    folder = write_isign(tmp_path / "isign", gloss=True)
    data, _ = load_splits(cfg_for(tmp_path, "dataset=isign", "dataset.input=gloss", "dataset.source_field=gloss",
                                  f"dataset.path={folder}"))
    assert pairs(data["train"]) == [("YOU HOW", "How are you?"), ("I FINE", "I am fine.")]


# --------------------------------------------------------------------------- Hub


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt or datasets.load_dataset call fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=refuse))


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_is_refused_with_how_to_use_a_local_copy(tmp_path, monkeypatch, no_network, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    cfg = cfg_for(tmp_path, "dataset=hub", "dataset.hub_id=someone/asl-gloss", "dataset.source_field=gloss",
                  "dataset.target_field=text")
    with pytest.raises(DataError) as error:
        load_splits(cfg)
    message = str(error.value)
    assert "someone/asl-gloss" in message and "offline" in message and f"{variable}=1" in message
    assert "dataset=local" in message and "to_json" in message and "dataset.source_field=gloss" in message


def test_hub_unreachable_is_refused(tmp_path, monkeypatch, no_network):
    import slt_hydra.machine

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(slt_hydra.machine, "hub_is_reachable", lambda timeout=2.0: False)
    with pytest.raises(DataError, match=r"offline \(huggingface.co:443 did not answer within 2 s\)"):
        load_splits(cfg_for(tmp_path, "dataset=hub", "dataset.hub_id=someone/asl-gloss"))


def test_hub_without_an_id_says_so(tmp_path, no_network):
    with pytest.raises(DataError, match=r"dataset.hub_id is not set.*dataset.hub_id=OWNER/NAME"):
        load_splits(cfg_for(tmp_path, "dataset=hub"))


@pytest.fixture
def fake_hub(monkeypatch):
    """Online, with datasets.load_dataset answering from memory; returns the recorded calls."""
    import datasets

    import slt_hydra.machine

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(slt_hydra.machine, "hub_is_reachable", lambda timeout=2.0: True)
    calls = []
    store = {
        "org/three-splits": {
            "train": {"gloss": ["IX-1 GO", "YOU COME", "RAIN"], "text": ["I go.", "You come.", "It rains."],
                      "id": [1, 2, 3]},
            "validation": {"gloss": ["BOOK WHERE"], "text": ["Where is the book?"], "id": [4]},
            "test": {"gloss": ["HOUSE BIG"], "text": ["The house is big."], "id": [5]},
        },
        "org/train-only": {"train": {"gloss": [f"G{i}" for i in range(10)], "text": [f"t{i}" for i in range(10)]}},
    }

    def load_dataset(path, name=None, revision=None, **kwargs):
        calls.append((path, name, revision, kwargs))
        if path not in store:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(c) for s, c in store[path].items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


HUB_ARGS = ("dataset=hub", "dataset.source_field=gloss", "dataset.target_field=text")


def test_hub_loads_online_and_maps_validation_to_dev(tmp_path, fake_hub):
    cfg = cfg_for(tmp_path, *HUB_ARGS, "dataset.hub_id=org/three-splits", "dataset.hub_config=asl",
                  "dataset.hub_revision=abc123")
    data, counts = load_splits(cfg)
    assert fake_hub == [("org/three-splits", "asl", "abc123", {})]  # one download for all splits
    assert pairs(data["train"]) == [("IX-1 GO", "I go."), ("YOU COME", "You come."), ("RAIN", "It rains.")]
    assert pairs(data["dev"]) == [("BOOK WHERE", "Where is the book?")]
    assert pairs(data["test"]) == [("HOUSE BIG", "The house is big.")]
    assert data["dev"][0].origin == "hf:org/three-splits/validation:1"
    assert counts["rows_train"] == 3


def test_hub_text2gloss_swaps_the_sides(tmp_path, fake_hub):
    cfg = cfg_for(tmp_path, *HUB_ARGS, "dataset.hub_id=org/three-splits", "dataset.direction=text2gloss")
    data, _ = load_splits(cfg)
    assert pairs(data["dev"]) == [("Where is the book?", "BOOK WHERE")]


def test_hub_slices_of_a_train_only_dataset(tmp_path, fake_hub):
    # the override syntax shown in conf/dataset/hub.yaml
    cfg = cfg_for(tmp_path, *HUB_ARGS, "dataset.hub_id=org/train-only", "dataset.splits.train='train[:70%]'",
                  "dataset.splits.dev='train[70%:80%]'", "dataset.splits.test='train[80%:]'")
    data, _ = load_splits(cfg)
    assert [e.source for e in data["train"]] == [f"G{i}" for i in range(7)]
    assert pairs(data["dev"]) == [("G7", "t7")]
    assert [e.source for e in data["test"]] == ["G8", "G9"]
    assert data["test"][0].origin == "hf:org/train-only/train[80%:]:1"


def test_hub_missing_split_lists_the_ones_it_has(tmp_path, fake_hub):
    cfg = cfg_for(tmp_path, *HUB_ARGS, "dataset.hub_id=org/train-only")
    with pytest.raises(DataError) as error:
        load_splits(cfg)
    message = str(error.value)
    assert "dataset.splits.dev='validation'" in message and "its splits: train" in message
    assert "train[:95%]" in message


def test_hub_missing_column_lists_the_columns(tmp_path, fake_hub):
    cfg = cfg_for(tmp_path, "dataset=hub", "dataset.hub_id=org/three-splits")  # source/target: not its columns
    with pytest.raises(DataError) as error:
        load_splits(cfg)
    message = str(error.value)
    assert "hf:org/three-splits/train" in message and "['gloss', 'text', 'id']" in message
    assert "dataset.source_field=COLUMN" in message


def test_hub_load_failure_names_the_keys_to_check(tmp_path, fake_hub):
    cfg = cfg_for(tmp_path, *HUB_ARGS, "dataset.hub_id=org/nope")
    with pytest.raises(DataError, match=r"FileNotFoundError: Dataset 'org/nope' doesn't exist.*dataset.hub_config"):
        load_splits(cfg)
