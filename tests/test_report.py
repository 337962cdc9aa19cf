"""Sweeps and reports: `python -m slt_hydra.report` on a real tiny sweep, the submitit launcher, and the
named sweep experiments (composed and expanded, not run)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient

from conftest import CONF, app_env, compose_config, read_rows, run_app, sweep_parent_and_children, tiny_args
from slt_hydra import report

PLOTS = ["bleu4_vs_peak_memory.png", "bleu4_vs_train_time.png", "training_loss.png"]


def store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def sweep_runs(folder: Path):
    client = MlflowClient(store(folder))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent, children = sweep_parent_and_children(runs)
    return client, parent, children


@pytest.fixture(scope="module")
def tiny_sweep(tiny_model, tmp_path_factory) -> Path:
    """A real sweep on the tiny model: quant=none and 8bit train; fp16 is refused on CPU (an invalid job)."""
    folder = tmp_path_factory.mktemp("report_sweep")
    result = run_app(["--multirun", *tiny_args(tiny_model, "quant=none,8bit,fp16",
                                               f"hydra.sweep.dir={folder / 'sweep'}")], folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_report_of_a_sweep_tables_plots_and_parent_artifacts(tiny_sweep):
    import matplotlib.image

    client, parent, children = sweep_runs(tiny_sweep)
    assert len(children) == 3
    result = subprocess.run([sys.executable, "-m", "slt_hydra.report", "--sweep", "sweep sweep"], cwd=tiny_sweep,
                            env=app_env(tiny_sweep), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tiny_sweep / "sweep" / "report"  # default: beside the sweep's jobs
    assert "report written to" in result.stdout

    rows = read_rows(out / "report.csv")
    assert len(rows) == 3 and {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    by_label = {r["label"]: r for r in rows}
    assert {label: row["status"] for label, row in by_label.items()} == {
        "quant=none": "finished", "quant=8bit": "finished", "quant=fp16": "invalid"}
    invalid = by_label["quant=fp16"]
    assert "fp16 on CPU" in invalid["reason"] and invalid["test_bleu4"] == ""
    assert invalid["precision"] == "float16" and invalid["model"].startswith("local:")  # from its logged config
    for label in ("quant=none", "quant=8bit"):
        row = by_label[label]
        assert row["reason"] == "" and row["lora_rank"] == "16" and int(row["parameters"]) > 1_000_000
        for column in ("test_bleu1", "test_bleu4", "test_rougeL", "test_chrf", "zeroshot_test_bleu4",
                       "train_seconds", "train_tokens_per_second", "peak_memory_gb"):
            assert float(row[column]) >= 0, column
        assert float(row["peak_memory_gb"]) > 0
    assert by_label["quant=none"]["precision"] == "float32" and by_label["quant=8bit"]["precision"] == "8bit"
    assert rows[-1]["status"] == "invalid"  # sorted by test BLEU-4; unscored jobs last
    assert set(rows[0]) >= {"run_name", "model", "parameters", "precision", "lora_rank", "test_bleu1", "test_bleu2",
                            "test_bleu3", "test_bleu4", "test_rougeL", "test_chrf", "zeroshot_test_bleu4",
                            "train_seconds", "train_tokens_per_second", "peak_memory_gb", "status", "reason"}

    text = (out / "report.md").read_text()
    assert "| run | model | parameters | precision | LoRA r | BLEU-1 |" in text
    assert "quant=fp16" in text and "invalid" in text and "fp16 on CPU" in text
    assert "Left out of the plots (not finished): `quant=fp16` (invalid)" in text
    for name in PLOTS:
        path = out / name
        assert path.stat().st_size > 5_000, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
        assert f"]({name})" in text

    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{name}" for name in ["report.md", "report.csv", *PLOTS]}


def test_report_by_experiment_and_its_errors(tiny_sweep, tmp_path, capsys):
    uri = store(tiny_sweep)
    _, parent, _ = sweep_runs(tiny_sweep)

    # --experiment: every job (single runs and sweep children), not the sweep's parent; --sweep takes an id too.
    assert report.main(["--experiment", "slt_hydra", "--tracking-uri", uri, "--out", str(tmp_path / "exp")]) == 0
    assert len(read_rows(tmp_path / "exp" / "report.csv")) == 3
    assert report.main(["--sweep", parent.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "id")]) == 0
    assert len(read_rows(tmp_path / "id" / "report.csv")) == 3
    capsys.readouterr()

    def fails(*args: str) -> str:
        assert report.main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("slt_hydra.report: ") and err.count("\n") == 1, err
        return err

    assert "no sweep named or with run id 'sweep 99-99-99'" in fails("--sweep", "sweep 99-99-99", "--tracking-uri", uri)
    assert "'sweep sweep'" in fails("--sweep", "nope", "--tracking-uri", uri)  # names the sweeps it knows
    assert "no MLflow experiment 'nope'" in fails("--experiment", "nope", "--tracking-uri", uri)
    missing = tmp_path / "missing.db"
    assert "no MLflow store" in fails("--experiment", "x", "--tracking-uri", f"sqlite:///{missing}")
    assert not missing.exists()  # the report never creates a store
    MlflowClient(f"sqlite:///{tmp_path / 'empty.db'}").search_experiments()  # a store with no runs
    capsys.readouterr()
    assert "has no runs yet" in fails("--sweep", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")


def test_submitit_local_launcher_jobs_become_children_of_the_sweep(tiny_model, tmp_path):
    """Jobs run in their own processes (submitit) and find the parent run's id in the sweep directory."""
    sweep = tmp_path / "sweep"
    result = run_app(["--multirun", *tiny_args(tiny_model, "lora.r=4,8", "hardware.torch_threads=1",
                                               "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}")],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit really ran the jobs
    _, parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" and c.data.tags["slt.status"] == "finished" for c in children)
    assert {c.data.params["lora.r"] for c in children} == {"4", "8"}
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_succeeded"] == 2


def hydra_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("launcher,target", [("submitit_local", "submitit_launcher.LocalLauncher"),
                                             ("joblib", "joblib_launcher.JoblibLauncher")])
def test_launcher_plugins_compose(launcher, target):
    cfg = hydra_config([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)


SWEEPS = {"size_precision": 9, "lora_rank": 4, "seeds": 3}


@pytest.mark.parametrize("experiment,jobs", SWEEPS.items(), ids=list(SWEEPS))
def test_sweep_experiments_expand_to_their_jobs(experiment, jobs, tmp_path):
    """`python -m slt_hydra --multirun +experiment=NAME` sweeps by itself: the basic sweeper's expansion of the
    experiment's hydra.sweeper.params, done as BasicSweeper.sweep does it, and every job composes."""
    cfg = hydra_config([f"+experiment={experiment}"])
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    assert len(batch) == jobs
    composed = [compose_config([f"+experiment={experiment}", *job], tmp_path) for job in batch]
    for job in composed:
        assert job.mlflow.experiment_name == experiment
        assert job.dataset.max_train_samples <= 128 and job.dataset.max_eval_samples <= 32  # a CPU budget
    if experiment == "size_precision":
        assert {(j.model.name, j.quant.name) for j in composed} == {
            (m, q) for m in ("smollm2_135m_instruct", "qwen2.5_0.5b_instruct", "qwen2.5_7b_instruct")
            for q in ("none", "8bit", "4bit")}
    elif experiment == "lora_rank":
        assert sorted(j.lora.r for j in composed) == [8, 16, 32, 64]
        assert all(j.lora.use_rslora and j.lora.alpha == 8 for j in composed)
    else:
        assert sorted(j.train.seed for j in composed) == [1, 2, 3]
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_\n# Question:") and "Time here" in text
