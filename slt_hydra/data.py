"""Corpus readers and prompt formatting.

``load_splits`` reads the train/dev/test files that ``cfg`` (a ``DatasetConfig``, as a
dataclass or an OmegaConf node) describes, in one of five formats:

* ``jsonl``    one JSON object per line: ``{source_field: ..., target_field: ...}``, or
               Alpaca style (``instruction`` [+ ``input``] / ``output`` or ``response``), or
               chat style (``messages``: last user turn / last assistant turn);
* ``csv``/``tsv`` a header line and one row per example (``delimiter`` null = "," / tab;
               PHOENIX-2014T uses "|" with ``source_field=orth target_field=translation``);
* ``parallel`` two text files, one sentence per line, aligned by line number;
* ``hub``      a Hugging Face Hub dataset (``hub_id``, ``hub_config``, ``hub_revision``), read with
               ``datasets.load_dataset`` only when the Hub is reachable; ``splits`` maps our split names
               to the Hub's (``dev: validation``), slices included (``dev: "train[95%:]"``).

Corpora that ship no gloss column (How2Sign, iSign: ``_TEXT_ONLY``) read as gloss text are refused with a
message that says so and what to do (their poses: ``dataset.input=pose``), rather than trained on an id column
or on nothing. With ``dataset.input=pose`` the source field names each example's pose (slt_hydra/pose.py).

Every problem is raised as ``DataError`` whose message names the file, the line when it
applies, and the config key to change. No torch/transformers import happens here, and
``datasets`` is only imported by ``to_prompt_completion`` and for ``format: hub``, so validation stays fast.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from omegaconf.errors import MissingMandatoryValue

from slt_hydra import machine
from slt_hydra.errors import SetupError
from slt_hydra.schema import DATASET_FORMATS

FORMATS = DATASET_FORMATS
DIRECTIONS = ("gloss2text", "text2gloss")
BAD_ROW_POLICIES = ("error", "drop")
LEAK_POLICIES = ("error", "drop", "keep")
TRAIN = "train"

_DROP_HINT = "dataset.on_bad_rows=drop"

# Corpora that ship only the spoken-language side, keyed by dataset.name (the conf/dataset file that describes
# them): their metadata columns (ids, times: never a source), and what to tell a user without a gloss column.
# The knowledge is about the published corpus, not a knob, so it lives here rather than in the schema.
_TEXT_ONLY: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "how2sign": (
        ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START", "END", "START_REALIGNED",
         "END_REALIGNED"),
        "How2Sign ships no gloss column: its realigned files hold only video/sentence ids, start/end times and the "
        "English SENTENCE. Translate from its released keypoints instead (dataset.input=pose "
        "dataset.source_field=SENTENCE_NAME, as conf/dataset/how2sign.yaml does), or add a gloss column (your own "
        "annotation) to each split file, named GLOSS or any name you give as dataset.source_field=COLUMN",
    ),
    "isign": (
        ("uid",),
        "iSign ships no gloss or other source-text column: its CSV holds a video id (uid) and the English text. "
        "Translate from its pose release instead (dataset.input=pose dataset.source_field=uid, as "
        "conf/dataset/isign.yaml does), train on a gloss corpus (dataset=aslg_pc12, dataset=phoenix14t, or "
        "dataset=local), or add a gloss column for the iSign uids to each split file, named gloss or any name you "
        "give as dataset.source_field=COLUMN",
    ),
}
_OFF = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Example:
    source: str
    target: str
    origin: str  # "file:line" of the row it came from (the source file for parallel corpora)


class DataError(SetupError, ValueError):
    """A corpus or dataset-config problem; the message says where and what to change."""


# --------------------------------------------------------------------------- helpers


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    """Attribute of a dataclass or DictConfig; ``default`` when the field does not exist."""
    try:
        return getattr(cfg, name)
    except AttributeError:  # omegaconf's ConfigAttributeError is an AttributeError
        return default


def _choice(cfg: Any, name: str, allowed: Sequence[str]) -> str:
    value = _get(cfg, name)
    if value not in allowed:
        raise DataError(
            f"dataset.{name}={value!r} is not supported; set dataset.{name} to one of: "
            + ", ".join(allowed)
        )
    return value


def _cap(cfg: Any, name: str) -> Optional[int]:
    value = _get(cfg, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(
            f"dataset.{name}={value!r} must be a positive integer or null (null = all examples); "
            f"set dataset.{name}=N or dataset.{name}=null"
        )
    return value


def _value(cfg: Any, name: str) -> Any:
    """The field's value, or None when it is absent, null, blank or ``???`` (mandatory and not set)."""
    try:
        value = getattr(cfg, name)
    except (AttributeError, MissingMandatoryValue):
        return None
    if value is None or str(value).strip() in ("", "???"):
        return None
    return value


def _check_fields(cfg: Any) -> Optional[str]:
    """Refuse a source/target field that is unset, the same column twice, or (for a text-only corpus) a
    metadata column, before any file is read. Returns the corpus's no-gloss hint, or None."""
    spec = _TEXT_ONLY.get(str(_value(cfg, "name")))
    hint = spec[1] if spec else None
    sf, tf = _value(cfg, "source_field"), _value(cfg, "target_field")
    if sf is None:
        raise DataError("dataset.source_field is not set: it names the gloss column; "
                        + (hint or "set dataset.source_field=COLUMN"))
    if tf is None:
        raise DataError("dataset.target_field is not set: it names the spoken-language text column; "
                        "set dataset.target_field=COLUMN")
    if str(sf) == str(tf):
        raise DataError(f"dataset.source_field and dataset.target_field are both {str(sf)!r}: the model would learn "
                        "to copy its input; " + (hint or "point dataset.source_field at the gloss column"))
    if _value(cfg, "input") == "pose":  # source_field names each example's pose (an id column is just right)
        return hint
    if spec and str(sf) in spec[0]:
        raise DataError(f"dataset.source_field={str(sf)!r} is a metadata column of {_value(cfg, 'name')}, not "
                        f"source text; {hint}")
    return hint


def _expand(raw: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(raw))))


def _resolve_dir(cfg: Any) -> Path:
    raw = _value(cfg, "path")  # None for null, blank or ??? alike
    if raw is None:
        raise DataError(
            "dataset.path is not set: it must name the directory that holds the split files; "
            "set dataset.path=DIR"
        )
    path = _expand(raw)
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise DataError(
            f"dataset directory {path} does not exist (dataset.path={raw!r}, relative paths are "
            f"resolved against the working directory {Path.cwd()}); set dataset.path=DIR"
        )
    if not path.is_dir():
        raise DataError(f"dataset.path={raw!r} resolves to {path}, which is a file, not a directory; "
                        "set dataset.path=DIR (the directory) and name the files in dataset.splits")
    return path


def _split_files(cfg: Any, root: Path, split: str, fmt: str) -> Tuple[Path, ...]:
    """The file(s) of one split: (file,) or, for parallel corpora, (source_file, target_file)."""
    splits = _get(cfg, "splits") or {}
    if split not in splits:
        configured = ", ".join(str(k) for k in splits) or "none"
        if fmt == "parallel":
            how = f"+dataset.splits.{split}.source=FILE +dataset.splits.{split}.target=FILE"
        else:
            how = f"+dataset.splits.{split}=FILE"
        raise DataError(
            f"dataset.splits has no '{split}' entry (configured: {configured}; directory {root}); "
            f"set {how} (a file name relative to dataset.path)"
        )
    spec = splits[split]
    if fmt == "parallel":
        if not isinstance(spec, Mapping) or "source" not in spec or "target" not in spec:
            raise DataError(
                f"dataset.splits.{split}={spec!r}: a parallel corpus needs a source and a target file; "
                f"set dataset.splits.{split}={{source: FILE, target: FILE}}"
            )
        names = [(f"dataset.splits.{split}.source", spec["source"]),
                 (f"dataset.splits.{split}.target", spec["target"])]
    else:
        if isinstance(spec, Mapping) or spec is None or not str(spec).strip():
            raise DataError(
                f"dataset.splits.{split}={spec!r}: format {fmt} reads one file per split; "
                f"set dataset.splits.{split}=FILE"
            )
        names = [(f"dataset.splits.{split}", spec)]
    files = []
    for key, name in names:
        path = root / _expand(name)  # an absolute name wins over root
        if not path.is_file():
            what = "is a directory, not a file" if path.exists() else "does not exist"
            raise DataError(f"{path} {what} (split '{split}': {key}={name!r}, dataset.format={fmt}, "
                            f"dataset.path={root}); set {key}=FILE")
        files.append(path)
    return tuple(files)


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} at column {column} is not valid UTF-8; "
            f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix})"
        ) from exc


def lines_of(text: str) -> List[str]:
    """Physical lines (only "\\n" ends a line, a trailing "\\r" is removed), no final empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _text(value: Any, path: Path, line: int, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        # multimodal chat content: [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in value if p.get("type", "text") == "text")
    raise DataError(f"{path}, line {line}: '{key}' is a {type(value).__name__}, expected a string; "
                    "fix the line")


# A raw row: (line number, source text, target text, problem or None)
_Row = Tuple[int, str, str, Optional[str]]


def _jsonl_rows(path: Path, sf: str, tf: str) -> Iterator[_Row]:
    for n, line in enumerate(lines_of(read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {n}: malformed JSON ({exc.msg} at column {exc.colno}); "
                            "each line must be one complete JSON object: fix or remove the line") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, found {type(obj).__name__}; "
                            "fix or remove the line")
        if sf in obj and tf in obj:
            yield n, _text(obj[sf], path, n, sf), _text(obj[tf], path, n, tf), None
        elif "instruction" in obj and ("output" in obj or "response" in obj):
            source = _text(obj["instruction"], path, n, "instruction").strip()
            extra = _text(obj.get("input"), path, n, "input").strip()
            if extra:
                source = f"{source}\n{extra}" if source else extra
            key = "output" if "output" in obj else "response"
            yield n, source, _text(obj[key], path, n, key), None
        elif isinstance(obj.get("messages"), list):
            source = target = ""
            for i, msg in enumerate(obj["messages"]):
                if not isinstance(msg, Mapping):
                    raise DataError(f"{path}, line {n}: messages[{i}] is not an object with role/content; "
                                    "fix the line")
                if msg.get("role") == "user":
                    source = _text(msg.get("content"), path, n, f"messages[{i}].content")
                elif msg.get("role") == "assistant":
                    target = _text(msg.get("content"), path, n, f"messages[{i}].content")
            yield n, source, target, None
        else:
            missing = [k for k in (sf, tf) if k not in obj]
            raise DataError(
                f"{path}, line {n}: key(s) {missing} not found (keys present: {sorted(obj)}), and the line "
                "is neither Alpaca style (instruction/output) nor chat style (messages); "
                "set dataset.source_field=KEY dataset.target_field=KEY"
            )


def _csv_rows(path: Path, delimiter: str, sf: str, tf: str, source_hint: Optional[str] = None) -> Iterator[_Row]:
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        while header == []:
            header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: unreadable header ({exc})") from exc
    if header is None:
        raise DataError(f"{path} is empty: a {delimiter!r}-separated file needs a header line and rows")
    header = [h.strip() for h in header]
    missing = [c for c in (sf, tf) if c not in header]
    if missing:
        hint = "set dataset.source_field=COLUMN dataset.target_field=COLUMN"
        if len(header) == 1:
            seen = [d for d in ("|", "\t", ",", ";") if d in header[0] and d != delimiter]
            if seen:
                hint += f" (the header looks {seen[0]!r}-separated: set dataset.delimiter='{seen[0]}')"
        if sf in missing and source_hint:  # a text-only corpus (How2Sign...): say why the gloss column is absent
            hint = source_hint if tf not in missing else f"{hint}. {source_hint}"
        raise DataError(
            f"{path}, line {reader.line_num}: column(s) {missing} not found. Header found "
            f"(delimiter {delimiter!r}): {header}; configured dataset.source_field={sf!r}, "
            f"dataset.target_field={tf!r}; {hint}"
        )
    si, ti, width = header.index(sf), header.index(tf), len(header)
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}, line {start}: malformed row ({exc}); fix the quoting of that row") from exc
        end = reader.line_num
        if row is None:
            return
        if not row or all(not f.strip() for f in row):
            continue
        fields = list(row)
        while len(fields) > width and not fields[-1].strip():
            fields.pop()  # a trailing delimiter is harmless
        if len(fields) != width:
            problem = (f"has {len(fields)} fields but the header has {width} (an unquoted {delimiter!r} "
                       "inside a field, or a missing one); fix the row")
            yield start, "", "", problem
            continue
        yield start, fields[si], fields[ti], None


def _parallel_rows(src: Path, tgt: Path) -> Iterator[_Row]:
    s_lines, t_lines = lines_of(read_text(src)), lines_of(read_text(tgt))
    if len(s_lines) != len(t_lines):
        raise DataError(
            f"parallel files differ in length: {src} has {len(s_lines)} lines, {tgt} has {len(t_lines)}; "
            "each line of the source file must match the same line of the target file"
        )
    for n, (s, t) in enumerate(zip(s_lines, t_lines), start=1):
        if not s.strip() and not t.strip():
            continue  # a blank line on both sides is not a row
        yield n, s, t, None


# --------------------------------------------------------------------------- Hugging Face Hub

# Our split name -> the Hub split names tried, in order, when dataset.splits does not name one.
_HUB_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"), "test": ("test",)}


def _hub_offline_reason() -> Optional[str]:
    """Why the Hub cannot be used now, or None when it can. The environment is read first: no network attempt."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _OFF:
            return f"{var}={os.environ[var]} is set"
    if not machine.hub_is_reachable(timeout=2.0):
        return "huggingface.co:443 did not answer within 2 s"
    return None


def _load_hub(cfg: Any) -> Any:
    """``datasets.load_dataset(hub_id, hub_config, revision=hub_revision)``, online only, as a DatasetDict."""
    hub_id, subset, revision = _value(cfg, "hub_id"), _value(cfg, "hub_config"), _value(cfg, "hub_revision")
    if hub_id is None:
        raise DataError("dataset.hub_id is not set: format=hub needs the Hub dataset's id; "
                        "set dataset.hub_id=OWNER/NAME (and dataset.hub_config=SUBSET if it has several)")
    reason = _hub_offline_reason()
    if reason is not None:
        args = repr(hub_id) + (f", {subset!r}" if subset else "") + (f", revision={revision!r}" if revision else "")
        raise DataError(
            f"dataset.hub_id={hub_id!r} cannot be loaded: this machine is offline ({reason}). Use a local copy: "
            "on a machine with network (or here, if the dataset is already in the `datasets` cache, with "
            f"HF_HUB_OFFLINE=1) export it as JSON lines with  python -c \"import datasets; "
            f"d = datasets.load_dataset({args}); [d[s].to_json(f'DIR/{{s}}.jsonl') for s in d]\"  and run "
            f"dataset=local dataset.path=DIR dataset.source_field={_value(cfg, 'source_field')} "
            f"dataset.target_field={_value(cfg, 'target_field')}, naming the files in dataset.splits "
            "(e.g. dataset.splits.dev=validation.jsonl)"
        )
    import datasets  # deferred: heavy import

    try:
        loaded = datasets.load_dataset(str(hub_id), subset, revision=revision)
    except Exception as exc:  # not found, gated, missing subset, ...: all are config problems to report
        raise DataError(
            f"datasets.load_dataset({hub_id!r}, {subset!r}, revision={revision!r}) failed: "
            f"{type(exc).__name__}: {exc}; check dataset.hub_id, dataset.hub_config (the subset) and "
            "dataset.hub_revision (a gated dataset also needs HF_TOKEN in the environment)"
        ) from exc
    if not isinstance(loaded, Mapping):  # a single split came back
        loaded = {"train": loaded}
    return loaded


def _hub_rows(cfg: Any, loaded: Mapping[str, Any], split: str, sf: str, tf: str) -> Tuple[Iterator[_Row], str]:
    """Rows of one split of a loaded Hub dataset, and its label (``hf:ID/SPLIT``) for messages."""
    hub_id = _value(cfg, "hub_id")
    available = ", ".join(loaded) or "none"
    spec = (_get(cfg, "splits") or {}).get(split)
    if spec is None:
        spec = next((name for name in _HUB_SPLITS.get(split, (split,)) if name in loaded), None)
        if spec is None:
            raise DataError(f"the Hub dataset {hub_id} has no split for '{split}' (its splits: {available}); "
                            f"set dataset.splits.{split}=NAME, or a slice such as \"train[95%:]\"")
    spec = str(spec)
    import datasets  # already imported by _load_hub

    try:
        instructions = datasets.ReadInstruction.from_spec(spec).to_absolute(
            {name: len(ds) for name, ds in loaded.items()})
    except (ValueError, KeyError, AssertionError) as exc:
        raise DataError(f"dataset.splits.{split}={spec!r} is not a split of the Hub dataset {hub_id} (its splits: "
                        f"{available}) nor a valid slice of one ({exc}); set dataset.splits.{split}=NAME or "
                        "NAME[START:END] (e.g. train[:95%])") from exc
    label = f"hf:{hub_id}/{spec}"
    parts = [loaded[i.splitname].select(range(i.from_, i.to)) if (i.from_, i.to) != (0, len(loaded[i.splitname]))
             else loaded[i.splitname] for i in instructions]
    columns = list(parts[0].column_names) if parts else []
    missing = [c for c in (sf, tf) if c not in columns]
    if missing:
        raise DataError(f"{label}: column(s) {missing} not found (columns: {columns}); configured "
                        f"dataset.source_field={sf!r}, dataset.target_field={tf!r}; "
                        "set dataset.source_field=COLUMN dataset.target_field=COLUMN")

    def rows() -> Iterator[_Row]:
        n = 0
        for part in parts:
            for source, target in zip(part[sf], part[tf]):
                n += 1
                yield n, _text(source, Path(label), n, sf), _text(target, Path(label), n, tf), None

    return rows(), label


# --------------------------------------------------------------------------- public API


def _read_split(cfg: Any, root: Any, split: str, fmt: str, policy: str, counts: Dict[str, int],
                hub: Optional[Mapping[str, Any]] = None, source_hint: Optional[str] = None,
                ) -> Tuple[List[Example], Tuple[Any, ...]]:
    sf, tf = str(_get(cfg, "source_field")), str(_get(cfg, "target_field"))
    rows: Iterable[_Row]
    files: Tuple[Any, ...]  # the split's file(s), or its "hf:ID/SPLIT" label: named in messages and origins
    if fmt == "hub":
        assert hub is not None
        rows, label = _hub_rows(cfg, hub, split, sf, tf)
        files = (label,)
    elif fmt == "jsonl":
        files = _split_files(cfg, root, split, fmt)
        rows = _jsonl_rows(files[0], sf, tf)
    elif fmt == "parallel":
        files = _split_files(cfg, root, split, fmt)
        rows = _parallel_rows(files[0], files[1])
    else:
        files = _split_files(cfg, root, split, fmt)
        delimiter = _get(cfg, "delimiter")
        if delimiter is None:
            delimiter = "," if fmt == "csv" else "\t"
        delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise DataError(f"dataset.delimiter={delimiter!r} must be one character (e.g. ',', '|', "
                            "'\\t') or null; set dataset.delimiter=...")
        rows = _csv_rows(files[0], delimiter, sf, tf, source_hint)

    swap = _get(cfg, "direction") == "text2gloss"
    out: List[Example] = []
    read = empty = malformed = 0
    for line, source, target, problem in rows:
        read += 1
        origin = f"{files[0]}:{line}"
        source, target = source.strip(), target.strip()
        if problem is None and not (source and target):
            side = "source" if not source else "target"
            field = {"source": sf, "target": tf}[side] if fmt != "parallel" else f"{side} file"
            problem = f"empty {side} ({field})"
            empty += 1
        elif problem is not None:
            malformed += 1
        if problem is not None:
            if policy == "error":
                raise DataError(f"{origin}: {problem}; fix the row or set {_DROP_HINT} to skip such rows")
            continue
        out.append(Example(target, source, origin) if swap else Example(source, target, origin))
    counts[f"rows_read_{split}"] = read
    counts[f"dropped_empty_{split}"] = empty
    counts[f"dropped_malformed_{split}"] = malformed
    return out, files


def load_splits(cfg: Any, splits: Sequence[str] = ("train", "dev", "test")
                ) -> Tuple[Dict[str, List[Example]], Dict[str, int]]:
    """Read the named splits; return ``({split: [Example]}, counts)``.

    ``counts`` (all ints, for MLflow) holds per split ``rows_read_<split>`` (rows in the file),
    ``dropped_empty_<split>``, ``dropped_malformed_<split>`` (CSV rows with a wrong field count),
    ``leak_<split>`` (dev/test rows whose exact pair is also in train), ``rows_<split>`` (returned)
    and ``dropped_leak_train``.
    """
    fmt = _choice(cfg, "format", FORMATS)
    _choice(cfg, "direction", DIRECTIONS)
    policy = _choice(cfg, "on_bad_rows", BAD_ROW_POLICIES)
    # Leakage follows on_bad_rows unless the config has an ``on_leak`` (error|drop|keep) field.
    leak_policy = _get(cfg, "on_leak") or policy
    if leak_policy not in LEAK_POLICIES:
        raise DataError(f"dataset.on_leak={leak_policy!r} is not supported; set dataset.on_leak to one of: "
                        + ", ".join(LEAK_POLICIES))
    caps = {"train": _cap(cfg, "max_train_samples"), "eval": _cap(cfg, "max_eval_samples")}
    source_hint = _check_fields(cfg) if fmt != "parallel" else None  # parallel files have no fields
    root = hub = None
    if fmt == "hub":
        hub = _load_hub(cfg)
    else:
        root = _resolve_dir(cfg)

    counts: Dict[str, int] = {}
    data: Dict[str, List[Example]] = {}
    files: Dict[str, Tuple[Any, ...]] = {}
    for split in dict.fromkeys(splits):  # unique, in order
        data[split], files[split] = _read_split(cfg, root, split, fmt, policy, counts, hub, source_hint)
        if not data[split]:
            dropped = counts[f"dropped_empty_{split}"] + counts[f"dropped_malformed_{split}"]
            why = f"all {dropped} rows were dropped as bad rows" if dropped else "it holds no rows"
            raise DataError(f"split '{split}' ({files[split][0]}) is empty: {why}; "
                            f"point dataset.splits.{split} at a {'split' if fmt == 'hub' else 'file'} with examples")

    # Cross-split leakage: a train pair (same source and same target) that is also in dev/test.
    if TRAIN in data:
        train_pairs = {(e.source, e.target): e for e in data[TRAIN]}
        eval_pairs: Dict[Tuple[str, str], Example] = {}
        for split, examples in data.items():
            if split == TRAIN:
                continue
            leaked = [e for e in examples if (e.source, e.target) in train_pairs]
            counts[f"leak_{split}"] = len(leaked)
            for e in leaked:
                eval_pairs.setdefault((e.source, e.target), e)
        leaking = [e for e in data[TRAIN] if (e.source, e.target) in eval_pairs]
        counts["dropped_leak_train"] = 0
        if leaking and leak_policy == "error":
            shown = "; ".join(f"{e.origin} = {eval_pairs[(e.source, e.target)].origin} ({e.source!r} -> "
                              f"{e.target!r})" for e in leaking[:3])
            raise DataError(
                f"{len(leaking)} train example(s) also appear with the same source and target in "
                f"{'/'.join(s for s in data if s != TRAIN)}, e.g. {shown}; remove them from the train "
                f"file {files[TRAIN][0]}, or set {_DROP_HINT} to drop them from train"
            )
        if leaking and leak_policy == "drop":
            data[TRAIN] = [e for e in data[TRAIN] if (e.source, e.target) not in eval_pairs]
            counts["dropped_leak_train"] = len(leaking)
            if not data[TRAIN]:
                raise DataError(f"split 'train' ({files[TRAIN][0]}) is empty: every example also appears "
                                "in dev/test and was dropped as leakage; fix dataset.splits")

    for split in data:
        cap = caps["train"] if split == TRAIN else caps["eval"]
        if cap is not None:
            data[split] = data[split][:cap]
        counts[f"rows_{split}"] = len(data[split])
    return data, counts


def langs(cfg: Any) -> Tuple[str, str]:
    source_lang, target_lang = _get(cfg, "source_lang"), _get(cfg, "target_lang")
    if _get(cfg, "direction") == "text2gloss":
        return target_lang, source_lang
    return source_lang, target_lang


def build_messages(source: str, cfg: Any, shots: Sequence[Example] = ()) -> List[Dict[str, str]]:
    """The chat prompt for one source sentence: [system], then k demonstration turns
    (user: a shot's source, assistant: its target) for few-shot evaluation, then the user turn."""
    source_lang, target_lang = langs(cfg)
    template = _get(cfg, "prompt")

    def user_turn(text: str) -> Dict[str, str]:
        try:
            content = template.format(source=text, source_lang=source_lang, target_lang=target_lang)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise DataError(
                f"dataset.prompt={template!r} is not a valid template ({type(exc).__name__}: {exc}); use only "
                "{source}, {source_lang} and {target_lang}, and write literal braces as {{ }}"
            ) from exc
        return {"role": "user", "content": content}

    messages: List[Dict[str, str]] = []
    system = _get(cfg, "system_prompt")
    if system is not None:
        messages.append({"role": "system", "content": str(system)})
    for shot in shots:
        messages += [user_turn(shot.source), {"role": "assistant", "content": shot.target}]
    messages.append(user_turn(source))
    return messages


def to_prompt_completion(examples: List[Example], cfg: Any):
    """A ``datasets.Dataset`` in TRL's conversational prompt-completion format.

    Columns: ``prompt`` (messages from ``build_messages``) and ``completion``
    (``[{"role": "assistant", "content": target}]``), so SFTTrainer's loss covers the completion only.
    """
    import datasets  # deferred: heavy import

    return datasets.Dataset.from_dict({
        "prompt": [build_messages(e.source, cfg) for e in examples],
        "completion": [[{"role": "assistant", "content": e.target}] for e in examples],
    })
