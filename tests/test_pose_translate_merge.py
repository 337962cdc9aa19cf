"""`python -m slt_hydra.translate --poses` and `python -m slt_hydra.merge` on a pose run trained by the app itself
(the tiny real model on the synthetic pose corpus): the reloaded adapter + encoder translate the test poses as the
run did, a merged model with its encoder beside it translates them alike, and bad pose input is refused before
the model loads."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import read_rows, run_app, tiny_args
from slt_hydra import merge as merge_cli
from slt_hydra import translate as translate_cli


def demo_poses() -> Path:
    """Where the runs (app_env's SLT_HYDRA_CACHE) find the synthetic pose corpus's .pose files."""
    cache = os.environ.get("SLT_HYDRA_CACHE", str(Path.home() / ".cache" / "slt_hydra"))
    return Path(cache) / "pose_demo" / "poses"


@pytest.fixture(scope="module")
def pose_run(tmp_path_factory, tiny_model) -> Path:
    """A pose run's directory; a high learning rate so that 2 steps move the LoRA and encoder weights visibly, and
    LoRA dropout 0.05 (the default until lora.dropout became 0): with it these 2 steps leave the random tiny model
    giving different outputs for different poses (the first test checks that), which it does not without."""
    folder = tmp_path_factory.mktemp("pose_run")
    result = run_app(tiny_args(tiny_model, "+experiment=pose_quick", "pose.hidden=32", "pose.heads=2",
                               "lora.dropout=0.05",
                               "train.num_train_epochs=1", "train.learning_rate=5e-2", "eval.zero_shot=false",
                               "eval.splits=[test]", "eval.objective=test_bleu4", f"hydra.run.dir={folder / 'run'}"),
                     folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_predictions(run: Path) -> dict[str, str]:
    return {row["source"]: row["hypothesis"] for row in read_rows(run / "predictions_test.csv")}


def translated(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return dict(line.split("\t", 1) for line in text[:-1].split("\n"))


def test_translate_poses_reproduces_the_runs_own_test_predictions(pose_run, tmp_path, capsys):
    expected = run_predictions(pose_run)
    assert len(expected) == 4 and len(set(expected.values())) > 1  # a trained adapter: not one output for all
    files = [demo_poses() / f"{name}.pose" for name in expected]
    out = tmp_path / "en.tsv"
    assert translate_cli.main(["--run-dir", str(pose_run), "--poses", *map(str, files), "--output", str(out)]) == 0
    assert "4 translations written" in capsys.readouterr().err
    assert translated(out) == expected
    assert list(translated(out)) == list(expected)  # in the order given

    # the same poses given as a folder, and as numpy arrays: the same translations
    folder = tmp_path / "as_folder"
    folder.mkdir()
    for file in files:
        shutil.copy(file, folder / file.name)
    assert translate_cli.main(["--run-dir", str(pose_run), "--poses", str(folder), "--output", str(out)]) == 0
    assert translated(out) == expected


def test_translate_poses_by_adapter_folder_alone(pose_run, tiny_model, tmp_path, capsys):
    """--adapter with no run config beside it: the encoder's settings come from pose_encoder.json."""
    adapter = tmp_path / "adapter"
    shutil.copytree(pose_run / "adapter", adapter)
    name = next(iter(run_predictions(pose_run)))
    assert translate_cli.main(["--adapter", str(adapter), "--base", str(tiny_model),
                               "--poses", str(demo_poses() / f"{name}.pose")]) == 0
    captured = capsys.readouterr()
    assert "default pose experiment's prompt" in captured.err
    (line,) = captured.out.splitlines()
    assert line.startswith(f"{name}\t")


def test_bad_pose_input_is_refused_before_loading(pose_run, tmp_path, capsys):
    def refused(*args: str) -> str:
        assert translate_cli.main(["--run-dir", str(pose_run), *args]) == 2
        err = capsys.readouterr().err
        assert "loading" not in err and "Traceback" not in err
        return err

    (tmp_path / "glosses.txt").write_text("HELLO\n")
    assert "was trained on pose input" in refused("--input", str(tmp_path / "glosses.txt"))
    assert "--poses PATH" in refused()  # a pose run, no poses given
    assert "no such file or folder" in refused("--poses", str(tmp_path / "missing.pose"))
    (tmp_path / "notes.txt").write_text("HELLO\n")
    assert "is not a pose" in refused("--poses", str(tmp_path / "notes.txt"))
    (tmp_path / "broken.pose").write_bytes(b"not a pose file")
    assert "cannot be read as a .pose file" in refused("--poses", str(tmp_path / "broken.pose"))
    openpose = tmp_path / "openpose.npy"  # OpenPose's 137 points: 134 values per frame, the run read 150
    np.save(openpose, np.random.default_rng(0).normal(size=(20, 137, 2)).astype(np.float32))
    err = refused("--poses", str(openpose))
    assert "was trained on 150 values per frame" in err and "134" in err


def test_merge_of_a_pose_run_saves_the_encoder_beside_and_translates_alike(pose_run, tmp_path, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slt_hydra.generation import generation_kwargs
    from slt_hydra.pose import pose_inputs, read_pose_inputs
    from slt_hydra.pose_model import PromptParts, load_merged_encoder, translate_poses

    out = tmp_path / "merged"
    assert merge_cli.main(["--run-dir", str(pose_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pose encoder" in printed and "load_merged_encoder" in printed
    with safe_open(str(out / "model.safetensors"), "pt") as weights:  # a plain LLM: no LoRA, no encoder inside
        assert not any("lora" in key or "pose_encoder" in key for key in weights.keys())
    settings = json.loads((out / "pose_encoder.json").read_text())
    assert settings == json.loads((pose_run / "adapter" / "pose_encoder.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers
    tokenizer = AutoTokenizer.from_pretrained(out)
    model.pose_encoder = load_merged_encoder(out)
    cfg = OmegaConf.load(pose_run / ".hydra" / "config.yaml")
    expected = run_predictions(pose_run)
    poses = read_pose_inputs(pose_inputs([demo_poses() / f"{n}.pose" for n in expected]), {**settings, **cfg.pose})
    kwargs = generation_kwargs(cfg.generate, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        outputs = translate_poses(model, PromptParts(tokenizer, cfg.dataset), list(poses.features.values()),
                                  settings["downsample"], kwargs, batch_size=8)
    assert dict(zip(poses.features, outputs)) == expected
