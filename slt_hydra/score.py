"""Score translations from files: ``python -m slt_hydra.score --hyp FILE --ref FILE``.

Prints corpus BLEU-1..4, ROUGE-L and chrF (see :mod:`slt_hydra.metrics`) as a small
table, or as JSON with ``--json``.

Two file formats are read, detected per line:

- plain text, one sentence per line (line i of --hyp goes with line i of --ref);
- the Uni-Sign format, ``sample: ID, prediction: TEXT`` or
  ``sample: ID, ground-truth: TEXT`` (split on the first ``, prediction: `` /
  ``, ground-truth: ``). When both files carry IDs, references are matched to
  hypotheses by ID, so the two files may be in any order.

Bad input (missing/empty file, invalid UTF-8, mismatched counts or IDs) exits with
status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .metrics import TOKENIZERS, score_corpus

__all__ = ["InputError", "read_sentences", "align", "main"]

# "sample: S000011_P0000_T00, prediction: 我 想 ..."; the ID ends at the first tag.
_ID_LINE = re.compile(r"^sample: (?P<id>.*?), (?P<tag>prediction|ground-truth):(?: (?P<text>.*))?$")


class InputError(Exception):
    """A problem with an input file, worded for the user (one line)."""


def _parse_line(line: str) -> Tuple[Optional[str], str]:
    m = _ID_LINE.match(line)
    if m is None:
        return None, line
    return m.group("id").strip(), (m.group("text") or "").strip()


def read_sentences(path) -> Tuple[List[Optional[str]], List[str]]:
    """Read one sentence per line; returns ``(ids, texts)``.

    ``ids[i]`` is the sample ID for Uni-Sign-format lines and ``None`` for plain
    lines. A file must not mix the two formats, nor repeat an ID. Raises
    :class:`InputError` for a missing, unreadable, empty or non-UTF-8 file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a text file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None

    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        data = data[3:]
    if not data.strip():
        raise InputError(f"{path}: file is empty")

    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":  # final newline
        raw_lines.pop()

    ids: List[Optional[str]] = []
    texts: List[str] = []
    seen = {}
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{path}: line {lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            ) from None
        sid, text = _parse_line(line.rstrip("\r"))
        if ids and (sid is None) != (ids[0] is None):
            raise InputError(
                f"{path}: line {lineno}: mixes plain lines and 'sample: ID, prediction/ground-truth: TEXT' "
                f"lines (line 1 is {'plain' if ids[0] is None else 'an ID line'})"
            )
        if sid is not None:
            if sid in seen:
                raise InputError(f"{path}: line {lineno}: sample ID {sid!r} repeats line {seen[sid]}")
            seen[sid] = lineno
        ids.append(sid)
        texts.append(text)
    return ids, texts


def _few(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f", ... and {len(items) - k} more" if len(items) > k else "")


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


def align(
    hyp_path, hyp_ids: List[Optional[str]], hyps: List[str],
    ref_path, ref_ids: List[Optional[str]], refs: List[str],
) -> List[str]:
    """Return the references in hypothesis order.

    By sample ID when both files carry IDs (the ID sets must be equal), otherwise by
    line (the line counts must be equal).
    """
    if hyp_ids and ref_ids and hyp_ids[0] is not None and ref_ids[0] is not None:
        ref_by_id = dict(zip(ref_ids, refs))
        hyp_set = set(hyp_ids)
        no_ref = [i for i in hyp_ids if i not in ref_by_id]
        no_hyp = [i for i in ref_ids if i not in hyp_set]
        if no_ref or no_hyp:
            parts = []
            if no_ref:
                parts.append(f"{len(no_ref)} sample ID(s) of {hyp_path} missing from {ref_path}: {_few(no_ref)}")
            if no_hyp:
                parts.append(f"{len(no_hyp)} sample ID(s) of {ref_path} missing from {hyp_path}: {_few(no_hyp)}")
            raise InputError("; ".join(parts))
        return [ref_by_id[i] for i in hyp_ids]
    if len(hyps) != len(refs):
        raise InputError(
            f"line counts differ: {hyp_path} has {_lines(len(hyps))}, {ref_path} has {_lines(len(refs))}"
        )
    return list(refs)


_ROWS = [("BLEU-1", "bleu1"), ("BLEU-2", "bleu2"), ("BLEU-3", "bleu3"), ("BLEU-4", "bleu4"),
         ("ROUGE-L", "rougeL"), ("chrF", "chrf")]


def _table(res: dict) -> str:
    width = max(len(label) for label, _ in _ROWS)
    lines = [f"{'sentences':<{width}}  {res['n_sentences']}"]
    lines += [f"{label:<{width}}  {res[key]:6.2f}" for label, key in _ROWS]
    lines.append(f"BLEU signature: {res['bleu_signature']}")
    lines.append(f"chrF signature: {res['chrf_signature']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m slt_hydra.score",
        description=(
            "Score translations against references: corpus BLEU-1..4 (sacrebleu), "
            "ROUGE-L F1 (mean over sentences, tokenized like BLEU) and chrF. "
            "Files hold one sentence per line, or Uni-Sign lines "
            "'sample: ID, prediction: TEXT' / 'sample: ID, ground-truth: TEXT'; "
            "when both files carry IDs, sentences are matched by ID."
        ),
        epilog=(
            "Tokenization decides comparability with papers: 13a (default) for most "
            "languages; zh for Chinese (CSL-Daily, character level); "
            "none --lowercase for PHOENIX-2014-T (already tokenized, lowercased German). "
            "Exit status 2 on bad input."
        ),
    )
    p.add_argument("--hyp", required=True, metavar="FILE", help="system output (hypotheses)")
    p.add_argument("--ref", required=True, metavar="FILE", help="references (one per hypothesis)")
    p.add_argument("--tokenize", default="13a", choices=TOKENIZERS, metavar="NAME",
                   help=f"sacrebleu tokenizer, also used for ROUGE-L: {', '.join(TOKENIZERS)} (default: 13a)")
    p.add_argument("--lowercase", action="store_true", help="lowercase hypotheses and references before scoring")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"{parser.prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2

    try:
        hyp_ids, hyps = read_sentences(args.hyp)
        ref_ids, refs = read_sentences(args.ref)
        refs = align(args.hyp, hyp_ids, hyps, args.ref, ref_ids, refs)
    except InputError as e:
        return fail(str(e))
    try:
        res = score_corpus(hyps, refs, tokenize=args.tokenize, lowercase=args.lowercase)
    except Exception as e:  # e.g. a tokenizer whose optional dependency is missing
        return fail(f"cannot score with --tokenize {args.tokenize}: {e}")

    res = {"hyp": str(args.hyp), "ref": str(args.ref), "n_sentences": len(hyps),
           "tokenize": args.tokenize, "lowercase": args.lowercase, **res}
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2))
    else:
        print(_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
