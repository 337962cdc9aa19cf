"""Corpus readers and prompt formatting (slt_hydra.data): good files, bad files, policies."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from slt_hydra.data import DataError, Example, build_messages, load_splits, to_prompt_completion
from slt_hydra.schema import DatasetConfig

PHOENIX_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "phoenix14t"

PAIRS = {
    "train": [("IX-1 LIKE APPLE", "I like apples."), ("YOU NAME WHAT", "What is your name?"),
              ("TOMORROW RAIN", "It will rain tomorrow.")],
    "dev": [("BOOK WHERE", "Where is the book?")],
    "test": [("HOUSE BIG", "The house is big."), ("ME TIRED", "I am tired.")],
}


def make_cfg(path, splits, **kw):
    return OmegaConf.structured(DatasetConfig(name="t", path=str(path), splits=splits, **kw))


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_jsonl(path: Path, objs) -> Path:
    return write(path, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs))


def jsonl_corpus(tmp_path, pairs=PAIRS, sf="source", tf="target"):
    for split, rows in pairs.items():
        write_jsonl(tmp_path / f"{split}.jsonl", [{sf: s, tf: t} for s, t in rows])
    return {split: f"{split}.jsonl" for split in pairs}


def as_pairs(examples):
    return [(e.source, e.target) for e in examples]


def assert_all_good(data):
    for split, rows in PAIRS.items():
        assert as_pairs(data[split]) == rows, split


# --------------------------------------------------------------------------- good files


def test_jsonl_source_target(tmp_path):
    cfg = make_cfg(tmp_path, jsonl_corpus(tmp_path))
    data, counts = load_splits(cfg)
    assert_all_good(data)
    assert counts["rows_train"] == 3 and counts["rows_dev"] == 1 and counts["rows_test"] == 2
    assert counts["dropped_empty_train"] == 0 and counts["dropped_leak_train"] == 0
    assert all(isinstance(v, int) for v in counts.values())
    first = data["train"][0]
    assert isinstance(first, Example)
    assert first.origin == f"{tmp_path / 'train.jsonl'}:1"


def test_jsonl_custom_fields_whitespace_blank_lines_and_bom(tmp_path):
    splits = jsonl_corpus(tmp_path, sf="gloss", tf="text")
    text = "\ufeff" + "\n".join([json.dumps({"gloss": "  A B ", "text": " a b.\t"}), "", "   ",
                                 json.dumps({"gloss": "C", "text": "c."})]) + "\n"
    write(tmp_path / "train.jsonl", text)
    data, _ = load_splits(make_cfg(tmp_path, splits, source_field="gloss", target_field="text"))
    assert as_pairs(data["train"]) == [("A B", "a b."), ("C", "c.")]
    assert data["train"][1].origin.endswith("train.jsonl:4")


def test_jsonl_alpaca_style(tmp_path):
    splits = jsonl_corpus(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [
        {"instruction": "IX-1 LIKE APPLE", "output": "I like apples."},
        {"instruction": "Translate", "input": "YOU NAME WHAT", "output": "What is your name?"},
        {"instruction": "TOMORROW RAIN", "input": "", "response": "It will rain tomorrow."},
    ])
    data, _ = load_splits(make_cfg(tmp_path, splits))
    assert as_pairs(data["train"]) == [("IX-1 LIKE APPLE", "I like apples."),
                                       ("Translate\nYOU NAME WHAT", "What is your name?"),
                                       ("TOMORROW RAIN", "It will rain tomorrow.")]


def test_jsonl_chat_style(tmp_path):
    splits = jsonl_corpus(tmp_path)
    write_jsonl(tmp_path / "dev.jsonl", [{"messages": [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "earlier turn"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "BOOK WHERE"},
        {"role": "assistant", "content": "Where is the book?"},
    ]}])
    data, _ = load_splits(make_cfg(tmp_path, splits))
    assert as_pairs(data["dev"]) == [("BOOK WHERE", "Where is the book?")]


def _write_delimited(tmp_path, ext, delim, header, sf, tf, pairs=PAIRS):
    splits = {}
    for split, rows in pairs.items():
        lines = [delim.join(header)]
        for i, (s, t) in enumerate(rows):
            fields = {h: f"{h}{i}" for h in header}
            fields[sf], fields[tf] = s, t
            lines.append(delim.join(fields[h] for h in header))
        write(tmp_path / f"{split}.{ext}", "\n".join(lines) + "\n")
        splits[split] = f"{split}.{ext}"
    return splits


def test_csv(tmp_path):
    pairs = dict(PAIRS, train=[("IX-1 LIKE APPLE", "Yes, I like apples."), *PAIRS["train"][1:]])
    splits = _write_delimited(tmp_path, "csv", ",", ["id", "source", "target"], "source", "target",
                              pairs={k: [(s, t.replace(",", "")) for s, t in v] for k, v in pairs.items()})
    # a quoted field may hold the delimiter
    write(tmp_path / "train.csv", 'id,source,target\n1,IX-1 LIKE APPLE,"Yes, I like apples."\n'
          '2,YOU NAME WHAT,What is your name?\r\n3,TOMORROW RAIN,It will rain tomorrow.\n')
    data, counts = load_splits(make_cfg(tmp_path, splits, format="csv"))
    assert as_pairs(data["train"]) == pairs["train"]
    assert data["train"][0].origin.endswith("train.csv:2")  # header is line 1
    assert counts["rows_test"] == 2


def test_tsv_default_tab(tmp_path):
    splits = _write_delimited(tmp_path, "tsv", "\t", ["gloss", "note", "text"], "gloss", "text")
    data, _ = load_splits(make_cfg(tmp_path, splits, format="tsv", source_field="gloss", target_field="text"))
    assert_all_good(data)


def test_phoenix_style_pipe(tmp_path):
    header = ["name", "video", "start", "end", "speaker", "orth", "translation"]
    pairs = {"train": [("JETZT WETTER MORGEN DONNERSTAG", "und nun die wettervorhersage für morgen"),
                       ("ORT REGEN", "mancherorts regnet es auch länger")],
             "dev": [("DRUCK TIEF KOMMEN", "tiefer luftdruck bestimmt unser wetter")],
             "test": [("REGEN SCHNEE", "regen und schnee")]}
    splits = _write_delimited(tmp_path, "corpus.csv", "|", header, "orth", "translation", pairs=pairs)
    cfg = make_cfg(tmp_path, splits, format="csv", delimiter="|", source_field="orth",
                   target_field="translation", source_lang="DGS gloss", target_lang="German")
    data, _ = load_splits(cfg)
    for split in pairs:
        assert as_pairs(data[split]) == pairs[split]


def test_parallel(tmp_path):
    splits = {}
    for split, rows in PAIRS.items():
        write(tmp_path / f"{split}.gloss", "\n".join(s for s, _ in rows) + "\n")
        write(tmp_path / f"{split}.en", "\r\n".join(t for _, t in rows))  # CRLF, no final newline
        splits[split] = {"source": f"{split}.gloss", "target": f"{split}.en"}
    data, counts = load_splits(make_cfg(tmp_path, splits, format="parallel"))
    assert_all_good(data)
    assert data["test"][1].origin == f"{tmp_path / 'test.gloss'}:2"


def test_relative_path_and_env_var(tmp_path, monkeypatch):
    sub = tmp_path / "corpus"
    sub.mkdir()
    splits = jsonl_corpus(sub)
    monkeypatch.chdir(tmp_path)
    data, _ = load_splits(make_cfg("corpus", splits))
    assert_all_good(data)
    monkeypatch.setenv("SLT_TEST_DATA", str(sub))
    data, _ = load_splits(make_cfg("$SLT_TEST_DATA", splits))
    assert_all_good(data)


def test_subset_of_splits_and_plain_dataclass(tmp_path):
    splits = jsonl_corpus(tmp_path)
    del splits["dev"]
    cfg = DatasetConfig(name="t", path=str(tmp_path), splits=splits)  # the dataclass, not a DictConfig
    data, counts = load_splits(cfg, splits=("train", "test"))
    assert sorted(data) == ["test", "train"]
    assert "rows_dev" not in counts


# --------------------------------------------------------------------------- bad files


def test_malformed_json_names_file_and_line(tmp_path):
    splits = jsonl_corpus(tmp_path)
    write(tmp_path / "dev.jsonl", '{"source": "A", "target": "a"}\n\n{"source": "B", "target": \n')
    with pytest.raises(DataError) as err:
        load_splits(make_cfg(tmp_path, splits))
    msg = str(err.value)
    assert "dev.jsonl" in msg and "line 3" in msg


def test_jsonl_unknown_keys(tmp_path):
    splits = jsonl_corpus(tmp_path, sf="gloss", tf="text")
    with pytest.raises(DataError) as err:
        load_splits(make_cfg(tmp_path, splits))
    msg = str(err.value)
    assert "train.jsonl, line 1" in msg and "dataset.source_field=" in msg and "gloss" in msg


def test_csv_missing_columns(tmp_path):
    header = ["name", "video", "start", "end", "speaker", "orth", "translation"]
    splits = _write_delimited(tmp_path, "csv", "|", header, "orth", "translation")
    with pytest.raises(DataError) as err:  # wrong fields
        load_splits(make_cfg(tmp_path, splits, format="csv", delimiter="|"))
    msg = str(err.value)
    assert "train.csv" in msg and "orth" in msg and "translation" in msg
    assert "'source'" in msg and "dataset.source_field=" in msg
    with pytest.raises(DataError) as err:  # right fields, wrong delimiter: suggest it
        load_splits(make_cfg(tmp_path, splits, format="csv", source_field="orth", target_field="translation"))
    assert "dataset.delimiter='|'" in str(err.value)


def test_csv_wrong_field_count(tmp_path):
    splits = _write_delimited(tmp_path, "csv", ",", ["source", "target"], "source", "target")
    write(tmp_path / "test.csv", "source,target\nHOUSE BIG,The house is big.\nME TIRED,Yes, I am tired.\n")
    cfg = make_cfg(tmp_path, splits, format="csv")
    with pytest.raises(DataError, match=r"test\.csv:3: has 3 fields"):
        load_splits(cfg)
    cfg.on_bad_rows = "drop"
    data, counts = load_splits(cfg)
    assert counts["dropped_malformed_test"] == 1 and counts["rows_test"] == 1


def test_missing_file(tmp_path):
    splits = jsonl_corpus(tmp_path)
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(DataError) as err:
        load_splits(make_cfg(tmp_path, splits))
    msg = str(err.value)
    assert str(tmp_path / "test.jsonl") in msg and "dataset.splits.test=" in msg


def test_missing_split_key(tmp_path):
    splits = jsonl_corpus(tmp_path)
    del splits["test"]
    with pytest.raises(DataError) as err:
        load_splits(make_cfg(tmp_path, splits))
    msg = str(err.value)
    assert "'test'" in msg and "dataset.splits.test=" in msg


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as err:
        load_splits(make_cfg(missing, {"train": "train.jsonl", "dev": "d", "test": "t"}))
    msg = str(err.value)
    assert str(missing) in msg and "dataset.path=" in msg
    with pytest.raises(DataError, match="dataset.path="):
        load_splits(OmegaConf.structured(DatasetConfig(name="t", splits={"train": "x"})))


def test_undecodable_bytes_line_number(tmp_path):
    splits = jsonl_corpus(tmp_path)
    good = '{"source": "A", "target": "a"}\n'
    data = (good * 4).encode() + '{"source": "B", "target": "M'.encode() + b"\xfc" + b'nchen"}\n'
    (tmp_path / "train.jsonl").write_bytes(data)
    with pytest.raises(DataError) as err:
        load_splits(make_cfg(tmp_path, splits))
    msg = str(err.value)
    assert "train.jsonl" in msg and "line 5" in msg and "UTF-8" in msg


def test_undecodable_bytes_csv(tmp_path):
    splits = _write_delimited(tmp_path, "csv", ",", ["source", "target"], "source", "target")
    write(tmp_path / "dev.csv", "source,target\nBOOK WHERE,Wo ist das Buch über?\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"dev\.csv, line 2"):
        load_splits(make_cfg(tmp_path, splits, format="csv"))


def test_parallel_count_mismatch(tmp_path):
    write(tmp_path / "train.gloss", "A\nB\nC\n")
    write(tmp_path / "train.en", "a\nb\n")
    cfg = make_cfg(tmp_path, {"train": {"source": "train.gloss", "target": "train.en"}}, format="parallel")
    with pytest.raises(DataError) as err:
        load_splits(cfg, splits=("train",))
    msg = str(err.value)
    assert "train.gloss" in msg and "train.en" in msg and "3" in msg and "2" in msg


def test_parallel_split_must_be_mapping(tmp_path):
    write(tmp_path / "train.gloss", "A\n")
    cfg = make_cfg(tmp_path, {"train": "train.gloss"}, format="parallel")
    with pytest.raises(DataError, match="source: FILE, target: FILE"):
        load_splits(cfg, splits=("train",))


def test_empty_target_error_vs_drop(tmp_path):
    splits = jsonl_corpus(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [{"source": "A", "target": "a"}, {"source": "B", "target": "   "},
                                           {"source": "", "target": "c"}, {"source": "D", "target": "d"}])
    cfg = make_cfg(tmp_path, splits)
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    msg = str(err.value)
    assert "train.jsonl:2" in msg and "empty target" in msg and "dataset.on_bad_rows=drop" in msg
    cfg.on_bad_rows = "drop"
    data, counts = load_splits(cfg)
    assert as_pairs(data["train"]) == [("A", "a"), ("D", "d")]
    assert counts["dropped_empty_train"] == 2 and counts["rows_read_train"] == 4 and counts["rows_train"] == 2


def test_split_empty_after_drop(tmp_path):
    splits = jsonl_corpus(tmp_path)
    write_jsonl(tmp_path / "dev.jsonl", [{"source": "A", "target": ""}])
    with pytest.raises(DataError, match=r"split 'dev'.*empty"):
        load_splits(make_cfg(tmp_path, splits, on_bad_rows="drop"))
    write(tmp_path / "dev.jsonl", "\n")
    with pytest.raises(DataError, match=r"split 'dev'.*empty"):
        load_splits(make_cfg(tmp_path, splits))


def test_leakage_error_vs_drop(tmp_path):
    pairs = dict(PAIRS, train=PAIRS["train"] + [PAIRS["test"][0], ("BOOK WHERE", "Where's the book?")])
    splits = jsonl_corpus(tmp_path, pairs=pairs)
    cfg = make_cfg(tmp_path, splits)
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    msg = str(err.value)
    assert "train.jsonl:4" in msg and "test.jsonl:1" in msg and "dataset.on_bad_rows=drop" in msg
    cfg.on_bad_rows = "drop"
    data, counts = load_splits(cfg)
    # same source but a different target is not leakage
    assert as_pairs(data["train"]) == PAIRS["train"] + [("BOOK WHERE", "Where's the book?")]
    assert as_pairs(data["test"]) == PAIRS["test"]  # dev/test are never changed
    assert counts["dropped_leak_train"] == 1 and counts["leak_test"] == 1 and counts["leak_dev"] == 0


def test_duplicates_inside_a_split_are_kept(tmp_path):
    pairs = dict(PAIRS, train=PAIRS["train"] + PAIRS["train"][:1])
    data, counts = load_splits(make_cfg(tmp_path, jsonl_corpus(tmp_path, pairs=pairs)))
    assert counts["rows_train"] == 4


@dataclass
class _LeakCfg(DatasetConfig):
    on_leak: str = "keep"


def test_optional_on_leak_keep(tmp_path):
    pairs = dict(PAIRS, train=PAIRS["train"] + [PAIRS["dev"][0]])
    cfg = OmegaConf.structured(_LeakCfg(name="t", path=str(tmp_path), splits=jsonl_corpus(tmp_path, pairs=pairs)))
    data, counts = load_splits(cfg)
    assert counts["rows_train"] == 4 and counts["leak_dev"] == 1 and counts["dropped_leak_train"] == 0


def test_text2gloss_swaps(tmp_path):
    cfg = make_cfg(tmp_path, jsonl_corpus(tmp_path), direction="text2gloss")
    data, _ = load_splits(cfg)
    for split, rows in PAIRS.items():
        assert as_pairs(data[split]) == [(t, s) for s, t in rows]
    user = build_messages("I like apples.", cfg)[-1]["content"]
    assert user == "Translate from English to ASL gloss:\nI like apples."


def test_max_samples_caps(tmp_path):
    pairs = {"train": [(f"G{i}", f"t{i}") for i in range(10)],
             "dev": [(f"D{i}", f"d{i}") for i in range(5)],
             "test": [(f"T{i}", f"e{i}") for i in range(5)]}
    cfg = make_cfg(tmp_path, jsonl_corpus(tmp_path, pairs=pairs), max_train_samples=3, max_eval_samples=2)
    data, counts = load_splits(cfg)
    assert as_pairs(data["train"]) == pairs["train"][:3]
    assert as_pairs(data["dev"]) == pairs["dev"][:2] and as_pairs(data["test"]) == pairs["test"][:2]
    assert counts["rows_train"] == 3 and counts["rows_read_train"] == 10 and counts["rows_dev"] == 2
    cfg.max_train_samples = 100
    assert len(load_splits(cfg)[0]["train"]) == 10
    cfg.max_train_samples = 0
    with pytest.raises(DataError, match="dataset.max_train_samples"):
        load_splits(cfg)


def test_bad_config_values(tmp_path):
    splits = jsonl_corpus(tmp_path)
    with pytest.raises(DataError, match="dataset.format"):
        load_splits(make_cfg(tmp_path, splits, format="xml"))
    with pytest.raises(DataError, match="dataset.on_bad_rows"):
        load_splits(make_cfg(tmp_path, splits, on_bad_rows="skip"))
    with pytest.raises(DataError, match="dataset.direction"):
        load_splits(make_cfg(tmp_path, splits, direction="sideways"))


# --------------------------------------------------------------------------- prompts


def test_build_messages():
    cfg = OmegaConf.structured(DatasetConfig(name="t"))
    assert build_messages("IX-1 LIKE APPLE", cfg) == [
        {"role": "user", "content": "Translate from ASL gloss to English:\nIX-1 LIKE APPLE"}]
    cfg.system_prompt = "You are a sign language interpreter."
    cfg.prompt = "{source_lang} -> {target_lang}: {source}"
    msgs = build_messages("A {B}", cfg)
    assert msgs == [{"role": "system", "content": "You are a sign language interpreter."},
                    {"role": "user", "content": "ASL gloss -> English: A {B}"}]
    cfg.prompt = "{gloss}"
    with pytest.raises(DataError, match="dataset.prompt"):
        build_messages("A", cfg)


def test_to_prompt_completion(tmp_path):
    cfg = make_cfg(tmp_path, jsonl_corpus(tmp_path), system_prompt="Be brief.")
    data, _ = load_splits(cfg)
    ds = to_prompt_completion(data["train"], cfg)
    assert ds.column_names == ["prompt", "completion"]
    assert len(ds) == 3
    row = ds[1]
    assert row["prompt"] == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Translate from ASL gloss to English:\nYOU NAME WHAT"}]
    assert row["completion"] == [{"role": "assistant", "content": "What is your name?"}]


def test_import_is_light():
    code = ("import sys, slt_hydra.data; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the real corpus


@pytest.mark.skipif(not (PHOENIX_DIR / "PHOENIX-2014-T.train.corpus.csv").exists(),
                    reason=f"PHOENIX-2014T corpus not found under {PHOENIX_DIR}")
def test_phoenix14t_real_corpus():
    splits = {s: f"PHOENIX-2014-T.{s}.corpus.csv" for s in ("train", "dev", "test")}
    cfg = make_cfg(PHOENIX_DIR, splits, format="csv", delimiter="|", source_field="orth",
                   target_field="translation", source_lang="DGS gloss", target_lang="German")
    # The official splits share 24 (gloss, translation) pairs between train and dev/test
    # (short stock phrases like "guten abend liebe zuschauer"): the default policy refuses them.
    with pytest.raises(DataError, match="dataset.on_bad_rows=drop"):
        load_splits(cfg)
    cfg.on_bad_rows = "drop"
    data, counts = load_splits(cfg)
    assert (counts["rows_read_train"], counts["rows_read_dev"], counts["rows_read_test"]) == (7096, 519, 642)
    assert counts["dropped_empty_train"] == counts["dropped_empty_dev"] == counts["dropped_empty_test"] == 0
    assert (counts["rows_dev"], counts["rows_test"]) == (519, 642)
    assert counts["rows_train"] == 7096 - counts["dropped_leak_train"]
    assert (counts["leak_dev"], counts["leak_test"]) == (10, 14) and counts["dropped_leak_train"] == 81
    ex = data["train"][0]
    assert ex.source == "JETZT WETTER MORGEN DONNERSTAG ZWOELF FEBRUAR"
    assert ex.target.startswith("und nun die wettervorhersage")
