"""MLflow: one run per job; in a --multirun, one parent run per sweep with each job as its child.

The parent is made by ``MlflowSweepCallback.on_multirun_start`` (a Hydra callback, see conf/config.yaml),
which writes its id into the sweep directory; every job, in whatever launcher process, reads it from
there and opens its run as a child. ``on_multirun_end`` counts the children and names the best one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT_FILE = "mlflow_parent_run.json"
STATUS_TAG = "slt.status"  # finished | failed | invalid | oom | killed
SECRET_KEY = re.compile(r"(^|[_-])(token|secret|password|passwd|api[_-]?key)$", re.IGNORECASE)  # hf_token, not max_new_tokens
HF_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def redact(value: Any) -> Any:
    """Mask secrets: values under secret-looking keys, the HF_TOKEN value, anything shaped like an HF token."""
    token = os.environ.get("HF_TOKEN")
    if isinstance(value, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        if token:
            value = value.replace(token, "***")
        return HF_TOKEN_SHAPE.sub("***", value)
    return value


def config_container(cfg: DictConfig) -> dict:
    return redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"lora.r": "16", ...}; lists become their repr; values cut to MLflow's limit."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = str(node)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - 3] + "..."
    return {prefix[:-1]: text}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def use_store(tracking_uri: str, experiment_name: str) -> str:
    """Point the fluent API at the store and experiment; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment(experiment_name).experiment_id


# --------------------------------------------------------------------------- one job


def hydra_runtime() -> tuple[dict, str | None, str]:
    """(group choices, sweep dir when in a multirun, override string) of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}, None, ""
    hc = HydraConfig.get()
    sweep_dir = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    return dict(hc.runtime.choices), sweep_dir, hc.job.override_dirname


def sweep_parent(sweep_dir: str | None) -> str | None:
    if sweep_dir is None:
        return None
    marker = Path(sweep_dir) / PARENT_FILE
    return json.loads(marker.read_text())["run_id"] if marker.is_file() else None


@contextmanager
def job_run(cfg: DictConfig, parent_run_id: str | None, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """An MLflow run for one job; its end status says how the job ended.

    Ctrl-C ends it KILLED, an exception FAILED (with the reason as tags and the traceback as an artifact),
    and the exception goes on up: the caller decides whether the sweep continues.
    """
    import mlflow

    use_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    run = mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag(STATUS_TAG, "killed")
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        record_failure(error)
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.set_tag(STATUS_TAG, "finished")
        mlflow.end_run("FINISHED")


def record_failure(error: BaseException) -> None:
    import mlflow

    from slt_hydra.errors import SetupError

    if isinstance(error, SetupError):
        status = "invalid"  # the combination was refused before loading anything
    elif "out of memory" in str(error).lower() or isinstance(error, MemoryError):
        status = "oom"
    else:
        status = "failed"
    message = redact(f"{type(error).__name__}: {error}")
    mlflow.set_tags({STATUS_TAG: status, "slt.error": message[:5000]})
    mlflow.log_text(redact("".join(traceback.format_exception(error))), "error.txt")


def log_config(cfg: DictConfig) -> None:
    """Params = the flattened resolved config (secrets masked); artifact = the same as YAML."""
    import mlflow

    container = config_container(cfg)
    params = flatten(container)
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[start:start + 100]))
    mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(container)), "config.yaml")


# --------------------------------------------------------------------------- the sweep


class MlflowSweepCallback(Callback):
    """Parent run per multirun: created before the first job, closed with counts and the best child."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from mlflow.tracking import MlflowClient

        HydraConfig.instance().set_config(config)  # so ${hydra:runtime.cwd} in the store's URI resolves here too
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        experiment_id = use_store(config.mlflow.tracking_uri, config.mlflow.experiment_name)
        client = MlflowClient(config.mlflow.tracking_uri)
        overrides = list(config.hydra.overrides.task)
        run = client.create_run(
            experiment_id,
            run_name=f"sweep {sweep_dir.name}" if not config.mlflow.run_name else config.mlflow.run_name,
            tags={"slt.role": "sweep", "slt.sweep_dir": str(sweep_dir.resolve()),
                  "git_commit": git_commit() or "unknown"},
        )
        client.log_param(run.info.run_id, "sweep.overrides", redact(" ".join(overrides))[:MAX_PARAM_LENGTH])
        try:
            text = OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(config, resolve=True))))
        except Exception:  # some hydra: fields only resolve inside a job
            text = OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(config, resolve=False))))
        client.log_text(run.info.run_id, text, "sweep_config.yaml")
        (sweep_dir / PARENT_FILE).write_text(json.dumps(
            {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": config.mlflow.tracking_uri}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        marker = Path(config.hydra.sweep.dir) / PARENT_FILE
        if not marker.is_file():
            return
        info = json.loads(marker.read_text())
        client = MlflowClient(info["tracking_uri"])
        children = client.search_runs([info["experiment_id"]],
                                      filter_string=f"tags.mlflow.parentRunId = '{info['run_id']}'")
        statuses = [child.data.tags.get(STATUS_TAG, child.info.status.lower()) for child in children]
        summary = {
            "jobs": len(children),
            "jobs_succeeded": statuses.count("finished"),
            "jobs_failed": sum(s in ("failed", "oom", "killed") for s in statuses),
            "jobs_skipped": statuses.count("invalid"),
        }
        for key, value in summary.items():
            client.log_metric(info["run_id"], key, value)
        objective = config.eval.objective
        scored = [c for c in children if objective in c.data.metrics]
        if scored:
            best = max(scored, key=lambda c: c.data.metrics[objective])
            client.set_tag(info["run_id"], "slt.best_child", best.info.run_id)
            client.set_tag(info["run_id"], "slt.best_child_name", best.info.run_name)
            client.log_metric(info["run_id"], f"best_{objective}", best.data.metrics[objective])
        client.set_terminated(info["run_id"], "FINISHED")
