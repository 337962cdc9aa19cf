"""Every shipped config composes against the schema, and each one teaches what it does."""
from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF, compose_config

GROUPS = ["model", "quant", "lora", "hardware", "dataset", "train", "generate", "mlflow"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
EXPERIMENTS = sorted((CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], tmp_path)
    assert OmegaConf.select(cfg, group) is not None
    if group in ("model", "quant", "hardware", "generate", "dataset"):
        assert cfg[group].name == option  # tags and reports rely on the name matching the file


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config([f"+experiment={experiment.stem}"], tmp_path)
    assert cfg.mlflow.experiment_name


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_file_says_how_to_use_it(group, option):
    text = (CONF / group / f"{option}.yaml").read_text()
    assert text.startswith("#"), "open with a comment saying what the option is for"
    assert "python -m slt_hydra" in text, "show the command that uses it"


def test_defaults_are_the_embedded_offline_experiment(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.model.name == "smollm2_135m_instruct" and cfg.model.gguf
    assert (cfg.quant.name, cfg.hardware.name, cfg.dataset.name) == ("none", "auto", "demo")
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32 and cfg.lora.dropout == 0.0
    assert list(cfg.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.generate.num_beams == 1 and not cfg.generate.do_sample  # greedy


def test_presets_match_their_description(tmp_path):
    large = compose_config(["lora=large"], tmp_path).lora
    assert (large.r, large.alpha, large.target_modules) == (32, 64, "all-linear")
    assert compose_config(["lora=dora"], tmp_path).lora.use_dora
    assert compose_config(["lora=rslora"], tmp_path).lora.use_rslora
    four = compose_config(["quant=4bit"], tmp_path).quant
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    cpu = compose_config(["hardware=cpu"], tmp_path).hardware
    assert (cpu.dtype, cpu.optim, cpu.gradient_checkpointing) == ("float32", "adamw_torch", False)
    for gpu in ("gpu_16gb", "gpu_24gb", "gpu_80gb"):
        assert compose_config([f"hardware={gpu}"], tmp_path).hardware.optim == "paged_adamw_8bit"


def test_keys_override_one_by_one(tmp_path):
    cfg = compose_config(["lora.r=8", "train.learning_rate=5e-5", "generate=beam", "generate.num_beams=3"], tmp_path)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.train.learning_rate, cfg.generate.num_beams) == (8, 32, 5e-5, 3)


@pytest.mark.parametrize("override,needle", [
    (["model=no_such_model"], "no_such_model"),
    (["lora.rank=8"], "rank"),  # a misspelt key is refused by the schema
    (["lora.r=eight"], "lora.r"),  # so is a wrong type
])
def test_bad_overrides_fail_at_composition(override, needle, tmp_path):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(override, tmp_path)
    assert re.search(needle, str(error.value) + str(error.value.__cause__))


def test_mlflow_store_defaults_to_sqlite_in_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_config([], tmp_path).mlflow.tracking_uri.startswith("sqlite:///") 
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert compose_config([], tmp_path).mlflow.tracking_uri == "sqlite:////elsewhere/x.db"


def test_translation_batch_size_resolution(tmp_path):
    from slt_hydra.config import translation_batch_size

    cpu = compose_config(["hardware=cpu"], tmp_path)
    assert translation_batch_size(cpu) == cpu.hardware.generate_batch_size == 128  # the profile's own setting
    assert cpu.hardware.per_device_eval_batch_size == 32  # the dev loss keeps its batch
    assert translation_batch_size(compose_config(["hardware=cpu", "generate.batch_size=8"], tmp_path)) == 8
    gpu = compose_config(["hardware=gpu_16gb"], tmp_path)
    assert gpu.hardware.generate_batch_size is None
    assert translation_batch_size(gpu) == gpu.hardware.per_device_eval_batch_size
    saved = OmegaConf.create({"generate": {"batch_size": None}, "hardware": {"per_device_eval_batch_size": 24}})
    assert translation_batch_size(saved) == 24  # a run config saved before the key existed


def schema_defaults(node) -> dict:
    """The schema's defaults for one dataclass, MISSING keys left out."""
    return {key: value for key, value in OmegaConf.to_container(OmegaConf.structured(node)).items()
            if value != "???" and not isinstance(value, dict)}



@pytest.mark.parametrize("group", ["lora", "train", "generate", "mlflow", "eval", "sweep"])
def test_schema_defaults_agree_with_the_default_option(group):
    """One source of truth: where the schema and a group's default option both give a key a value, they agree (a
    schema default is what an option that leaves the key out gets, so a disagreement misleads its reader).
    hardware is left out: its default option, auto, is replaced by a whole profile at run time."""
    from slt_hydra import schema

    node = {"lora": schema.LoraConfig, "train": schema.TrainConfig, "generate": schema.GenerateConfig,
            "mlflow": schema.MlflowConfig, "eval": schema.EvalConfig, "sweep": schema.SweepConfig}[group]
    top = OmegaConf.load(CONF / "config.yaml")
    if group in top:  # eval and sweep are set in config.yaml itself
        written = OmegaConf.to_container(top[group])
    else:
        default_option = next(entry[group] for entry in OmegaConf.to_container(top.defaults)
                              if isinstance(entry, dict) and group in entry)
        written = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{default_option}.yaml"))
    defaults = schema_defaults(node)
    disagree = {key: (defaults[key], written[key]) for key in set(defaults) & set(written)
                if written[key] != defaults[key]}
    assert not disagree, f"{group}: (schema default, conf value): {disagree}"
    assert set(defaults) & set(written) or group == "sweep", "the comparison compared nothing"
