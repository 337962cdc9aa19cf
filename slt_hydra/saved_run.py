"""A trained run, reloaded: its config groups and adapter from a run directory, an MLflow run or an adapter folder,
and its base model loaded as the run loaded it. Shared by the CLIs that use what was trained (translate, merge).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from slt_hydra.config import compose, load_option, resolve_hardware
from slt_hydra.errors import CliError, SetupError
from slt_hydra.kinds import kind_for
from slt_hydra.machine import detect_machine
from slt_hydra.models import locate_model
from slt_hydra.pose_model import ENCODER_FILE as POSE_ENCODER_FILE
from slt_hydra.quiet import quiet_libraries
from slt_hydra.tracking import default_tracking_uri

CONFIG_GROUPS = ("model", "quant", "hardware", "dataset", "generate", "lora", "cache_dir")
OPTIONAL_GROUPS = ("pose",)  # pose input: how the run read its pose files (runs before it had no such group)


@dataclass
class AdapterRun:
    """What a trained run left that inference needs: its config groups and its adapter folder."""

    cfg: DictConfig  # model, quant, hardware, dataset, generate, lora, cache_dir, pose (unresolved: read lazily)
    adapter_dir: Path
    origin: str  # where it came from, for messages
    notes: list[str] = field(default_factory=list)  # things the user should know (printed on stderr)
    _tmp: str | None = None  # downloaded MLflow artifacts, removed by cleanup()

    def cleanup(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--run-dir | --run-id [--tracking-uri] | --adapter [--base]: where the trained adapter comes from."""
    group = parser.add_argument_group("which trained adapter (exactly one of --run-dir, --run-id, --adapter)")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-dir", metavar="DIR", type=Path,
                       help="a run's output directory (hydra.run.dir): uses DIR/.hydra/config.yaml and DIR/adapter")
    which.add_argument("--run-id", metavar="ID",
                       help="an MLflow run id: downloads its config.yaml and adapter/ artifacts")
    which.add_argument("--adapter", metavar="DIR", type=Path,
                       help="a PEFT adapter folder (adapter_config.json); with --base")
    group.add_argument("--base", metavar="MODEL_DIR", type=Path,
                       help="with --adapter: the base model folder (default: the adapter's base_model_name_or_path "
                            "when that is a local folder)")
    group.add_argument("--tracking-uri", metavar="URI",
                       help="with --run-id: the MLflow store (default: $MLFLOW_TRACKING_URI, else "
                            "sqlite:///$PWD/mlflow.db)")


def _check_adapter_dir(adapter_dir: Path, what: str) -> None:
    if (adapter_dir / "adapter_config.json").is_file():
        return
    full = adapter_dir.parent / "model"
    if full.is_dir() and (full / "config.json").is_file():
        raise CliError(f"{what}: no LoRA adapter at {adapter_dir}, but {full} holds a fully fine-tuned model "
                       "(lora.enabled=false): load it directly with AutoModelForCausalLM.from_pretrained")
    if not adapter_dir.exists():
        raise CliError(f"{what}: adapter folder {adapter_dir} does not exist")
    raise CliError(f"{what}: {adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")


def _load_yaml(path: Path, what: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # yaml or OmegaConf syntax errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CliError(f"{what}: cannot read {path} ({type(error).__name__}: {first})") from error
    missing = [g for g in CONFIG_GROUPS if g not in cfg]
    if missing:
        raise CliError(f"{what}: {path} lacks the config group(s) {missing}: is it a slt_hydra run config?")
    return OmegaConf.masked_copy(cfg, [g for g in CONFIG_GROUPS + OPTIONAL_GROUPS if g in cfg])


def _absolute_model_path(cfg: DictConfig, launch_dir: str | None) -> None:
    """A relative model.path was relative to where the run was launched: make it absolute."""
    path = cfg.model.get("path")
    if path and launch_dir and not Path(os.path.expandvars(str(path))).expanduser().is_absolute():
        cfg.model.path = str(Path(launch_dir) / os.path.expandvars(str(path)))


def _from_run_dir(run_dir: Path) -> AdapterRun:
    what = f"--run-dir {run_dir}"
    if not run_dir.is_dir():
        raise CliError(f"{what}: no such directory (give the hydra.run.dir of a finished `python -m slt_hydra` run)")
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise CliError(f"{what}: {config} not found: not the output directory of a `python -m slt_hydra` run")
    _check_adapter_dir(run_dir / "adapter", what)
    cfg = _load_yaml(config, what)
    launch_dir = None
    try:
        launch_dir = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # no hydra.yaml, or unreadable: a relative model.path then stays relative to $PWD
        pass
    _absolute_model_path(cfg, launch_dir)
    return AdapterRun(cfg, run_dir / "adapter", f"run directory {run_dir}")


def _from_run_id(run_id: str, tracking_uri: str | None) -> AdapterRun:
    uri = default_tracking_uri(tracking_uri)
    what = f"--run-id {run_id}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise CliError(f"{what}: no MLflow store at {uri} (the file does not exist); pass --tracking-uri URI "
                       "or set MLFLOW_TRACKING_URI")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Updating database tables" chatter
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        raise CliError(f"{what}: no such run in the MLflow store {uri} ({str(error).splitlines()[0]})") from error
    tmp = tempfile.mkdtemp(prefix="slt_hydra_run_")
    try:
        try:
            config = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                         dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as error:
            raise CliError(f"{what}: the run has no config.yaml artifact ({str(error).splitlines()[0]}); "
                           "was it made by `python -m slt_hydra`?") from error
        try:
            adapter = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter",
                                                          dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as error:
            status = run.data.tags.get("slt.status", run.info.status)
            raise CliError(f"{what}: the run ({status}) has no adapter/ artifact: it was trained with "
                           "mlflow.log_adapter=false or lora.enabled=false, or ended before saving; use "
                           "--run-dir on its output directory instead") from error
        cfg = _load_yaml(Path(config), what)
        _check_adapter_dir(Path(adapter), what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AdapterRun(cfg, Path(adapter), f"MLflow run {run_id} ({uri})", _tmp=tmp)


def _from_adapter(adapter_dir: Path, base: Path | None) -> AdapterRun:
    what = f"--adapter {adapter_dir}"
    _check_adapter_dir(adapter_dir, what)
    if base is None:
        try:
            recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError) as error:
            raise CliError(f"{what}: unreadable adapter_config.json ({error})") from error
        if not recorded or not Path(recorded).is_dir():
            raise CliError(f"{what}: pass --base MODEL_DIR (the adapter names its base as {recorded!r}, "
                           "which is not a local folder)")
        base = Path(recorded)
    notes = []
    run_config = adapter_dir.parent / ".hydra" / "config.yaml"
    if run_config.is_file():  # the adapter of a run directory: keep the run's prompt, quantization, hardware
        cfg = _load_yaml(run_config, what)
    else:
        pose = (adapter_dir / POSE_ENCODER_FILE).is_file()  # a pose run's: the pose corpus's prompt
        cfg = OmegaConf.masked_copy(compose(["model=local"] + ["dataset=demo_pose"] * pose),
                                    list(CONFIG_GROUPS + OPTIONAL_GROUPS))
        notes.append(f"no run config next to the adapter: using the default {'pose ' * pose}experiment's prompt and "
                     "generation settings, base weights unquantized (use --run-dir or --run-id to reload a run as "
                     "trained)")
    for key, value in {"name": "local", "hub_id": None, "gguf": None, "revision": None,
                       "path": str(base.expanduser().absolute())}.items():
        cfg.model[key] = value
    return AdapterRun(cfg, adapter_dir, f"adapter {adapter_dir} on {base}", notes)


def resolve_run(args: argparse.Namespace) -> AdapterRun:
    """The run named on the command line; CliError if it cannot be found. Loads no model."""
    if args.base is not None and args.adapter is None:
        raise CliError("--base only goes with --adapter (a run's config names its own base model)")
    if args.tracking_uri is not None and args.run_id is None:
        raise CliError("--tracking-uri only goes with --run-id")
    if args.run_dir is not None:
        run = _from_run_dir(args.run_dir)
    elif args.run_id is not None:
        run = _from_run_id(args.run_id, args.tracking_uri)
    else:
        run = _from_adapter(args.adapter, args.base)
    return run


def is_pose_run(run: AdapterRun) -> bool:
    """Trained on pose keypoints: its adapter holds a pose encoder (pose_encoder.json beside the weights)."""
    return run.cfg.dataset.get("input", "gloss") == "pose" or (run.adapter_dir / POSE_ENCODER_FILE).is_file()


def pose_settings(run: AdapterRun) -> dict:
    """How the run read its poses: the adapter's pose_encoder.json (parts, dims, normalize, max_frames, layout),
    and from the run's pose group what the encoder does not record (on_long, on_nonfinite, fps)."""
    from slt_hydra.pose_model import load_encoder_settings

    try:
        settings = load_encoder_settings(run.adapter_dir)
    except SetupError as error:
        raise CliError(str(error)) from error
    recorded = run.cfg.get("pose") or {}
    defaults = {"on_long": "truncate", "on_nonfinite": "drop", "fps": 24.0}
    return {**settings, **{key: recorded.get(key, value) for key, value in defaults.items()}}


def fit_hardware(run: AdapterRun) -> None:
    """hardware=auto -> this machine's profile; a CUDA run reloaded where there is no CUDA -> the cpu profile."""
    machine = detect_machine()
    resolve_hardware(run.cfg, machine)
    if run.cfg.hardware.device == "cuda" and not machine.cuda:
        run.notes.append(f"the run used hardware={run.cfg.hardware.name} (CUDA) and this machine has no CUDA "
                         "device: loading on CPU with the cpu profile")
        run.cfg.hardware = OmegaConf.merge(run.cfg.hardware, load_option("hardware", "cpu"))


def quiet_loading() -> None:
    """No per-tensor 'Loading weights' bars (ours is the one that matters), no v6 deprecation chatter."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated and will be removed in v6")
    quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer_like_run(run: AdapterRun, tokenizer):
    """The tokenizer the run saved beside its adapter (what it trained and translated with), else the base's."""
    if not (run.adapter_dir / "tokenizer_config.json").is_file():
        return tokenizer
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(run.adapter_dir), local_files_only=True)
    if saved.pad_token is None:
        saved.pad_token = tokenizer.pad_token or saved.eos_token
    return saved


def load_adapted_model(run: AdapterRun, kind=None):
    """Base model exactly as the run loaded it (quantization, dtype, device) + the trained adapter. ``kind``: the
    run's model kind when the caller built it (a pose run's, around the poses to translate)."""
    source = locate_model(run.cfg.model, run.cfg.cache_dir)
    if source.local:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if run.cfg.hardware.get("torch_threads"):
        import torch

        torch.set_num_threads(run.cfg.hardware.torch_threads)
    kind = kind or kind_for(run.cfg)
    base, tokenizer = kind.load(run.cfg, source)
    model = kind.attach_adapter(base, run.adapter_dir)
    model.eval()
    return model, load_tokenizer_like_run(run, tokenizer)
