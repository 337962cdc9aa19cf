"""Optuna search through Hydra's Optuna sweeper (experiments/optuna_search.yaml, optuna_pareto.yaml), on the tiny model.

Each invocation is a real `python -m slt_hydra --multirun +experiment=...`: trials land in the SQLite study the
experiment names, every trial is an MLflow child of the invocation's parent run, a second invocation resumes
the stored study, and a failed trial is recorded FAIL without stopping the search.
"""
from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_app, tiny_args


def trial_args(model_dir: Path) -> list[str]:
    """The tiny model's overrides minus its fixed learning rate (searched here), dev split only (the objective)."""
    return [arg for arg in tiny_args(model_dir, "hardware.torch_threads=1", "eval.splits=[dev]")
            if not arg.startswith("train.learning_rate=")]


def load_study(tmp_path: Path, name: str):
    import optuna

    with warnings.catch_warnings():  # the plugin stores Optuna 2 distribution classes (deprecated, still read)
        warnings.simplefilter("ignore", FutureWarning)
        return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def sweep_children(tmp_path: Path, sweep_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(json.loads((sweep_dir / "mlflow_parent_run.json").read_text())["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children


def test_optuna_search_stores_trials_logs_children_and_resumes(tiny_model, tmp_path):
    first = run_app(["--multirun", "+experiment=optuna_search", "hydra.sweeper.n_trials=2",
                     "hydra.sweep.dir=multirun/first", *trial_args(tiny_model)], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    study = load_study(tmp_path, "optuna_search")  # ./optuna.db, from the experiment's storage setting
    assert study.directions[0].name == "MAXIMIZE"
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert set(trials[0].params) == {"train.learning_rate", "lora.r", "lora.alpha", "lora.dropout"}
    assert all(1e-4 <= t.params["train.learning_rate"] <= 3e-3 and t.params["lora.r"] in (4, 8, 16, 32)
               for t in trials)

    parent, children = sweep_children(tmp_path, tmp_path / "multirun/first")
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_succeeded"] == 2
    assert parent.data.tags["slt.best_child"] in {c.info.run_id for c in children}
    # each trial is one child run with the trial's values as its config and the trial's value as dev_bleu4
    by_values = {(c.data.params["lora.r"], c.data.params["lora.alpha"], c.data.params["train.learning_rate"]): c
                 for c in children}
    assert len(by_values) == 2
    for trial in trials:
        child = by_values[(str(trial.params["lora.r"]), str(trial.params["lora.alpha"]),
                           str(trial.params["train.learning_rate"]))]
        assert child.data.metrics["dev_bleu4"] == pytest.approx(trial.value)
        assert child.data.tags["slt.status"] == "finished"
    results = OmegaConf.load(tmp_path / "multirun/first/optimization_results.yaml")
    assert results.best_value == pytest.approx(study.best_value)

    # Same command again: the stored study is loaded and grows (trial numbers go on). Here every new trial fails
    # at load time (the weights file is cut short, which no check before loading reads): each is recorded FAIL in
    # the study and FAILED in MLflow, and the search runs to its end instead of stopping at the first failure.
    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    again = run_app(["--multirun", "+experiment=optuna_search", "hydra.sweeper.n_trials=2",
                     "hydra.sweep.dir=multirun/again", *trial_args(broken)], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load_study(tmp_path, "optuna_search").trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "FAIL"), (3, "FAIL")]
    parent, children = sweep_children(tmp_path, tmp_path / "multirun/again")
    assert len(children) == 2 and {c.data.tags["slt.status"] for c in children} == {"failed"}
    assert parent.data.metrics["jobs_failed"] == 2


def test_optuna_pareto_returns_bleu_and_memory_per_trial(tiny_model, tmp_path):
    result = run_app(["--multirun", "+experiment=optuna_pareto", "hydra.sweeper.n_trials=2",
                      "hydra.sweep.dir=multirun/pareto", *trial_args(tiny_model)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    study = load_study(tmp_path, "optuna_pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    parent, children = sweep_children(tmp_path, tmp_path / "multirun/pareto")
    assert len(children) == 2
    by_values = {(c.data.params["quant.name"], c.data.params["lora.r"], c.data.params["train.learning_rate"]): c
                 for c in children}
    for trial in study.trials:
        bleu, memory = trial.values
        assert math.isfinite(bleu) and 0 < memory < 64  # GB: the job's peak RSS here
        params = trial.params
        child = by_values[(params["quant"], str(params["lora.r"]), str(params["train.learning_rate"]))]
        assert child.data.metrics["dev_bleu4"] == pytest.approx(bleu)
        assert child.data.metrics["peak_memory_gb"] == pytest.approx(memory)
    front = OmegaConf.load(tmp_path / "multirun/pareto/optimization_results.yaml").solutions
    assert 1 <= len(front) <= 2 and all(len(solution["values"]) == 2 for solution in front)
    assert "best_dev_bleu4" in parent.data.metrics  # the parent's pick goes by the first objective


def test_a_list_objective_is_checked_and_returned_in_order(make_cfg):
    """eval.objective as a list: every name must be something the run computes; the run returns the values in
    that order, and None (not NaN, which stops the Optuna sweeper) when one is missing or not finite."""
    from slt_hydra import validate
    from slt_hydra.machine import Machine
    from slt_hydra.run import objective_value

    cpu = Machine(cuda=False, gpu_name=None, gpu_memory_gb=None, gpu_bf16=False, cpu_bf16=False, ram_gb=24.0)
    pareto = make_cfg("+experiment=optuna_pareto", "hardware=cpu")
    assert list(pareto.eval.objective) == ["dev_bleu4", "peak_memory_gb"]
    assert not [p for p in validate.check(pareto, cpu) if "eval.objective" in p]
    assert objective_value(pareto, {"dev_bleu4": 12.5, "peak_memory_gb": 3.25, "test_bleu4": 9.0}) == [12.5, 3.25]
    assert objective_value(pareto, {"dev_bleu4": 12.5}) is None
    wrong = make_cfg("eval.objective=[dev_bleu4,peak_memory_mb]", "hardware=cpu")
    assert any("eval.objective=peak_memory_mb is not computed" in p for p in validate.check(wrong, cpu))
    single = make_cfg("hardware=cpu")
    assert objective_value(single, {"dev_bleu4": 7.0}) == 7.0
    assert objective_value(single, {"dev_bleu4": float("nan")}) is None
