"""Interrupted work is not lost: kill -9 mid-training resumes from the last checkpoint in the same MLflow run;
Ctrl-C in a sweep marks the running child and the parent KILLED; a named sweep run again skips finished jobs.

All real processes on the tiny model (tests/conftest.py), killed for real."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import app_env, run_app, tiny_args

CHECKPOINTING = ["train.max_steps=16", "train.save_strategy=steps", "train.save_steps=4", "train.save_total_limit=2",
                 "dataset.max_train_samples=32", "train.logging_steps=1"]


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal. A test run started in the background (`make test &`, nohup) hands
    its children SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_app(args: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slt_hydra", *args], cwd=tmp_path, env=app_env(tmp_path),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)


def wait_for(path_glob: tuple[Path, str], process: subprocess.Popen, timeout: float = 300) -> Path:
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[0]
        assert process.poll() is None, f"the app ended (exit {process.returncode}) before {pattern} appeared"
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {folder} within {timeout}s")


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_kill_9_resumes_from_the_last_checkpoint_in_the_same_run(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_model, *CHECKPOINTING, f"hydra.run.dir={run_dir}", "train.resume=auto")
    process = start_app(args, tmp_path, tmp_path / "first.log")
    wait_for((run_dir, "checkpoint-8/trainer_state.json"), process)
    process.send_signal(signal.SIGKILL)  # no handler runs: the MLflow run is left RUNNING, as after a crash
    process.wait(timeout=30)
    client, [killed] = runs(tmp_path)
    assert killed.info.status == "RUNNING"
    steps_before = {m.step for m in client.get_metric_history(killed.info.run_id, "loss")}
    assert steps_before and max(steps_before) < 16

    second = run_app(args, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train.resume=auto: continuing from" in second.stdout
    client, [resumed] = runs(tmp_path)  # the same run, not a second one
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["slt.resumed"] == "1"
    assert int(resumed.data.tags["resumed_from"].split("-")[1]) >= 8
    state = json.loads((run_dir / "checkpoint-16" / "trainer_state.json").read_text())
    assert state["global_step"] == 16
    steps_after = {m.step for m in client.get_metric_history(resumed.info.run_id, "loss")}
    assert max(steps_after) == 16 and steps_before < steps_after  # one loss curve across both processes
    assert "test_bleu4" in resumed.data.metrics and "zeroshot_test_bleu4" in resumed.data.metrics
    # the zero-shot translations from before the kill are reused, not redone
    assert "zeroshot_test_translations_per_second" in resumed.data.metrics
    assert len(client.get_metric_history(resumed.info.run_id, "zeroshot_test_bleu4")) == 1


def test_resume_refuses_a_run_dir_with_another_config(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    first = run_app(tiny_args(tiny_model, "train.save_strategy=steps", "train.save_steps=1",
                              f"hydra.run.dir={run_dir}"), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_app(tiny_args(tiny_model, "train.save_strategy=steps", "train.save_steps=1", "lora.r=4",
                               f"hydra.run.dir={run_dir}", "train.resume=auto"), tmp_path)
    assert second.returncode == 2
    assert "different config" in second.stderr and "lora.r=16 there, 4 now" in second.stderr
    assert "Traceback" not in second.stderr


def test_ctrl_c_kills_the_sweep_then_the_named_sweep_resumes_and_skips_what_finished(tiny_model, tmp_path):
    sweep = ["--multirun", "sweep.name=grid", "lora.r=4,8", "train.resume=auto",
             *tiny_args(tiny_model, *CHECKPOINTING)]
    process = start_app(sweep, tmp_path, tmp_path / "interrupted.log")
    wait_for((tmp_path / "multirun" / "grid" / "0", "checkpoint-4/trainer_state.json"), process)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    process.wait(timeout=120)
    client, interrupted = runs(tmp_path)
    parent = next(r for r in interrupted if r.data.tags.get("slt.role") == "sweep")
    [child] = [r for r in interrupted if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "grid"
    assert (parent.info.status, parent.data.tags["slt.status"]) == ("KILLED", "killed")
    assert (child.info.status, child.data.tags["slt.status"]) == ("KILLED", "killed")

    again = run_app(sweep, tmp_path)  # same name: same parent, the killed job continues in its own child run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train.resume=auto: continuing from" in again.stdout
    client, finished = runs(tmp_path)
    children = [r for r in finished if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(finished) == 3 and len(children) == 2  # no duplicate parent or child
    keys = sorted(c.data.tags["slt.job"] for c in children)  # the job's overrides, minus how it was run
    assert ["lora.r=4" in keys[0], "lora.r=8" in keys[1]] == [True, True]
    assert not any("sweep.name" in k or "train.resume" in k for k in keys)
    assert sorted(c.info.run_name for c in children) == ["lora.r=4", "lora.r=8"]  # named by what the sweep varies
    assert all(c.info.status == "FINISHED" for c in children)
    assert next(c for c in children if c.info.run_id == child.info.run_id).data.tags["slt.resumed"] == "1"
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_succeeded"] == 2

    third = run_app(sweep, tmp_path)  # everything finished: nothing is run again
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("already ended finished") == 2
    assert len(runs(tmp_path)[1]) == 3
