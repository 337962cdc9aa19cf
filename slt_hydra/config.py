"""The composed config and what every module derives from it: where conf/ is, one Hydra compose, hardware=auto,
how the base weights are held, the translation batch.

No torch here: the fast checks (validate, the planner, the CLIs' argument errors) import this module.
"""
from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from slt_hydra.machine import Machine, auto_hardware_profile
from slt_hydra.schema import register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


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


def resolve_hardware(cfg: DictConfig, machine: Machine | None, overrides: list[str] | None = None) -> None:
    """Replace hardware=auto by the profile that fits this machine (cpu, gpu_16gb, ...).

    ``hardware.KEY=VALUE`` overrides from the command line still win over the chosen profile."""
    if cfg.hardware.name != "auto":
        return
    hardware = OmegaConf.merge(cfg.hardware, load_option("hardware", auto_hardware_profile(machine)))
    mine = [o for o in (command_line_overrides() if overrides is None else overrides)
            if o.lstrip("+~").startswith("hardware.")]
    for override in OverridesParser.create().parse_overrides(mine):
        OmegaConf.update(hardware, override.key_or_group.removeprefix("hardware."), override.value(), merge=True)
    cfg.hardware = hardware


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
