"""Tables and plots of a sweep or an experiment, read back from the MLflow store.

    python -m slt_hydra.report --sweep "sweep 17-05-00"        # a --multirun's parent: by run name or run id
    python -m slt_hydra.report --experiment size_precision     # every job of an MLflow experiment
    python -m slt_hydra.report --sweep RUN_ID --tracking-uri sqlite:///other.db --out DIR

Writes ``report.md`` and ``report.csv`` (one row per job, best test BLEU-4 first, with the status and the
reason of failed/invalid jobs) and three PNG plots: test BLEU-4 against peak memory with the Pareto front
(the jobs no other job beats on both), test BLEU-4 against training time, and the training-loss curves.
Only finished jobs are plotted. Files go to ``--out``, by default the sweep's directory
(``multirun/DATE/TIME/report/``) or ``outputs/reports/NAME/``; with ``--sweep`` they are also logged as
artifacts of the parent run under ``report/``.

The store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///$PWD/mlflow.db`` (as the app).
An unknown sweep or experiment, or an empty store, ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import OmegaConf

from slt_hydra.config import weights_kind
from slt_hydra.metrics import SCORES as SCORE_NAMES
from slt_hydra.tracking import STATUS_TAG, default_tracking_uri

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SWEEP_ROLE = "sweep"
SCORES = [f"test_{name}" for name in SCORE_NAMES]
# CSV column -> Markdown header; the CSV keeps machine-friendly names (metric names where there is one).
COLUMNS = [
    ("run_name", "run"),
    ("model", "model"),
    ("parameters", "parameters"),
    ("precision", "precision"),
    ("lora_rank", "LoRA r"),
    ("test_bleu1", "BLEU-1"),
    ("test_bleu2", "BLEU-2"),
    ("test_bleu3", "BLEU-3"),
    ("test_bleu4", "BLEU-4"),
    ("test_rougeL", "ROUGE-L"),
    ("test_chrf", "chrF"),
    ("zeroshot_test_bleu4", "zero-shot BLEU-4"),
    ("train_seconds", "train time (s)"),
    ("train_tokens_per_second", "tokens/s"),
    ("peak_memory_gb", "peak memory (GiB)"),
    ("status", "status"),
    ("reason", "reason"),
]
CSV_EXTRA = ["label", "run_id", "parent_run_id", "dev_bleu4", "model_memory_gb", "wall_seconds"]
PLOTS = {
    "memory": "bleu4_vs_peak_memory.png",
    "time": "bleu4_vs_train_time.png",
    "loss": "training_loss.png",
}
# Config params that say nothing about a job's settings (paths the run picked, names it was given).
NOT_SETTINGS = {"output_dir", "cache_dir", "mlflow.run_name", "mlflow.tracking_uri"}
MAX_LABEL_KEYS = 4
LEADER = dict(arrowstyle="-", color="0.45", linewidth=0.6, shrinkA=0, shrinkB=4)  # label -> its point


class ReportError(Exception):
    """Something the user fixes by changing the command: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- reading the store


def check_store_exists(uri: str) -> None:
    """A missing SQLite file or store folder is an error, not a new empty store (MLflow would create one)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path}: run a sweep first (python -m slt_hydra --multirun ...), "
                              "or point --tracking-uri / MLFLOW_TRACKING_URI at your store")
    elif uri.startswith("file:") or "://" not in uri:  # a file store: a folder
        path = Path(re.sub(r"^file:(//)?", "", uri))
        if not path.is_dir():
            raise ReportError(f"no MLflow store at {path}: point --tracking-uri / MLFLOW_TRACKING_URI at your store")


def quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def search_all(client, experiment_ids: Sequence[str], filter_string: str = "", order_by=None) -> list:
    """Every matching run, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiments_with_runs(client) -> list:
    experiments = client.search_experiments()
    if not experiments or not client.search_runs([e.experiment_id for e in experiments], max_results=1):
        raise ReportError(f"the MLflow store {client.tracking_uri} has no runs yet: "
                          "run an experiment or a sweep first (python -m slt_hydra --multirun ...)")
    return experiments


def find_sweep(client, key: str):
    """The parent run of a --multirun, by run id or by run name (the latest of that name)."""
    from mlflow.exceptions import MlflowException

    experiments = experiments_with_runs(client)
    ids = [e.experiment_id for e in experiments]
    if re.fullmatch(r"[0-9a-f]{32}", key):
        try:
            run = client.get_run(key)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get("slt.role") != SWEEP_ROLE:
                raise ReportError(f"run {key} ({run.info.run_name}) is not the parent run of a sweep: "
                                  "pass a sweep's run id or name, or use --experiment")
            return run
    names = [key] if key.startswith("sweep ") else [key, f"sweep {key}"]
    for name in names:
        found = client.search_runs(ids, filter_string=f"tags.`slt.role` = '{SWEEP_ROLE}' and "
                                   f"attributes.run_name = {quote(name)}",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            return found[0]
    recent = client.search_runs(ids, filter_string=f"tags.`slt.role` = '{SWEEP_ROLE}'",
                                order_by=["attributes.start_time DESC"], max_results=5)
    known = ", ".join(f"'{r.info.run_name}'" for r in recent) or "none"
    raise ReportError(f"no sweep named or with run id '{key}' in {client.tracking_uri} (latest sweeps: {known})")


def find_experiment(client, name: str):
    experiments = experiments_with_runs(client)
    for experiment in experiments:
        if experiment.name == name:
            return experiment
    known = ", ".join(sorted(f"'{e.name}'" for e in experiments))
    raise ReportError(f"no MLflow experiment '{name}' in {client.tracking_uri} (experiments: {known})")


# --------------------------------------------------------------------------- one row per job


@dataclass
class Job:
    run_id: str
    run_name: str
    parent_run_id: str
    status: str
    reason: str
    model: str
    parameters: str
    param_count: float | None
    precision: str
    lora_rank: str
    metrics: dict[str, float]
    settings: dict[str, str]  # the job's flattened config (dotted params)
    start_time: int
    label: str = ""
    loss: list[tuple[int, float]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def value(self, column: str) -> Any:
        if column in self.metrics:
            return self.metrics[column]
        return getattr(self, column, "")


def clean_reason(error: str) -> str:
    """'SetupError: this experiment cannot run as configured:\n  - a.\n  - b' -> 'a; b'."""
    text = re.sub(r"^(SetupError|slt_hydra):\s*", "", error.strip())
    text = re.sub(r"^this experiment cannot run as configured:", "", text)
    parts = [re.sub(r"\s+", " ", p).strip().rstrip(";") for p in re.split(r"(?:^|\n)\s*-\s+", text.strip())]
    out = ""
    for part in filter(None, parts):
        out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


def human_count(count: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(int(count))


def job_from_run(run) -> Job:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    status = tags.get(STATUS_TAG) or run.info.status.lower()
    if status == "finished" and run.info.status != "FINISHED":
        status = run.info.status.lower()
    reason = clean_reason(tags.get("slt.error", "")) if status != "finished" else ""
    if status == "running" and not reason:
        reason = "still running (or the process died without closing its run)"

    model = tags.get("model") or params.get("model.name") or tags.get("choice.model", "")
    if model == "local" and params.get("model.path"):
        model = f"local:{Path(params['model.path']).name}"
    if tags.get("param_count"):
        count: float | None = float(tags["param_count"])
        parameters = human_count(count)
    elif params.get("model.params_b") not in (None, "", "None"):
        count = float(params["model.params_b"]) * 1e9
        parameters = f"~{human_count(count)}"  # from the config: the model was never loaded
    else:
        count, parameters = None, ""
    precision = tags.get("precision") or logged_weights_kind(params) or tags.get("choice.quant", "")
    if "lora_r" in tags:
        rank = tags["lora_r"]
    elif params.get("lora.enabled") == "False":
        rank = "full"
    else:
        rank = params.get("lora.r", "")
    settings = {k: v for k, v in params.items() if "." in k and k not in NOT_SETTINGS}
    return Job(run.info.run_id, run.info.run_name or run.info.run_id, tags.get("mlflow.parentRunId", ""), status,
               reason, model, parameters, count, precision, rank, dict(metrics), settings, run.info.start_time or 0)


def logged_weights_kind(params: dict[str, str]) -> str:
    """config.weights_kind of a job's logged config, for jobs refused before the precision tag was set."""
    def value(key: str):
        text = params.get(key)
        return None if text in (None, "", "None") else text

    if value("hardware.dtype") is None and value("quant.weights_dtype") is None \
            and "True" not in (params.get("quant.load_in_4bit"), params.get("quant.load_in_8bit")):
        return params.get("quant.name", "")  # hardware=auto never resolved: all that is known is the option
    logged = OmegaConf.create({"quant": {"load_in_4bit": params.get("quant.load_in_4bit") == "True",
                                         "load_in_8bit": params.get("quant.load_in_8bit") == "True",
                                         "weights_dtype": value("quant.weights_dtype")},
                               "hardware": {"dtype": value("hardware.dtype")}})
    return weights_kind(logged)


def varying_settings(jobs: Sequence[Job]) -> list[str]:
    """Config keys whose value differs between jobs; a group's other keys are dropped when its name varies
    (model=a vs model=b already says that hub_id, params_b, ... differ)."""
    keys = sorted({k for job in jobs for k in job.settings})
    varying = [k for k in keys if len({job.settings[k] for job in jobs if k in job.settings}) > 1]
    named = {k.rsplit(".", 1)[0] for k in varying if k.endswith(".name")}
    return [k for k in varying if k.endswith(".name") or k.split(".", 1)[0] not in named]


def assign_labels(jobs: Sequence[Job]) -> None:
    """Short, unique labels for tables and plots: the settings that differ between the jobs."""
    keys = varying_settings(jobs)
    for job in jobs:
        if not keys or len(keys) > MAX_LABEL_KEYS:
            job.label = job.run_name
            continue
        parts = []
        for key in keys:
            value = job.settings.get(key, "?")
            if key == "model.name":
                parts.append(value)  # the model needs no key
            else:
                parts.append(f"{key.split('.', 1)[0]}={value}" if key.endswith(".name") else f"{key}={value}")
        job.label = ", ".join(parts)
    seen: dict[str, int] = {}
    for job in sorted(jobs, key=lambda j: j.start_time):
        seen[job.label] = seen.get(job.label, 0) + 1
        if seen[job.label] > 1:
            job.label = f"{job.label} #{seen[job.label]}"


def sort_jobs(jobs: Iterable[Job]) -> list[Job]:
    def key(job: Job):
        bleu = job.metrics.get("test_bleu4")
        return (bleu is None, -(bleu or 0.0), not job.finished, job.label)

    return sorted(jobs, key=key)


def load_jobs(client, runs: Sequence, with_loss: bool = True) -> list[Job]:
    jobs = [job_from_run(run) for run in runs]
    assign_labels(jobs)
    if with_loss:
        for job in jobs:
            if job.finished and "loss" in job.metrics:
                history = client.get_metric_history(job.run_id, "loss")
                job.loss = sorted((m.step, m.value) for m in history if math.isfinite(m.value))
    return sort_jobs(jobs)


# --------------------------------------------------------------------------- tables


def fmt(column: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        if column == "train_tokens_per_second":
            return f"{value:.0f}"
        if column in ("train_seconds", "wall_seconds"):
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def write_csv(path: Path, jobs: Sequence[Job]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        names = [c for c, _ in COLUMNS] + CSV_EXTRA
        writer.writerow(names)
        for job in jobs:
            row = []
            for name in names:
                if name == "parameters":
                    value = int(job.param_count) if job.param_count is not None else ""
                else:
                    value = job.value(name)
                row.append("" if value is None else value)
            writer.writerow(row)


def md_cell(text: str, limit: int = 0) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def write_markdown(path: Path, title: str, facts: list[str], jobs: Sequence[Job], plot_notes: list[str]) -> None:
    finished = [j for j in jobs if j.finished]
    others = [j for j in jobs if not j.finished]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    lines = [f"# {title}", ""]
    lines += [f"- {fact}" for fact in facts]
    lines.append(f"- jobs: {len(jobs)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
    scored = [j for j in finished if "test_bleu4" in j.metrics]
    if scored:
        best = scored[0]
        lines.append(f"- best test BLEU-4: **{best.metrics['test_bleu4']:.2f}**, `{md_cell(best.label)}` "
                     f"(run `{best.run_id}`)")
    lines += ["", "## Results (test split, sorted by BLEU-4)", "",
              "Scores are corpus-level sacreBLEU / chrF and sentence-averaged ROUGE-L F1, 0-100; zero-shot = the "
              "same model before fine-tuning. Train time is the Trainer's runtime; tokens/s counts non-padding "
              "training tokens; peak memory is the job's peak RSS on CPU (peak allocated on CUDA). `~` parameter "
              "counts come from the config (the model was never loaded). Full run names and ids: `report.csv`.",
              ""]
    headers = [h for _, h in COLUMNS]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if c in ("run_name", "model", "precision", "status", "reason") else "---:"
                                for c, _ in COLUMNS) + "|")
    for job in jobs:
        cells = []
        for column, _ in COLUMNS:
            if column == "run_name":
                cells.append(md_cell(job.label, 80))
            elif column == "reason":
                cells.append(md_cell(job.reason, 160))
            else:
                cells.append(md_cell(fmt(column, job.value(column))))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    lines += plot_notes
    if others:
        lines += ["", "Left out of the plots (not finished): " + ", ".join(
            f"`{md_cell(j.label, 80)}` ({j.status})" for j in others) + "."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- plots


def pareto_front(points: Sequence[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """Points (memory, bleu, key) that no other point beats on both: less (or equal) memory and higher BLEU."""
    front, best = [], -math.inf
    for x, y, key in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, key))
            best = y
    return front


def colours(jobs: Sequence[Job]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(jobs) <= 10 else "tab20"]
    return {job.run_id: cmap(i % cmap.N) for i, job in enumerate(jobs)}


def empty_plot(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=11, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def text_box(label, renderer) -> tuple[float, float, float, float]:
    """Display extent of an annotation's text alone (Annotation.get_window_extent adds its leader line)."""
    from matplotlib.text import Text

    label.update_positions(renderer)
    extent = Text.get_window_extent(label, renderer)
    return extent.x0 - 2, extent.y0 - 2, extent.x1 + 2, extent.y1 + 2


def annotate(ax, points: Sequence[tuple[float, float, str]]) -> None:
    """Label each point beside it, at the first of a few spots where the label overlaps no other label,
    no other point and stays inside the axes (greedy, in display coordinates)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    markers = [to_display((x, y)) for x, y, _ in points]
    marker_boxes = [(mx - 13, my - 13, mx + 13, my + 13) for mx, my in markers]  # incl. the front's rings
    frame = ax.get_window_extent(renderer)
    taken: list[tuple[float, float, float, float]] = []
    spots = [(10, 6, "left"), (-10, 6, "right"), (10, -16, "left"), (-10, -16, "right"), (10, 20, "left"),
             (-10, 20, "right"), (0, 16, "center"), (0, -24, "center"), (14, 34, "left"), (-14, 34, "right"),
             (14, -30, "left"), (-14, -30, "right"), (18, 48, "left"), (-18, 48, "right")]

    def clear(box, own) -> bool:
        x0, y0, x1, y1 = box
        if x0 < frame.x0 or x1 > frame.x1 or y0 < frame.y0 or y1 > frame.y1:
            return False
        others = taken + [b for i, b in enumerate(marker_boxes) if i != own]
        return all(x1 < a0 or x0 > a1 or y1 < b0 or y0 > b1 for a0, b0, a1, b1 in others)

    for i, (x, y, text) in enumerate(points):
        label = None
        for dx, dy, align in spots:
            if label is not None:
                label.remove()
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=align,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
                                arrowprops=LEADER)
            box = text_box(label, renderer)
            if clear(box, i):
                break
        else:  # nowhere is free: keep the first spot (readable in the legend anyway)
            label.remove()
            dx, dy, align = spots[0]
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=align,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
                                arrowprops=LEADER)
            box = text_box(label, renderer)
        taken.append(box)


def scatter_plot(path: Path, jobs: Sequence[Job], colour: dict, x_metric: str, x_label: str, title: str,
                 with_front: bool) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    usable = [j for j in jobs if j.finished and math.isfinite(j.metrics.get("test_bleu4", math.nan))
              and math.isfinite(j.metrics.get(x_metric, math.nan))]
    fig, ax = plt.subplots(figsize=(10, 5.8), dpi=120)
    note = ""
    if not usable:
        empty_plot(ax, f"no finished job with test BLEU-4 and {x_label.split(' (')[0].lower()}")
        note = "(no finished job to plot)"
        ax.set_xlabel(x_label)
        ax.set_ylabel("test BLEU-4 (sacreBLEU, 0-100; higher is better)")
    else:
        points = [(j.metrics[x_metric], j.metrics["test_bleu4"], j) for j in usable]
        for x, y, job in points:
            ax.scatter([x], [y], s=70, color=colour[job.run_id], edgecolor="black", linewidth=0.6, zorder=3,
                       label=job.label)
        handles, labels = ax.get_legend_handles_labels()
        if with_front:
            front = pareto_front(points)
            fx, fy = [p[0] for p in front], [p[1] for p in front]
            ax.plot(fx, fy, linestyle="--", color="black", linewidth=1.2, zorder=2, drawstyle="steps-post")
            ax.scatter(fx, fy, s=260, facecolors="none", edgecolors="crimson", linewidth=2, zorder=4)
            handles.append(Line2D([], [], color="black", linestyle="--", marker="o", markersize=14,
                                  markerfacecolor="none", markeredgecolor="crimson", markeredgewidth=2))
            labels.append("Pareto front: no other job has\nhigher BLEU-4 with less memory")
            note = "Pareto front: " + ", ".join(f"`{md_cell(p[2].label, 80)}`" for p in front) + "."
        top = max(p[1] for p in points)
        top = max(top * 1.2, top + 1.0)
        ax.set_ylim(bottom=-0.03 * top, top=top)  # 0 is BLEU's floor; the margin keeps points off the axis
        low, high = min(p[0] for p in points), max(p[0] for p in points)
        if low > 0 and high / low > 8:  # sizes spanning orders of magnitude: a log axis keeps small ones apart
            ax.set_xscale("log")
            ax.set_xlim(low / 1.6, high * 2.2)
            ax.set_xlabel(f"{x_label}, log scale")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            high = high * 1.3 if high > 0 else 1.0
            ax.set_xlim(left=-0.02 * high, right=high)
            ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        ax.legend(handles, labels, title="job (finished)", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=8, title_fontsize=9, frameon=False)
        ax.set_ylabel("test BLEU-4 (sacreBLEU, 0-100; higher is better)")
        ax.set_title(title, fontsize=11)
        fig.tight_layout()  # final layout first: labels are placed in display coordinates
        annotate(ax, [(x, y, job.label) for x, y, job in points])
    ax.set_title(title, fontsize=11)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return note


def loss_plot(path: Path, jobs: Sequence[Job], colour: dict, title: str) -> str:
    import matplotlib.pyplot as plt

    curves = [j for j in jobs if j.finished and j.loss]
    fig, ax = plt.subplots(figsize=(10, 5.8), dpi=120)
    if not curves:
        empty_plot(ax, "no finished job logged a training loss")
        note = "(no training-loss history to plot)"
    else:
        from matplotlib.ticker import MaxNLocator

        styles = ["-", "--", "-.", ":"]  # identical curves (same seed) stay visible on top of each other
        for i, job in enumerate(curves):
            steps, values = zip(*job.loss)
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, linewidth=1.6,
                    linestyle=styles[i % len(styles)], color=colour[job.run_id], label=job.label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(True, alpha=0.3)
        ax.legend(title="job (finished)", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  title_fontsize=9, frameon=False)
        note = ""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy per translation token)")
    ax.set_title(title, fontsize=11)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return note


def make_plots(out: Path, jobs: Sequence[Job], scope: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    colour = colours(jobs)
    notes = []
    n = scope
    memory = scatter_plot(out / PLOTS["memory"], jobs, colour, "peak_memory_gb", "peak memory (GiB)",
                          f"Test BLEU-4 vs peak memory: {n}", with_front=True)
    notes += [f"![test BLEU-4 vs peak memory]({PLOTS['memory']})", "",
              "Test BLEU-4 against the job's peak memory; the ringed points on the dashed line are the Pareto "
              f"front. {memory}", ""]
    time_note = scatter_plot(out / PLOTS["time"], jobs, colour, "train_seconds", "training time (s)",
                             f"Test BLEU-4 vs training time: {n}", with_front=False)
    notes += [f"![test BLEU-4 vs training time]({PLOTS['time']})", "",
              f"Test BLEU-4 against training time (evaluation-only jobs have none). {time_note}", ""]
    loss_note = loss_plot(out / PLOTS["loss"], jobs, colour, f"Training loss: {n}")
    notes += [f"![training loss]({PLOTS['loss']})", "", f"Training loss as logged by the Trainer. {loss_note}"]
    return notes


# --------------------------------------------------------------------------- the command


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "report"


def build(args: argparse.Namespace) -> tuple[Path, list[Path], str | None]:
    from mlflow.tracking import MlflowClient

    uri = default_tracking_uri(args.tracking_uri)
    check_store_exists(uri)
    client = MlflowClient(uri)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parent_id = best_child = None
    if args.sweep is not None:
        parent = find_sweep(client, args.sweep)
        parent_id = parent.info.run_id
        experiment = client.get_experiment(parent.info.experiment_id)
        runs = search_all(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
        name = parent.info.run_name
        title = f"Sweep report: {name}"
        facts = [f"MLflow experiment `{experiment.name}`, parent run `{parent_id}`, store `{uri}`",
                 f"sweep overrides: `{parent.data.params.get('sweep.overrides', '') or '(none)'}`"]
        best_child = parent.data.tags.get("slt.best_child")
        sweep_dir = Path(parent.data.tags.get("slt.sweep_dir", ""))
        default_out = sweep_dir / "report" if parent.data.tags.get("slt.sweep_dir") and sweep_dir.is_dir() \
            else Path("outputs") / "reports" / slug(name)
        scope = f"{name} ({experiment.name})"
    else:
        experiment = find_experiment(client, args.experiment)
        runs = [r for r in search_all(client, [experiment.experiment_id])
                if r.data.tags.get("slt.role") != SWEEP_ROLE]
        title = f"Experiment report: {experiment.name}"
        sweeps = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
        facts = [f"MLflow experiment `{experiment.name}` (id {experiment.experiment_id}), store `{uri}`",
                 f"single runs and the jobs of {len(sweeps)} sweep(s)"]
        default_out = Path("outputs") / "reports" / slug(experiment.name)
        scope = f"experiment {experiment.name}"
    facts.append(f"generated {stamp} by `python -m slt_hydra.report`")
    if not runs:
        what = f"sweep '{args.sweep}'" if args.sweep is not None else f"experiment '{args.experiment}'"
        raise ReportError(f"the {what} has no job runs yet in {uri}")

    jobs = load_jobs(client, runs)
    if args.sweep is not None and best_child:
        objective = next((k[5:] for k in parent.data.metrics if k.startswith("best_")), "its objective")
        label = next((j.label for j in jobs if j.run_id == best_child), best_child)
        facts.insert(2, f"the sweep's own pick (by {objective}): `{label}`")
    out = Path(args.out) if args.out else default_out
    out.mkdir(parents=True, exist_ok=True)
    notes = make_plots(out, jobs, scope)
    write_csv(out / "report.csv", jobs)
    write_markdown(out / "report.md", title, facts, jobs, notes)
    files = [out / "report.md", out / "report.csv"] + [out / name for name in PLOTS.values()]
    if parent_id is not None:
        for file in files:
            client.log_artifact(parent_id, str(file), "report")
    return out, files, parent_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slt_hydra.report",
        description="Table (Markdown + CSV) and plots of a sweep or an experiment from the MLflow store.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", metavar="NAME_OR_ID",
                       help="a --multirun's parent run: its run id, or its run name such as 'sweep 17-05-00' "
                            "(the latest of that name)")
    which.add_argument("--experiment", metavar="NAME", help="an MLflow experiment: all its jobs (single runs and "
                                                            "sweep children)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the sweep's directory + /report, "
                                                     "else outputs/reports/NAME)")
    args = parser.parse_args(argv)
    try:
        out, files, parent_id = build(args)
    except ReportError as error:
        print(f"slt_hydra.report: {error}", file=sys.stderr)
        return 2
    print(f"report written to {out}/: " + ", ".join(f.name for f in files))
    if parent_id:
        print(f"logged as artifacts of the sweep's parent run {parent_id} under report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
