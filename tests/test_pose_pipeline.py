"""The pose path end to end, as `python -m slt_hydra` subprocesses on the tiny real model and the synthetic pose
corpus (dataset=demo_pose): a 2-job sweep over the encoder's downsampling (MLflow parent and children, adapter +
encoder saved, predictions), and a QLoRA run whose saved adapter and encoder reload for eval.only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import all_runs, client_for, read_rows, run_app, sweep_parent_and_children, tiny_args


def pose_args(model: Path, *extra: str) -> list[str]:
    return tiny_args(model, "+experiment=pose_quick", "dataset.max_train_samples=16", "dataset.max_eval_samples=4",
                     "train.num_train_epochs=1", "mlflow.experiment_name=pose_test", *extra)


def test_pose_sweep_over_downsampling_logs_children_and_saves_adapter_and_encoder(tiny_model, tmp_path):
    result = run_app(["--multirun", *pose_args(tiny_model, "pose.downsample=2,4", "pose.hidden=32", "pose.heads=2",
                                               f"hydra.sweep.dir={tmp_path / 'sweep'}")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, jobs = sweep_parent_and_children(all_runs(tmp_path, "pose_test"))
    children = {r.data.params["pose.downsample"]: r for r in jobs}
    assert set(children) == {"2", "4"} and parent.data.metrics["jobs_succeeded"] == 2
    for child in children.values():
        assert child.info.status == "FINISHED"
        tags, metrics = child.data.tags, child.data.metrics
        assert tags["input"] == "pose" and tags["pose_layout"] == "holistic" and tags["pose_feature_dim"] == "150"
        assert int(tags["pose_encoder_params"]) > 0 and child.data.params["pose.hidden"] == "32"
        assert metrics["data_pose_files"] == 16 + 4 + 4 and metrics["data_pose_frames_max"] > 0
        assert metrics["train_frames"] > 0 and metrics["train_frames_per_second"] > 0
        assert {"test_bleu4", "test_chrf", "test_rougeL", "zeroshot_test_bleu4"} <= set(metrics)
    for job, downsample in (("0", 2), ("1", 4)):
        adapter = tmp_path / "sweep" / job / "adapter"
        settings = json.loads((adapter / "pose_encoder.json").read_text())
        assert settings["downsample"] == downsample and settings["feature_dim"] == 150 and settings["hidden"] == 32
        assert "pose_encoder" in " ".join(json.loads((adapter / "adapter_config.json").read_text())["modules_to_save"])
        rows = read_rows(tmp_path / "sweep" / job / "predictions_test.csv")
        assert len(rows) == 4 and rows[0]["source"].startswith("test_")


def test_qlora_pose_run_reloads_its_adapter_and_encoder_for_evaluation(tiny_model, tmp_path):
    trained = run_app(pose_args(tiny_model, "quant=4bit", "generate.max_new_tokens=8",
                                f"hydra.run.dir={tmp_path / 'trained'}"), tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    adapter = tmp_path / "trained" / "adapter"
    again = run_app(pose_args(tiny_model, "quant=4bit", "generate.max_new_tokens=8", "eval.only=true",
                              f"eval.adapter={adapter}", f"hydra.run.dir={tmp_path / 'again'}"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    first = read_rows(tmp_path / "trained" / "predictions_test.csv")
    second = read_rows(tmp_path / "again" / "predictions_test.csv")
    assert [r["hypothesis"] for r in first] == [r["hypothesis"] for r in second]  # the trained encoder came back
    # an adapter reloaded without its encoder settings is refused, naming the file
    (adapter / "pose_encoder.json").unlink()
    broken = run_app(pose_args(tiny_model, "quant=4bit", "eval.only=true", f"eval.adapter={adapter}"), tmp_path)
    assert broken.returncode != 0 and "pose_encoder.json" in broken.stderr


def test_a_pose_run_resumed_from_its_checkpoint_ends_where_the_whole_run_did(tiny_model, tmp_path):
    """Trained 8 steps with checkpoints at 4 and 8; checkpoint-8 and the results removed, as if killed after step
    4; train.resume=auto continues from checkpoint-4, encoder included (its weights, optimizer state and RNG), and
    ends with the same encoder and predictions as the uninterrupted run."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    args = pose_args(tiny_model, "train.max_steps=8", "train.save_strategy=steps", "train.save_steps=4",
                     "train.save_total_limit=2", "train.learning_rate=2e-2", "eval.zero_shot=false",
                     "hardware.per_device_train_batch_size=2", "train.resume=auto", f"hydra.run.dir={run_dir}")
    whole = run_app(args, tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    encoder = {k: v for k, v in weights.items() if "pose_encoder" in k}
    at_step_4 = load_file(str(run_dir / "checkpoint-4" / "adapter_model.safetensors"))
    assert encoder and any(not (v == at_step_4[k]).all() for k, v in encoder.items())  # steps 5-8 moved it
    predictions = read_rows(run_dir / "predictions_test.csv")
    shutil.rmtree(run_dir / "checkpoint-8")
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "predictions_test.csv").unlink()

    resumed = run_app(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train.resume=auto: continuing from" in resumed.stdout + resumed.stderr
    again = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert again.keys() == weights.keys()
    for key, value in weights.items():  # the LoRA matrices and the encoder both
        assert (again[key] - value).abs().max() < 1e-5, key
    assert [r["hypothesis"] for r in read_rows(run_dir / "predictions_test.csv")] == \
        [r["hypothesis"] for r in predictions]
    runs = all_runs(tmp_path, "pose_test")
    assert len(runs) == 1 and runs[0].data.tags["resumed_from"] == "checkpoint-4"


@pytest.mark.slow
def test_two_cpu_processes_train_a_pose_run_like_one(tiny_model, tmp_path):
    """hardware=cpu_ddp2 (2 processes x batch 4) against hardware=cpu (1 x batch 8), 3 steps, same seed, dropout
    off in LoRA and the encoder: the same loss and gradient norm at every step (test_distributed.py's argument:
    the same examples per global step, gradients averaged over the ranks, the encoder's included), and the frames
    counted over both ranks."""
    import math

    base = [arg for arg in pose_args(tiny_model) if not arg.startswith("hardware")] + [
        "train.max_steps=3", "train.learning_rate=1e-2", "train.warmup_steps=0", "lora.dropout=0", "pose.dropout=0",
        "pose.hidden=32", "pose.heads=2", "train.train_sampling_strategy=random", "dataset.max_train_samples=32",
        "eval.zero_shot=false"]
    history, runs = {}, {}
    for name, args in (("one", ["hardware=cpu", "hardware.per_device_train_batch_size=8"]),
                       ("two", ["hardware=cpu_ddp2", "hardware.per_device_train_batch_size=4"])):
        folder = tmp_path / name
        folder.mkdir()
        done = run_app(base + args + [f"mlflow.experiment_name={name}"], folder,
                       MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert done.returncode == 0, done.stderr[-3000:]
        (run,) = all_runs(tmp_path, name)
        client = client_for(tmp_path)
        history[name] = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                       key=lambda m: m.step)] for key in ("loss", "grad_norm")}
        runs[name] = run
    two = runs["two"]
    assert two.info.status == "FINISHED" and two.data.params["hardware.num_processes"] == "2"
    assert two.data.tags["input"] == "pose" and "test_bleu4" in two.data.metrics
    assert two.data.metrics["train_frames"] == runs["one"].data.metrics["train_frames"] > 0  # both ranks' frames
    for key in ("loss", "grad_norm"):
        assert len(history["two"][key]) == len(history["one"][key]) == 3
        for step, (a, b) in enumerate(zip(history["two"][key], history["one"][key])):
            assert math.isclose(a, b, rel_tol=1e-3), (key, step, history)
