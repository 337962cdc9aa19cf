"""Every setting of every group is checked before anything is loaded: a generated fuzz of the command line.

For each setting in the schema, a few invalid values (wrong sign, zero, out of range, wrong type, an unknown
choice) must be refused by the check `python -m slt_hydra` runs first (config.command_line_problem), naming the
setting. A sample goes through the real command line: exit code 2, one message, no traceback. And every setting
must have a rule (schema.ALLOWED, or its type for booleans) or be listed below as free text, so a setting added
later without one fails here.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from conftest import ROOT, app_env
from slt_hydra import schema
from slt_hydra.config import command_line_problem

# Settings that take any text (names, paths, prompts, ids) or a structure checked where it is used.
FREE_TEXT = {
    "model.name", "model.hub_id", "model.path", "model.gguf", "model.revision", "model.source_prefix",
    "model.src_lang", "model.tgt_lang",  # FLORES-200 codes: validate.py checks that one is known when needed
    "model.family",  # tags, and the zoo's LoRA target names when known; a new family keeps its own names
    "model.recommended.target_modules", "lora.target_modules",  # module names: memory.plan_notes checks them
    "quant.name", "hardware.name", "hardware.deepspeed_config",
    "dataset.name", "dataset.path", "dataset.splits", "dataset.source_field", "dataset.target_field",
    "dataset.delimiter", "dataset.source_lang", "dataset.target_lang", "dataset.system_prompt", "dataset.prompt",
    "dataset.hub_id", "dataset.hub_config", "dataset.hub_revision", "dataset.pose_dir",
    "generate.name", "eval.adapter", "eval.objective",  # eval.objective: validate.py (it depends on eval.splits)
    "mlflow.tracking_uri", "mlflow.experiment_name", "mlflow.run_name", "sweep.name", "cache_dir", "output_dir",
}


def schema_settings(node=schema.SltConfig, prefix: str = "") -> dict[str, typing.Any]:
    """Every leaf setting of the schema -> its type (dataclass fields are walked into)."""
    out = {}
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        if dataclasses.is_dataclass(inner[0]):
            out |= schema_settings(inner[0], f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = inner[0]
    return out


SETTINGS = schema_settings()
BOOLEANS = sorted(key for key, kind in SETTINGS.items() if kind is bool)


def invalid_values(allowed: schema.Allowed) -> list[str]:
    """A few values outside what `allowed` admits, as one would type them on the command line."""
    if allowed.choices:
        return ["not_a_choice", "0"]
    values = ["abc"]  # the wrong type
    if allowed.low is not None:
        values.append(str(allowed.low if allowed.low_open else allowed.low - 1))
        values.append(str(allowed.low - 5))  # well below (past `also`: train.max_steps=-1 is allowed)
    if allowed.high is not None:
        values.append(str(allowed.high if allowed.high_open else allowed.high + 1))
    if allowed.integer:
        values.append("1.5")
    return [v for v in dict.fromkeys(values) if not _admitted(allowed, v)]


def _admitted(allowed: schema.Allowed, text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return allowed.admits(int(value) if value.is_integer() else value)


CASES = [(key, value) for key, allowed in schema.ALLOWED.items() for value in invalid_values(allowed)]
CASES += [(key, "maybe") for key in BOOLEANS]


def test_every_setting_has_a_rule():
    unchecked = sorted(set(SETTINGS) - set(schema.ALLOWED) - set(BOOLEANS) - FREE_TEXT)
    assert not unchecked, ("give these a range or choices in schema.ALLOWED (or, for free text, list them in "
                           f"tests/test_knobs.py FREE_TEXT): {unchecked}")
    stale = sorted((set(schema.ALLOWED) | FREE_TEXT) - set(SETTINGS))
    assert not stale, f"rules for settings the schema does not have: {stale}"


def test_every_rule_gets_invalid_values():
    assert all(invalid_values(allowed) for allowed in schema.ALLOWED.values())
    assert len(CASES) >= 2 * len(schema.ALLOWED) + len(BOOLEANS)


@pytest.mark.parametrize("key,value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_invalid_value_is_refused_naming_the_setting(key, value):
    override = f"{key}=[dev,{value}]" if key == "eval.splits" else f"{key}={value}"
    problem = command_line_problem([override])
    assert problem is not None, f"{override} was not refused"
    assert key in problem, problem


@pytest.mark.parametrize("key", sorted(schema.ALLOWED))
def test_the_default_and_shipped_values_are_allowed(key):
    """The rules refuse nothing a shipped option sets (they compose cleanly with every option, in test_configs)."""
    assert command_line_problem([]) is None
    assert key in SETTINGS


def test_a_sweep_is_refused_before_its_first_job_with_every_problem():
    problem = command_line_problem(["--multirun", "lora.r=8,0", "train.learning_rate=1e-3,-1"])
    assert "lora.r=0" in problem and "train.learning_rate=-1.0" in problem
    assert command_line_problem(["--multirun", "lora.r=8,16", "quant=none,8bit"]) is None


def test_unknown_options_name_the_choices():
    problem = command_line_problem(["quant=9bit"])
    assert "quant=9bit" in problem and "4bit" in problem and "8bit" in problem


def test_installed_libraries_agree_with_the_written_out_choices():
    import sacrebleu.metrics.bleu as bleu
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames, TrainingArguments

    assert set(schema.LR_SCHEDULERS) == {s.value for s in SchedulerType}
    assert set(schema.OPTIMIZERS) == {o.value for o in OptimizerNames}
    sampler = next(f for f in dataclasses.fields(TrainingArguments) if f.name == "train_sampling_strategy")
    assert set(schema.TRAIN_SAMPLERS) == set(sampler.metadata["choices"])
    assert set(schema.BLEU_TOKENIZERS) == set(bleu._TOKENIZERS)


# One setting per group, through the real command line.
SAMPLE = ["lora.r=0", "train.learning_rate=-1", "hardware.per_device_train_batch_size=0", "generate.top_p=1.5",
          "quant.bnb_4bit_quant_type=nf5", "dataset.format=xml", "eval.shots=-1", "model.params_b=0",
          "generate.num_beams=abc", "lora.use_dora=maybe", "model=no_such_model"]


@pytest.mark.parametrize("override", SAMPLE)
def test_the_command_line_refuses_with_exit_2_and_no_traceback(override, tmp_path):
    result = subprocess.run([sys.executable, "-m", "slt_hydra", override], cwd=ROOT, env=app_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert override.split("=")[0] in result.stderr and result.stderr.startswith("slt_hydra: ")
