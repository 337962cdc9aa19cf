"""Overhead of the suite: where a `python -m slt_hydra` job's wall time goes, and time to the first optimizer step.

    python -m benchmarks.bench_overhead --steps 9 --eval-samples 50   # shortened (what make bench runs)
    python -m benchmarks.bench_overhead                  # the whole default job, as `make run` runs it (~5 min)

The job runs as a subprocess (under ``python -X importtime``) in a temporary folder with its own MLflow store.
The parent timestamps the job's output as it arrives (the training progress bar's ``0/N`` and ``1/N``: training
start and the end of the first optimizer step), then reads the run from MLflow: the durations the job logs
(``model_load_seconds``, ``train_seconds``, ``*_translations_per_second``, ``eval_runtime``) and the metrics'
timestamps for the rest.
A shortened job (one epoch of --steps steps, --eval-samples dev/test sentences) is also scaled up to the
default job (38 steps, 100 + 100 sentences): training, generation and dev-loss evaluation grow with the data,
the suite's own overhead does not. Of the suite's phases, the seconds the job spent importing the packages a plain
TRL + PEFT script imports too (torch, transformers, TRL, PEFT, datasets and what they import) are counted from the
job's own ``-X importtime`` lines, in the same process, so the machine's speed that moment weighs on both sides;
so are the seconds of TRL's ``SFTTrainer(...)`` construction, which the job times (``trainer_setup_seconds``).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import ROOT, child_env, fmt, shortened


def run_job(overrides: list[str], workdir: Path, log=None, importtime: bool = False) -> dict:
    """Run the job, timestamping its progress bar; return wall time, marks and the MLflow run's data
    (``importtime``: under `python -X importtime`, with the seconds each module's import took)."""
    workdir.mkdir(parents=True, exist_ok=True)
    init_store(workdir)
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "slt_hydra", *overrides]
    started_wall, started = time.time(), time.perf_counter()
    proc = subprocess.Popen(command, cwd=workdir, env=child_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    marks: dict[str, float] = {}
    chunks: list[bytes] = []

    def read() -> None:  # tqdm redraws with \r, so scan raw bytes rather than lines
        tail = b""
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            now = time.perf_counter() - started
            chunks.append(chunk)
            text = (tail + chunk).decode("utf-8", "replace")
            for match in re.finditer(r"\| *(\d+)/(\d+) \[", text):
                done, total = int(match.group(1)), int(match.group(2))
                key = f"{total}:{done}"
                marks.setdefault(key, now)
            tail = chunk[-64:]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait()
    wall = time.perf_counter() - started
    reader.join(timeout=10)
    output = b"".join(chunks).decode("utf-8", "replace")
    imports = import_self_seconds(output)
    output = IMPORT_LINE.sub("", output)
    if log is not None:
        log.write(f"$ {' '.join(command)}\n{output}\n")
    if code != 0:
        raise RuntimeError(f"python -m slt_hydra {' '.join(overrides)} failed (exit {code}):\n"
                           + "\n".join(output.strip().splitlines()[-25:]))
    return {"wall": wall, "started_wall": started_wall, "marks": marks, "run": read_run(workdir), "imports": imports}


# `-X importtime` writes one line per module: self and cumulative microseconds, the name indented two spaces a level
# below the import the code asked for (a module's line comes after those of the modules it imported)
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \| ( *)([\w.]+)\n?")


def import_self_seconds(output: str) -> list[tuple[str, float, str]]:
    """[(module, seconds its own import took, the top-level import that loaded it)] from a process's
    `-X importtime` lines, in the order they finished."""
    rows: list[tuple[str, float, str]] = []
    pending: list[tuple[str, float]] = []
    for micro, indent, name in IMPORT_LINE.findall(output):
        pending.append((name, int(micro) / 1e6))
        if not indent:  # a top-level import: it and the deeper lines before it
            rows += [(module, seconds, name) for module, seconds in pending]
            pending = []
    return rows


def init_store(workdir: Path) -> None:
    """Create the MLflow store's tables first, as after a first run (a new SQLite store takes seconds to set up)."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_experiments()


def read_run(workdir: Path) -> dict:
    """The job's single MLflow run: start/end, every metric with its (first/last) timestamp, tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    run = runs[0]
    metrics = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        history = sorted(history, key=lambda m: (m.timestamp, m.step))
        metrics[key] = {"value": history[-1].value, "last_ts": history[-1].timestamp / 1000,
                        "history": [(m.timestamp / 1000, m.value) for m in history]}
    return {"start": run.info.start_time / 1000, "end": (run.info.end_time or 0) / 1000, "metrics": metrics,
            "status": run.info.status, "tags": dict(run.data.tags)}


# The suite's own time (everything that is not model load, generation, training or dev-loss evaluation).
OVERHEAD = ("startup", "setup", "trainer_setup", "checkpoint", "after", "exit")
LABELS = {
    "startup": "start-up: imports, composition, validation, data (process start -> MLflow run open)",
    "setup": "job set-up: config and tags to MLflow, torch/transformers/TRL imports (-> model load starts)",
    "load": "model load from the local cache",
    "generation": "generation: zero-shot test, dev and test translations",
    "trainer_setup": "trainer set-up: tokenizing the data, wrapping the model with LoRA",
    "train": "training steps",
    "eval": "dev-loss evaluations (before training, at the epoch end, after)",
    "checkpoint": "checkpoint save + best-checkpoint reload (inside train())",
    "after": "saving the adapter, scoring, predictions, MLflow logging",
    "exit": "process exit after the MLflow run ends",
}


def phases(job: dict, train_steps: int) -> dict:
    """Split the job's wall time into phases, from the durations it logged and its metrics' timestamps.

    Timestamps are seconds since process start. The job's order: set-up, model load, zero-shot translation,
    trainer set-up, dev loss, train() (steps, epoch-end evaluation, checkpoint, reload), dev loss, adapter saved,
    dev and test translated and scored, run closed."""
    m = job["run"]["metrics"]
    value = lambda key: m[key]["value"] if key in m else 0.0  # noqa: E731
    at = lambda key: m[key]["last_ts"] - job["started_wall"] if key in m else None  # noqa: E731
    generation = {}
    for key in m:
        if key.endswith("_translations_per_second") and m[key]["value"]:
            split = key[: -len("_translations_per_second")]
            generation[split] = value(f"data_rows_{split.split('_')[-1]}") / m[key]["value"]
    evals = [(t - job["started_wall"], v) for t, v in m.get("eval_runtime", {}).get("history", [])]
    train_end = at("train_seconds")
    train_begin = train_end - value("train_seconds") if train_end is not None else None
    in_train = [v for t, v in evals if train_begin is not None and train_begin <= t <= train_end]
    before = [v for t, v in evals if train_begin is not None and t < train_begin]
    last_step = job["marks"].get(f"{train_steps}:{train_steps}")
    seconds = {"startup": job["run"]["start"] - job["started_wall"], "load": value("model_load_seconds"),
               "generation": sum(generation.values()), "eval": sum(v for _, v in evals)}
    seconds["setup"] = (at("model_load_seconds") or 0.0) - seconds["load"] - seconds["startup"]
    # train(): its steps up to the last progress mark, then the epoch-end evaluation, checkpoint and reload
    tail = max(0.0, train_end - last_step - sum(in_train)) if last_step is not None and train_end else 0.0
    seconds["checkpoint"] = tail
    seconds["train"] = value("train_seconds") - sum(in_train) - tail
    # between the zero-shot translation (or the model load) and the first dev-loss evaluation's start
    previous = at("zeroshot_test_translations_per_second") or at("model_memory_gb") or 0.0
    first_eval_start = (at("zeroshot_dev_loss") - before[0]) if before and at("zeroshot_dev_loss") else train_begin
    seconds["trainer_setup"] = max(0.0, (first_eval_start or previous) - previous)
    run_end = job["run"]["end"] - job["started_wall"] if job["run"]["end"] else job["wall"]
    seconds["exit"] = max(0.0, job["wall"] - run_end)
    seconds["after"] = job["wall"] - sum(seconds.values())
    wall = job["wall"]
    outside = wall - seconds["train"] - seconds["generation"]
    suite = sum(seconds[k] for k in OVERHEAD)
    return {
        "wall_seconds": wall,
        "phases": {key: seconds[key] for key in LABELS},
        "labels": LABELS,
        "overhead_keys": list(OVERHEAD),
        "generation_by_split": generation,
        "model_load_seconds": seconds["load"],
        "outside_share": outside / wall,
        "suite_overhead_seconds": suite,
        "suite_overhead_share": suite / wall,
        "time_to_train_start": job["marks"].get(f"{train_steps}:0"),
        "time_to_first_step_end": job["marks"].get(f"{train_steps}:1"),
        "job_wall_seconds_logged": value("wall_seconds"),
        "rows": {split: (value(f"data_rows_{split}"), value(f"data_rows_read_{split}"))
                 for split in ("train", "dev", "test")},
    }


def default_job_estimate(result: dict, train_steps: int, default_steps: int, shared: float) -> dict:
    """The default job's phases from a shortened run: training scaled to the default's steps, generation and
    dev-loss evaluation to the full dev/test splits, everything else (the suite's overhead, model load) as
    measured, since it does not grow with the data."""
    phases, rows = dict(result["phases"]), result["rows"]
    scale = {split: (read / used if used else 1.0) for split, (used, read) in rows.items()}
    phases["train"] *= default_steps / train_steps
    phases["generation"] = sum(seconds * scale["test" if split.endswith("test") else "dev"]
                               for split, seconds in result["generation_by_split"].items())
    phases["eval"] *= scale["dev"]
    wall = sum(phases.values())
    suite = sum(phases[k] for k in OVERHEAD)
    return {"phases": phases, "wall_seconds": wall, "suite_overhead_share": suite / wall,
            "own_overhead_share": (suite - shared) / wall,
            "outside_share": (wall - phases["train"] - phases["generation"]) / wall, "steps": default_steps}


# What a plain TRL + PEFT training script imports too (MLflow is not among them: its cost counts as ours).
IMPORTS = "import torch; from transformers import Trainer; from trl import SFTTrainer; import peft, datasets"


def training_stack(workdir: Path) -> tuple[set[str], float]:
    """(the modules importing the training stack loads, seconds it took) in a fresh interpreter."""
    code = (f"import json, sys, time; t = time.perf_counter(); {IMPORTS}; seconds = time.perf_counter() - t; "
            "print(json.dumps([seconds, sorted(sys.modules)]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=child_env(workdir), capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"importing the training stack failed: {proc.stderr.strip()[-2000:]}")
    seconds, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    return set(modules), seconds


def split_imports(imports: list[tuple[str, float, str]], stack: set[str]) -> tuple[float, dict[str, dict]]:
    """(seconds the job spent importing the modules the training stack's imports load, the job's other imports
    grouped by the top-level package whose import loaded them: {package: {"seconds": s, "inside": {package: s}}},
    biggest first). An import the suite asks for counts whole, whatever it drags in that the training stack
    does not load itself (rouge_score: nltk, and through nltk scipy.stats and scikit-learn). The stack's modules
    are imported before the model loads, inside the suite's phases; what the libraries load later, on first use
    (a model's modeling file, generation), falls in the load and generation phases and is in neither figure."""
    packages = {name.split(".")[0] for name in stack}
    library, own = 0.0, {}
    for module, seconds, root in imports:
        if module in stack:
            library += seconds
        elif (package := root.split(".")[0]) not in packages:
            entry = own.setdefault(package, {"seconds": 0.0, "inside": {}})
            entry["seconds"] += seconds
            top = module.split(".")[0]
            entry["inside"][top] = entry["inside"].get(top, 0.0) + seconds
    for entry in own.values():
        entry["inside"] = dict(sorted(entry["inside"].items(), key=lambda item: -item[1]))
    return library, dict(sorted(own.items(), key=lambda item: -item[1]["seconds"]))


def calibration_seconds(workdir: Path) -> dict[str, float]:
    """What hardware=auto's two measurements take on a machine's first run (later runs read them from the cache):
    the precision calibration at the default job's shape and the attention timing at its batch, heads and length,
    each timed in a fresh process after torch is imported."""
    code = (
        "import json, time, torch\n"
        "from slt_hydra.precision import measure, measure_attention\n"
        "t = time.perf_counter(); measure(16 * 48, 576, 1536); precision = time.perf_counter() - t\n"
        "t = time.perf_counter(); measure_attention(16, 9, 3, 48, 64, bf16=True); attention = time.perf_counter() - t\n"
        "print(json.dumps({'precision': precision, 'attention': attention}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=child_env(workdir), capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"timing the calibration failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(steps: int | None, eval_samples: int | None, workdir: Path, log=None) -> dict:
    """Run the (possibly shortened) default job once and break its wall time down."""
    overrides = [f"hydra.run.dir={workdir / 'job'}"]
    if steps:
        overrides += [*shortened(steps), f"dataset.max_train_samples={steps * 16}"]
    if eval_samples:
        overrides += [f"dataset.max_eval_samples={eval_samples}"]
    print(f"  overhead: python -m slt_hydra {' '.join(overrides[1:]) or '(default job)'}", flush=True)
    job = run_job(overrides, workdir, log=log, importtime=True)
    train_steps = steps or _default_steps()
    result = phases(job, train_steps)
    stack, fresh_seconds = training_stack(workdir)
    imports, own_imports = split_imports(job["imports"], stack)
    # What a plain TRL script pays as well, inside the suite's phases: importing the training stack, and TRL's
    # SFTTrainer being built (it tokenizes the data and wraps the model with LoRA; the job times the call)
    trainer_init = min(job["run"]["metrics"].get("trainer_setup_seconds", {}).get("value", 0.0),
                       result["phases"]["trainer_setup"])
    shared = imports + trainer_init
    result.update(overrides=overrides[1:], adapter=str(workdir / "job" / "adapter"), train_steps=train_steps,
                  library_imports_seconds=imports, library_imports_fresh_seconds=fresh_seconds,
                  trainer_init_seconds=trainer_init, shared_seconds=shared,
                  own_imports_seconds=own_imports, calibration_seconds=calibration_seconds(workdir),
                  calibration_cached={key: job["run"]["tags"].get(f"{key}_cached") == "true"
                                      for key in ("cpu_precision", "train_attention")},
                  own_overhead_share=(result["suite_overhead_seconds"] - shared) / result["wall_seconds"],
                  default_job=default_job_estimate(result, train_steps, _default_steps(), shared))
    print(f"    wall {fmt(result['wall_seconds'], 1)} s, outside training+generation "
          f"{fmt(100 * result['outside_share'], 1)} %, model load {fmt(result['model_load_seconds'])} s, "
          f"first step done at {fmt(result['time_to_first_step_end'], 1)} s", flush=True)
    return result


def _default_steps() -> int:
    """Optimizer steps of the default job: one epoch of the demo train split at the CPU profile's batch."""
    rows = sum(1 for line in (ROOT / "slt_hydra" / "resources" / "demo" / "train.jsonl").open() if line.strip())
    return -(-rows // 16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="shorten training to N steps of 16 (default: none)")
    parser.add_argument("--eval-samples", type=int, default=None, help="dev/test sentences (default: all)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_"))
    result = benchmark(args.steps, args.eval_samples, workdir / "overhead")
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
