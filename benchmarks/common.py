"""What every benchmark shares: the composed config, the model folder, child processes, medians, machine facts.

Each contender runs in its own child process (``python -m benchmarks.bench_X --child NAME ...``), so peak
memory (VmHWM) and thread settings never mix between contenders; the parent alternates them (A B, B A, ...)
and keeps the medians.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
VERSIONS = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "mlflow", "hydra-core")


# --------------------------------------------------------------------------- config and model


def shortened(steps: int) -> list[str]:
    """Overrides that stop the default job after STEPS optimizer steps, its warm-up (conf/train/default.yaml) cut
    to at most those steps: validation refuses a warm-up longer than the run."""
    from omegaconf import OmegaConf

    warmup = OmegaConf.load(CONF / "train" / "default.yaml").warmup_steps
    return [f"train.max_steps={steps}", f"train.warmup_steps={min(warmup, steps)}"]


def compose(overrides: Sequence[str], output_dir: Path):
    """The config `python -m slt_hydra OVERRIDES` would get (as tests/conftest.py composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from slt_hydra.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    OmegaConf.resolve(cfg)
    GlobalHydra.instance().clear()
    return cfg


def model_dir(cfg) -> Path:
    """The safetensors folder of the configured model, converting the embedded GGUF once if needed."""
    from slt_hydra.models import convert_gguf, converted_dir, locate_model

    source = locate_model(cfg.model, cfg.cache_dir)
    if source.kind == "gguf":
        return convert_gguf(Path(source.location), converted_dir(Path(source.location), cfg.cache_dir))
    return Path(source.location)


def quiet() -> None:
    """No progress bars or deprecation chatter in the children's logs."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass


# --------------------------------------------------------------------------- measurements


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM), in GiB: the figure our runs log as peak_memory_gb on CPU."""
    from slt_hydra.machine import peak_memory_gb

    return peak_memory_gb("cpu")


def cpu_seconds() -> float:
    """User + system CPU time of this process: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def alternate(names: Sequence[str], reps: int) -> list[tuple[int, str]]:
    """(repetition, contender) in A B / B A / A B ... order, so drift on a shared machine hits both alike."""
    order = []
    for rep in range(reps):
        order += [(rep, name) for name in (names if rep % 2 == 0 else list(reversed(names)))]
    return order


# --------------------------------------------------------------------------- child processes


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Offline, our model cache, an MLflow store of the benchmark's own (never the repo's mlflow.db)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    threads = os.environ.get("SLT_BENCH_THREADS")
    if threads:  # run_all --threads N: the same thread count for every contender (OpenMP reads it at start)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.update(extra)
    return env


def run_child(module: str, args: Sequence[str], workdir: Path, timeout: float, log=None) -> dict[str, Any]:
    """Run ``python -m MODULE --child ... --out FILE`` in its own process; return what it wrote."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"result_{time.time_ns()}.json"
    command = [sys.executable, "-m", module, *args, "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=child_env(workdir), capture_output=True, text=True,
                          timeout=timeout)
    if log is not None:
        log.write(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}\n")
        log.flush()
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{module} {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_gb", peak_rss_gb())
    Path(path).write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------- the machine


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, load, library versions: the header of docs/benchmarks.md."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = 0.0
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import torch

        threads, cuda = torch.get_num_threads(), torch.cuda.is_available()
    except ImportError:
        threads, cuda = None, False
    from slt_hydra.machine import BF16_FLAGS, cpu_flags

    return {
        "cpu": cpu, "cpu_bf16_flags": sorted(cpu_flags() & BF16_FLAGS), "cores": os.cpu_count(),
        "ram_gb": round(ram, 1), "cuda": cuda, "torch_threads": threads,
        "python": platform.python_version(), "os": platform.platform(), "versions": versions,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "lora": lora_settings(),
    }


def lora_settings() -> dict[str, Any]:
    """The default job's adapter, which every training contender uses."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "lora" / "default.yaml")
    return {key: OmegaConf.to_container(cfg)[key] for key in ("r", "alpha", "dropout", "target_modules")}


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:,.{digits}f}"
