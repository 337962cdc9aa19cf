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

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from slt_hydra.errors import SetupError

PARENT_FILE = "mlflow_parent_run.json"
RUN_FILE = "mlflow_run.json"  # in each job's output dir: the run that train.resume=auto continues
JOB_TAG = "slt.job"  # a sweep job's overrides, minus the ones that only say how to run: matches it on resume
NOT_PART_OF_JOB = ("train.resume=", "sweep.", "hydra.", "mlflow.tracking_uri=")
STATUS_TAG = "slt.status"  # finished | failed | invalid | oom | killed
# hf_token, not max_new_tokens
SECRET_KEY = re.compile(r"(^|[_-])(token|secret|password|passwd|api[_-]?key)$", re.IGNORECASE)
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


def default_tracking_uri(explicit: str | None = None) -> str:
    """The store the CLIs read: --tracking-uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db (as the app writes)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def use_store(tracking_uri: str, experiment_name: str) -> str:
    """Point the fluent API at the store and experiment; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment(experiment_name).experiment_id


# --------------------------------------------------------------------------- one job


def hydra_runtime() -> tuple[dict, str | None, str]:
    """(group choices, sweep dir when in a multirun, override string) of the running Hydra job."""
    if not HydraConfig.initialized():
        return {}, None, ""
    hc = HydraConfig.get()
    sweep_dir = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    return dict(hc.runtime.choices), sweep_dir, hc.job.override_dirname


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: `a=1,2`-style command-line overrides and the sweeper's own params."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [override.get_key_element().lstrip("+~") for override in parsed if override.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return keys + [str(key).lstrip("+~") for key in params if str(key).lstrip("+~") not in keys]


def write_parent_marker(sweep_dir: Path, run_id: str, experiment_id: str, config: DictConfig) -> None:
    """What every job of the sweep, in whatever launcher process, reads to become the parent's child."""
    (sweep_dir / PARENT_FILE).write_text(json.dumps(
        {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": config.mlflow.tracking_uri,
         "swept": swept_keys(config)}))


def child_name(sweep_dir: str, overrides: list[str], fallback: str) -> str:
    """A child run is named by the values the sweep varies (`quant=8bit,lora.r=16`), not every override."""
    marker = Path(sweep_dir) / PARENT_FILE
    swept = json.loads(marker.read_text()).get("swept", []) if marker.is_file() else []
    varied = [o.lstrip("+~") for o in overrides if o.lstrip("+~").split("=", 1)[0] in swept]
    return (",".join(varied) or fallback)[:200]


def sweep_parent(sweep_dir: str | None) -> str | None:
    if sweep_dir is None:
        return None
    marker = Path(sweep_dir) / PARENT_FILE
    return json.loads(marker.read_text())["run_id"] if marker.is_file() else None


def job_key(overrides: list[str]) -> str:
    """What a sweep job is (its overrides, sorted), without how it is run (resume flags, paths)."""
    return ",".join(sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_PART_OF_JOB)))


def previous_child(cfg: DictConfig, parent_run_id: str, key: str) -> Any | None:
    """The newest child run of this parent made by the same job, if a resumed sweep ran it before."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.mlflow.tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=5000)
    return next((child for child in children if child.data.tags.get(JOB_TAG) == key), None)


def claim_output_dir(output_dir: Path, run_id: str, tracking_uri: str) -> bool:
    """Mark output_dir as this run's; True when it already was (its checkpoints are this run's to resume)."""
    marker = output_dir / RUN_FILE
    mine = marker.is_file() and json.loads(marker.read_text()).get("run_id") == run_id
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
    return mine


def run_to_resume(cfg: DictConfig) -> str | None:
    """With train.resume=auto: the MLflow run that earlier wrote into this output dir, if it is in this store.

    A run whose config differs from this one (other than train.resume) is refused: resuming it would mix
    two experiments in one run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    marker = Path(cfg.output_dir) / RUN_FILE
    if cfg.train.resume != "auto" or not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    if info.get("tracking_uri") != cfg.mlflow.tracking_uri:
        return None
    try:
        logged = MlflowClient(cfg.mlflow.tracking_uri).get_run(info["run_id"]).data.params
    except MlflowException:
        return None  # the run was deleted from the store: start afresh
    now = flatten(config_container(cfg))
    differ = [key for key, value in now.items()
              if key in logged and logged[key] != value and key != "train.resume"]
    if differ:
        raise SetupError(f"train.resume=auto: {cfg.output_dir} holds run {info['run_id']} with a different config ("
                         + ", ".join(f"{k}={logged[k]} there, {now[k]} now" for k in differ[:5])
                         + "): use the same overrides as that run, or a new hydra.run.dir")
    return info["run_id"]


@contextmanager
def job_run(cfg: DictConfig, parent_run_id: str | None, run_name: str, tags: dict[str, str],
            resume_run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run for one job (or, resuming, the job's earlier run); its end status says how the job ended.

    Ctrl-C ends it KILLED, an exception FAILED (with the reason as tags and the traceback as an artifact),
    and the exception goes on up: the caller decides whether the sweep continues.
    """
    import mlflow

    use_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id)
        previous = run.data.tags.get("slt.resumed", "0")
        mlflow.set_tags({**tags, "slt.resumed": str(int(previous) + 1), STATUS_TAG: "running"})
    else:
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
    """Params = the flattened resolved config (secrets masked); artifact = the same as YAML.

    A resumed run keeps the params it has (MLflow refuses to change one) and gets those it lacks."""
    import mlflow

    container = config_container(cfg)
    params = flatten(container)
    already = mlflow.active_run().data.params if mlflow.active_run() else {}
    items = [(key, value) for key, value in params.items() if key not in already]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[start:start + 100]))
    mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(container)), "config.yaml")


# --------------------------------------------------------------------------- the sweep


class MlflowSweepCallback(Callback):
    """Parent run per multirun: created before the first job, closed with counts and the best child."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        HydraConfig.instance().set_config(config)  # so ${hydra:runtime.cwd} in the store's URI resolves here too
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        experiment_id = use_store(config.mlflow.tracking_uri, config.mlflow.experiment_name)
        client = MlflowClient(config.mlflow.tracking_uri)
        overrides = redact(" ".join(config.hydra.overrides.task))[:MAX_PARAM_LENGTH]
        name = OmegaConf.select(config, "sweep.name", default=None)
        resumed = self.resumable_parent(client, sweep_dir) if name and config.sweep.resume else None
        if resumed is not None:  # same name again: the same parent; its finished jobs will be skipped
            count = int(resumed.data.tags.get("slt.resumed", "0")) + 1
            client.update_run(resumed.info.run_id, status="RUNNING")
            client.set_tag(resumed.info.run_id, "slt.resumed", str(count))
            client.set_tag(resumed.info.run_id, f"slt.resume_{count}.overrides", overrides)
            write_parent_marker(sweep_dir, resumed.info.run_id, experiment_id, config)
            return
        run = client.create_run(
            experiment_id,
            run_name=config.mlflow.run_name or name or f"sweep {sweep_dir.name}",
            tags={"slt.role": "sweep", "slt.sweep_dir": str(sweep_dir.resolve()),
                  "git_commit": git_commit() or "unknown"},
        )
        client.log_param(run.info.run_id, "sweep.overrides", overrides)
        try:
            text = OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(config, resolve=True))))
        except Exception:  # some hydra: fields only resolve inside a job
            text = OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(config, resolve=False))))
        client.log_text(run.info.run_id, text, "sweep_config.yaml")
        write_parent_marker(sweep_dir, run.info.run_id, experiment_id, config)

    @staticmethod
    def resumable_parent(client: Any, sweep_dir: Path) -> Any | None:
        """The parent run a sweep of this name made before, if it is still in this store."""
        from mlflow.exceptions import MlflowException

        marker = sweep_dir / PARENT_FILE
        if not marker.is_file():
            return None
        try:
            return client.get_run(json.loads(marker.read_text())["run_id"])
        except MlflowException:
            return None

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
        objective = config.eval.objective  # several (Optuna multi-objective): the best by the first one
        objective = objective if isinstance(objective, str) else objective[0]
        scored = [c for c in children if objective in c.data.metrics]
        if scored:
            best = max(scored, key=lambda c: c.data.metrics[objective])
            client.set_tag(info["run_id"], "slt.best_child", best.info.run_id)
            client.set_tag(info["run_id"], "slt.best_child_name", best.info.run_name)
            client.log_metric(info["run_id"], f"best_{objective}", best.data.metrics[objective])
        client.set_tag(info["run_id"], STATUS_TAG, "finished")
        client.set_terminated(info["run_id"], "FINISHED")


def end_parent_killed(sweep_dir: str | None) -> None:
    """Ctrl-C in a sweep: the parent ends KILLED too (on_multirun_end never runs after an interrupt)."""
    from mlflow.tracking import MlflowClient

    marker = Path(sweep_dir or "") / PARENT_FILE
    if sweep_dir is None or not marker.is_file():
        return
    info = json.loads(marker.read_text())
    client = MlflowClient(info["tracking_uri"])
    client.set_tag(info["run_id"], STATUS_TAG, "killed")
    client.set_terminated(info["run_id"], "KILLED")
