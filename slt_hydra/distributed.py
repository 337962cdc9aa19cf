"""One experiment in several processes: the launch, the ranks, and what each rank does.

``python -m slt_hydra hardware=4xa100_80gb ...`` (``hardware.num_processes`` > 1) does not train in its own process.
It checks the config and opens the job's MLflow run as usual (a single run, or a sweep's child), then starts

    python -m torch.distributed.run --standalone --nproc_per_node=N -m slt_hydra <the job's overrides>
        hydra.run.dir=<this job's directory> hydra.output_subdir=null

and waits. Every rank composes the same config into the same directory (no per-rank ``${now:...}``). Rank 0 logs
into the launcher's run (its id travels in ``SLT_HYDRA_RUN_ID``, never on the command line, like ``HF_TOKEN``),
saves the adapter and translates; the other ranks train along and log nothing. The launcher then ends the run
with the job's status and returns the objective rank 0 logged.

Ranks started some other way (your own torchrun, or one Slurm task per GPU through submitit) need no launcher:
rank 0 opens the run itself, the others log nothing.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from submitit import JobEnvironment
from submitit.helpers import TorchDistributedEnvironment

from slt_hydra.config import CONF_DIR
from slt_hydra.errors import SetupError
from slt_hydra.tracking import redact, use_store

log = logging.getLogger("slt_hydra")

SHARDED = ("fsdp", "zero3")  # weights, gradients and optimizer state split across the processes
RUN_ID_ENV = "SLT_HYDRA_RUN_ID"  # the launcher's MLflow run, for rank 0
DEEPSPEED_DIR = CONF_DIR / "deepspeed"
# FSDP2 through the Trainer: shard every decoder layer (the model's _no_split_modules), reshard after forward,
# load the weights once on rank 0 and broadcast them, save one full (HF-compatible) state dict.
FSDP_CONFIG = {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
               "cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT"}


class WorkersFailed(RuntimeError):
    """torchrun's processes did not all finish: the job failed with this exit code."""

    def __init__(self, returncode: int, message: str):
        super().__init__(message)
        self.returncode = returncode or 1


# --------------------------------------------------------------------------- ranks (torchrun's environment)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0, or the only process: the one that logs, saves and scores."""
    return rank() == 0


def sharded(hardware: DictConfig) -> bool:
    """FSDP / ZeRO-3: no process holds the whole model (loading, zero-shot and translation change)."""
    return hardware.get("strategy", "ddp") in SHARDED and processes(hardware) > 1


def processes(hardware: DictConfig) -> int:
    """The world size the profile asks for: processes per node x nodes."""
    return int(hardware.get("num_processes", 1)) * int(hardware.get("num_nodes", 1))


def translates(cfg: DictConfig) -> bool:
    """Whether this rank translates after training: rank 0 with its full copy (DDP, ZeRO-2), or every rank in
    step under FSDP/ZeRO-3, where each forward gathers the shards from all of them (rank 0 scores and writes)."""
    return is_main() or sharded(cfg.hardware)


class NoTracking:
    """MLflow for ranks other than 0: every call does nothing (a real mlflow.log_* without a run starts one)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


# --------------------------------------------------------------------------- the launcher


def should_launch(cfg: DictConfig) -> bool:
    """True in the process a user started with hardware.num_processes > 1: it launches, it does not train."""
    if cfg.hardware.num_processes <= 1 or world_size() > 1:
        return False
    if cfg.eval.only:
        log.warning("eval.only=true translates in one process: hardware.num_processes=%s is not used.",
                    cfg.hardware.num_processes)
        return False
    return True


def hydra_quote(value: str) -> str:
    """A Hydra override value that stays one string whatever the path holds (spaces, '=', quotes). Hydra reads a
    backslash as an escape only before a quote or at the end: only those are doubled."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda match: match.group(1) * 2, value)
    return "'" + escaped.replace("'", "\\'") + "'"


def worker_command(num_processes: int, overrides: list[str], run_dir: str) -> list[str]:
    """torchrun re-running this job in N processes, all in ``run_dir``. Secrets are never arguments."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", "slt_hydra", *overrides,
            f"hydra.run.dir={hydra_quote(str(Path(run_dir).resolve()))}",
            "hydra.output_subdir=null"]  # the launcher already wrote .hydra/ there


def worker_env(hardware: DictConfig, run_id: str) -> dict[str, str]:
    env = dict(os.environ)  # HF_TOKEN and MLFLOW_TRACKING_URI reach the workers from here
    env[RUN_ID_ENV] = run_id
    # Threads per process: the profile's, else the cores shared out (torchrun would set 1 and warn).
    threads = hardware.torch_threads or max(1, (os.cpu_count() or 1) // hardware.num_processes)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    if hardware.strategy == "fsdp":  # transformers loads the weights on rank 0 only, the others on `meta`
        env.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    return env


def launch(cfg: DictConfig) -> dict[str, float]:
    """Run this job in hardware.num_processes processes under torchrun, inside the MLflow run open here.

    Returns the metrics rank 0 logged (the objective among them); raises WorkersFailed when a process failed."""
    import mlflow

    hw = cfg.hardware
    if hw.num_nodes > 1:
        raise SetupError(
            f"hardware.num_nodes={hw.num_nodes}: python -m slt_hydra starts the processes of one node only. Start "
            "one process per GPU on every node with the cluster: --multirun hydra/launcher=slurm_multinode (one "
            "Slurm task per GPU; README, \"Multi-GPU and multi-node\"), or torchrun --nnodes on each node.")
    if hw.device == "cuda":
        import torch

        if torch.cuda.device_count() < hw.num_processes:
            raise SetupError(f"hardware={hw.name} starts {hw.num_processes} processes, one per GPU, and "
                             f"{torch.cuda.device_count()} GPU(s) are visible: set hardware.num_processes="
                             f"{torch.cuda.device_count()} (and check CUDA_VISIBLE_DEVICES).")
    hc = HydraConfig.get()
    run_id = mlflow.active_run().info.run_id
    for stale in Path(cfg.output_dir).glob("rank*_error.txt"):  # from an earlier attempt in this directory
        stale.unlink()
    command = worker_command(hw.num_processes, list(hc.overrides.task), cfg.output_dir)
    log.info("starting %d processes (%s) in %s:\n  %s", hw.num_processes, hw.strategy, cfg.output_dir,
             redact(subprocess.list2cmdline(command)))
    returncode = subprocess.run(command, cwd=hc.runtime.cwd, env=worker_env(hw, run_id)).returncode
    if returncode != 0:
        errors = sorted(Path(cfg.output_dir).glob("rank*_error.txt"), key=lambda path: path.stat().st_mtime)
        for path in errors:
            mlflow.log_artifact(str(path), "errors")
        reason = (f"{errors[0].stem.removesuffix('_error').replace('rank', 'rank ')} failed: "
                  + errors[0].read_text().split("\n\nTraceback")[0] if errors
                  else f"a rank failed with exit code {returncode} (its error is printed above)")
        raise WorkersFailed(returncode, f"{hw.num_processes} processes under torchrun: {reason}")
    return dict(mlflow.get_run(run_id).data.metrics)


def launcher_run_id() -> str | None:
    """In rank 0 of the launcher's torchrun: the run to log into."""
    return os.environ.get(RUN_ID_ENV) if world_size() > 1 else None


@contextmanager
def launcher_run(cfg: DictConfig) -> Iterator[None]:
    """Rank 0 logs into the launcher's run, then hands it back still RUNNING: the launcher ends it with the
    job's status (FINISHED, or FAILED with the first failing rank's reason)."""
    import mlflow

    use_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    mlflow.start_run(run_id=launcher_run_id())
    try:
        yield
    finally:
        mlflow.end_run("RUNNING")


@contextmanager
def rank_errors(cfg: DictConfig) -> Iterator[None]:
    """A failing rank leaves rank<N>_error.txt (the reason, then the traceback) in the job's directory before it
    exits: torchrun then stops the others, and the launcher reports the first one and logs them all to the run."""
    try:
        yield
    except Exception as error:
        path = Path(cfg.output_dir) / f"rank{rank()}_error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(redact(f"{type(error).__name__}: {error}\n\n" + "".join(traceback.format_exception(error))))
        raise


def run_dir_problem(argv: list[str]) -> str | None:
    """Under a torchrun the user started: every rank would resolve hydra.run.dir's ${now:...} itself."""
    if world_size() <= 1 or os.environ.get(RUN_ID_ENV):
        return None
    if any(a in ("-m", "--multirun") for a in argv) or any(a.startswith("hydra.run.dir=") for a in argv):
        return None
    return ("under torchrun every rank must write to the same directory: add hydra.run.dir=DIR to the command "
            "(or let python -m slt_hydra hardware=... start torchrun itself, which does this).")


def adopt_submitit_tasks() -> None:
    """One submitit task per GPU (hydra.launcher.tasks_per_node > 1, on Slurm or locally): make each task a
    torch.distributed rank, as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the job)."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return
    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each rank picks cuda:LOCAL_RANK


# --------------------------------------------------------------------------- what the Trainer is told


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """TrainingArguments for the strategy; empty in a single process (nothing changes there)."""
    hw = cfg.hardware
    if world_size() == 1:
        return {}
    kwargs: dict[str, Any] = {"ddp_backend": "gloo" if hw.device == "cpu" else "nccl"}
    if cfg.lora.enabled:  # every adapter weight gets a gradient each step: skip DDP's search for unused ones
        kwargs["ddp_find_unused_parameters"] = False
    if hw.strategy == "fsdp":
        kwargs.update(fsdp=True, fsdp_config=dict(FSDP_CONFIG))
    elif hw.strategy in ("zero2", "zero3"):
        kwargs["deepspeed"] = str(Path(hw.deepspeed_config).expanduser() if hw.deepspeed_config
                                  else DEEPSPEED_DIR / f"{hw.strategy}.json")
    return kwargs


def device_map(hardware: DictConfig) -> dict[str, int] | None:
    """Where from_pretrained puts the weights on CUDA: this process's GPU; None under FSDP/ZeRO-3, which place
    the shards themselves."""
    return None if sharded(hardware) else {"": local_rank()}
