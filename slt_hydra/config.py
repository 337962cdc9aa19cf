"""The composed config and what every module derives from it: where conf/ is, one Hydra compose, hardware=auto,
how the base weights are held, the translation batch.

No torch here: the fast checks (validate, the planner, the CLIs' argument errors) import this module.
"""
from __future__ import annotations

import os
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from slt_hydra.machine import Machine, auto_hardware_profile, cpu_flags, has_native_bf16
from slt_hydra.precision import PRECISIONS, PrecisionChoice, calibration_shape
from slt_hydra.precision import choose as choose_precision
from slt_hydra.schema import out_of_range, register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_CACHE_DIR = "~/.cache/slt_hydra"  # conf/config.yaml's cache_dir without SLT_HYDRA_CACHE


def compose(overrides: list[str], job_name: str = "slt_hydra") -> DictConfig:
    """The config ``python -m slt_hydra OVERRIDES`` would get, Hydra's runtime fields left unresolved (for the
    planner and the CLIs, which run outside a Hydra job)."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
            return hydra_compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def load_option(group: str, option: str) -> DictConfig:
    """One option file of a config group, e.g. ``load_option("hardware", "cpu")``."""
    return OmegaConf.load(CONF_DIR / group / f"{option}.yaml")


def command_line_overrides() -> list[str]:
    """The running Hydra job's overrides (``lora.r=8`` ...), empty outside a Hydra job."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resolve_hardware(cfg: DictConfig, machine: Machine | None,
                     overrides: list[str] | None = None) -> PrecisionChoice | None:
    """Replace hardware=auto by the profile that fits this machine (cpu, gpu_16gb, ...), then, on a CPU, settle
    hardware.precision (``auto``: measured, slt_hydra/precision.py) and the weight dtype that goes with it.

    ``hardware.KEY=VALUE`` overrides from the command line still win over the chosen profile. Returns the
    measured choice when hardware.precision was auto, else None."""
    if cfg.hardware.name == "auto":
        profile = load_option("hardware", auto_hardware_profile(machine))
        if profile.device == "cpu":  # the auto profile measures what the cpu profile fixes (fp32, sdpa)
            profile.precision = "auto"
            profile.train_attention = "auto"
        hardware = OmegaConf.merge(cfg.hardware, profile)
        mine = [o for o in (command_line_overrides() if overrides is None else overrides)
                if o.lstrip("+~").startswith("hardware.")]
        for override in OverridesParser.create().parse_overrides(mine):
            OmegaConf.update(hardware, override.key_or_group.removeprefix("hardware."), override.value(), merge=True)
        cfg.hardware = hardware
    return resolve_cpu_precision(cfg, machine)


def resolve_cpu_precision(cfg: DictConfig, machine: Machine | None) -> PrecisionChoice | None:
    """On a CPU, hardware.precision and hardware.dtype agree: bfloat16 weights either way it was asked for."""
    hw = cfg.hardware
    if hw.device != "cpu" or "precision" not in hw:
        return None
    choice = None
    if hw.precision == "auto":
        if hw.dtype == "bfloat16":  # hardware.dtype=bfloat16 asked for bf16 weights: nothing to decide
            hw.precision = "bfloat16"
        else:
            # (a bare adapter reloaded by translate/merge has no train group or cache_dir of its own)
            train_batch = cfg.get("train", {}).get("per_device_train_batch_size") or hw.per_device_train_batch_size
            native = machine.cpu_bf16 if machine else has_native_bf16(cpu_flags())
            quantized = cfg.get("quant") is not None and (cfg.quant.load_in_4bit or cfg.quant.load_in_8bit)
            choice = choose_precision(native, calibration_shape(cfg.model, train_batch), hw.torch_threads,
                                      cfg.get("cache_dir") or os.environ.get("SLT_HYDRA_CACHE", DEFAULT_CACHE_DIR),
                                      candidates=PRECISIONS[:2] if quantized else PRECISIONS)  # no bf16 weights
            hw.precision = choice.precision
    elif hw.dtype == "bfloat16":
        hw.precision = "bfloat16"
    hw.dtype = "bfloat16" if hw.precision == "bfloat16" else hw.dtype
    return choice


def weights_kind(cfg: DictConfig) -> str:
    """4bit | 8bit | float32 | float16 | bfloat16: how the base weights are held."""
    if cfg.quant.load_in_4bit:
        return "4bit"
    if cfg.quant.load_in_8bit:
        return "8bit"
    return cfg.quant.weights_dtype or cfg.hardware.dtype


def translation_batch_size(cfg: DictConfig) -> int:
    """Sentences per generate() call: generate.batch_size, else the hardware profile's generate_batch_size, else
    its per_device_eval_batch_size (run configs saved before generate_batch_size existed lack it)."""
    return int(cfg.generate.get("batch_size") or cfg.hardware.get("generate_batch_size")
               or cfg.hardware.per_device_eval_batch_size)


# Hydra answers these itself (help, completion, printing the config, another config): nothing to check first.
HYDRA_OWN_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc",
                   "--cfg", "-c", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                   "--experimental-rerun")


def command_line_problem(argv: list[str]) -> str | None:
    """Why ``python -m slt_hydra ARGV`` cannot run as written (an unknown option or key, a value of the wrong type or
    outside its range: schema.ALLOWED), or None. Each value of an ``a,b,c`` sweep is composed on its own, so a sweep
    is refused before its first job. Hydra would print the composition errors too, but with exit code 1 and, in a
    sweep, only when that job starts."""
    if any(arg.split("=")[0] in HYDRA_OWN_FLAGS for arg in argv):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides([arg for arg in argv if not arg.startswith("-")])
    except HydraException as error:
        return str(error)
    fixed, sweeps = [], []
    for override in parsed:
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif override.value_type != ValueType.INTERVAL_SWEEP:  # a,b / choice(a,b) / range(1,5) / glob(*)
            key = override.get_key_element()
            sweeps.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        # interval(a,b): Optuna's search space has no values to try beforehand
    variants = [fixed + [values[0] for values in sweeps]]
    for i, values in enumerate(sweeps):  # every value of each sweep once, the others at their first
        variants += [fixed + [v[0] for v in sweeps[:i]] + [value] + [v[0] for v in sweeps[i + 1:]]
                     for value in values[1:]]
    out = {}  # the values no job could run with, each once
    for overrides in variants:
        try:
            out |= dict.fromkeys(out_of_range(compose(overrides)))
        except MissingConfigException as error:  # group=option that is not conf/group/option.yaml
            if error.options is not None and "/" in (error.missing_cfg_file or ""):
                group, option = error.missing_cfg_file.rsplit("/", 1)
                return (f"{group}={option}: no such option in the {group} group (conf/{group}/); choose one of: "
                        + ", ".join(error.options))
            return str(error).split("\nConfig search path")[0]
        except (HydraException, OmegaConfBaseException) as error:
            cause = error.__cause__
            detail = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) and str(cause) not in str(error) else ""
            lines = f"{error}{detail}".strip().splitlines()
            return "\n".join(line for line in lines if not line.strip().startswith(("reference_type", "object_type")))
    return "settings out of range:\n  - " + "\n  - ".join(out) if out else None
