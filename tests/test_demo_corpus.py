"""The shipped synthetic demo corpus and its generator (tools/demo_corpus.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import demo_corpus

ROOT = Path(__file__).resolve().parents[1]

DEMO_DIR = ROOT / "slt_hydra" / "resources" / "demo"
SPLITS = ("train", "dev", "test")
SIZES = {"train": 600, "dev": 100, "test": 100}
PAST = {t.gloss for t in demo_corpus.TIMES if t.tense == "past"}
FUTURE = {t.gloss for t in demo_corpus.TIMES if t.tense == "future"}


def _read(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


@pytest.fixture(scope="module")
def shipped() -> dict:
    return {split: _read(DEMO_DIR / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module", params=["shipped", "seed7"])
def corpus(request, shipped) -> dict:
    """The content checks run on the shipped files and on a fresh corpus from another seed."""
    return shipped if request.param == "shipped" else demo_corpus.generate(seed=7)


def _all(splits: dict) -> list:
    return [row for split in SPLITS for row in splits[split]]


# --- reproducibility -------------------------------------------------------------------------


def test_write_corpus_reproduces_shipped_files_byte_for_byte(tmp_path):
    demo_corpus.write_corpus(tmp_path)  # defaults: seed 13, 600/100/100
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DEMO_DIR / f"{split}.jsonl").read_bytes(), split


def test_cli_reproduces_shipped_files_byte_for_byte(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.demo_corpus", "--out", str(out), "--seed", "13",
         "--train", "600", "--dev", "100", "--test", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for split in SPLITS:
        assert (out / f"{split}.jsonl").read_bytes() == (DEMO_DIR / f"{split}.jsonl").read_bytes(), split


def test_same_seed_same_corpus_other_seed_differs():
    a = demo_corpus.generate(seed=13)
    assert a == demo_corpus.generate(seed=13)
    b = demo_corpus.generate(seed=14)
    assert a != b
    assert [r["source"] for r in _all(a)] != [r["source"] for r in _all(b)]


def test_generate_honours_sizes():
    small = demo_corpus.generate(seed=3, n_train=40, n_dev=7, n_test=5)
    assert {k: len(v) for k, v in small.items()} == {"train": 40, "dev": 7, "test": 5}
    with pytest.raises(ValueError):
        demo_corpus.generate(n_train=-1)


# --- the shipped files (and, for content, a fresh corpus from another seed) ----------------


def test_split_sizes(shipped):
    assert {split: len(rows) for split, rows in shipped.items()} == SIZES
    assert {split: len(rows) for split, rows in demo_corpus.generate(seed=7).items()} == SIZES


def test_file_format(shipped):
    for split in SPLITS:
        raw = (DEMO_DIR / f"{split}.jsonl").read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n") and b"\n\n" not in raw
        for line, row in zip(raw.decode("utf-8").splitlines(), shipped[split]):
            assert list(row) == ["source", "target"]
            assert line == json.dumps(row, ensure_ascii=False)


def test_no_empty_fields(corpus):
    for row in _all(corpus):
        for key in ("source", "target"):
            assert isinstance(row[key], str) and row[key].strip(), row
            assert row[key] == row[key].strip() and "  " not in row[key], row


def test_no_leakage_between_splits(corpus):
    train_src = {r["source"] for r in corpus["train"]}
    train_pairs = {(r["source"], r["target"]) for r in corpus["train"]}
    train_tgt = {r["target"] for r in corpus["train"]}
    for held in ("dev", "test"):
        assert not train_src & {r["source"] for r in corpus[held]}, held
        assert not train_pairs & {(r["source"], r["target"]) for r in corpus[held]}, held
        assert not train_tgt & {r["target"] for r in corpus[held]}, held
    assert not {r["source"] for r in corpus["dev"]} & {r["source"] for r in corpus["test"]}
    rows = _all(corpus)
    assert len({r["source"] for r in rows}) == len(rows)  # unique within splits too


def test_glosses_follow_the_documented_notation(corpus):
    for row in _all(corpus):
        toks = row["source"].split(" ")
        assert 3 <= len(toks) <= 10, row
        for tok in toks:
            assert demo_corpus.GLOSS_TOKEN_RE.match(tok), (tok, row)
            if tok.startswith("fs-"):
                assert tok[3:].isupper() and tok[3:].isalpha(), (tok, row)
            elif tok != "?":
                assert tok == tok.upper(), (tok, row)
        assert "?" not in toks[:-1], row  # the yes/no marker only at the end
        assert all(t not in demo_corpus.TIME_SIGNS for t in toks[1:]), row  # time sign first
        assert all(t not in demo_corpus.WH_SIGNS for t in toks[:-1]), row  # wh-sign last


def test_english_targets_are_sentences(corpus):
    for row in _all(corpus):
        tgt, toks = row["target"], row["source"].split()
        assert 4 <= len(tgt.split()) <= 14, row
        assert tgt[0].isupper() and tgt[-1] in ".?", row
        is_question = toks[-1] == "?" or toks[-1] in demo_corpus.WH_SIGNS
        assert tgt.endswith("?") == is_question, row


def test_targets_agree_with_the_glosses(corpus):
    for row in _all(corpus):
        toks, tgt = row["source"].split(), row["target"]
        words = tgt.rstrip(".?").lower().split()
        for tok in toks:
            if tok.startswith("fs-"):
                assert tok[3:].capitalize() in tgt, row  # fingerspelled name kept
        if toks[0] in demo_corpus.TIME_SIGNS:
            time = next(t for t in demo_corpus.TIMES if t.gloss == toks[0])
            assert time.en in tgt.lower(), row
            if toks[0] in FUTURE:
                assert "will" in words, row
            if toks[0] in PAST:
                assert "will" not in words, row
        assert ("NOT" in toks) == ("not" in words), row
        assert ("NONE" in toks) == ("no" in words), row
        assert ("FINISH" in toks) == ("already" in words), row


def test_dev_and_test_glosses_are_covered_by_train(corpus):
    train_vocab = {t for r in corpus["train"] for t in r["source"].split()}
    for held in ("dev", "test"):
        unseen = {t for r in corpus[held] for t in r["source"].split()} - train_vocab
        assert not unseen, (held, unseen)


def test_all_templates_are_used(corpus):
    ends = {r["source"].split()[-1] for r in _all(corpus)}
    assert {"?", "NOT", "NONE", "WHAT", "WHO", "WHERE", "WHY", "HOW-MANY"} <= ends
    toks = {t for r in _all(corpus) for t in r["source"].split()}
    assert {"FINISH", "WILL", "IX-1", "IX-2", "IX-3", "POSS-1", "POSS-3"} <= toks
    assert len(demo_corpus.TEMPLATES) >= 12


def test_module_says_it_is_synthetic():
    doc = demo_corpus.__doc__ or ""
    assert "SYNTHETIC" in doc and "python -m tools.demo_corpus" in doc
    readme = (DEMO_DIR / "README.md").read_text(encoding="utf-8")
    assert "synthetic" in readme.lower() and "python -m tools.demo_corpus" in readme
