"""One experiment, top to bottom: check -> load -> zero-shot -> train -> save -> translate -> score -> log.

``prepare`` does everything that can fail on bad input (config rules, data files, where the weights are) in
seconds, before a model is loaded. ``execute`` is the heavy part, inside an MLflow run; what differs between kinds
of model (chat LLM, seq2seq) is behind ``kinds.kind_for(cfg)``, so the story is told once, here.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from slt_hydra import distributed, tracking, validate
from slt_hydra.config import command_line_overrides, resolve_hardware, translation_batch_size, weights_kind
from slt_hydra.data import Example, load_splits
from slt_hydra.errors import SetupError
from slt_hydra.fewshot import shot_picker
from slt_hydra.kinds import kind_for
from slt_hydra.machine import Machine, detect_machine, peak_memory_gb, reset_peak_memory
from slt_hydra.memory import estimate_memory_gb, resolve_auto_quant
from slt_hydra.metrics import SCORES
from slt_hydra.models import ModelSource, cpu_4bit_inference_packing, locate_model
from slt_hydra.pose import PoseCorpus, load_pose_corpus
from slt_hydra.pose_demo import write_pose_demo
from slt_hydra.pose_model import load_encoder_settings
from slt_hydra.precision import PrecisionChoice
from slt_hydra.quiet import note_cpu_4bit_kernels
from slt_hydra.scorer import process_scorer
from slt_hydra.training import (
    mlflow_callback,
    resume_checkpoint,
    train_and_measure,
    training_kernels,
    truncation_counts,
)

log = logging.getLogger("slt_hydra")


@dataclass
class Prepared:
    machine: Machine
    splits: dict[str, list[Example]]
    data_counts: dict[str, int]
    source: ModelSource
    precision: PrecisionChoice | None = None  # hardware.precision=auto: what was measured and chosen
    poses: PoseCorpus | None = None  # dataset.input=pose: every example's keypoints, read and checked


def prepare(cfg: DictConfig) -> Prepared:
    """All checks that need no model: raise one SetupError listing every problem found."""
    machine = detect_machine()
    precision = resolve_hardware(cfg, machine)
    resolve_auto_quant(cfg, machine)  # quant=auto -> the highest precision whose memory plan fits
    problems = validate.check(cfg, machine)
    if problems:
        raise SetupError("this experiment cannot run as configured:\n  - " + "\n  - ".join(problems))
    if cfg.dataset.name == "demo_pose":  # the synthetic pose corpus is written on first use
        write_pose_demo(Path(cfg.dataset.path))
    splits, counts = load_splits(cfg.dataset)
    poses = None
    if cfg.dataset.input == "pose":
        poses = load_pose_corpus(cfg.dataset, cfg.pose, splits)
        counts.update(poses.counts)
    if problems := validate.data_problems(cfg, splits):
        raise SetupError("this experiment cannot run on this corpus as configured:\n  - " + "\n  - ".join(problems))
    if cfg.eval.adapter and not (Path(cfg.eval.adapter).expanduser() / "adapter_config.json").is_file():
        raise SetupError(f"eval.adapter={cfg.eval.adapter} is not a LoRA adapter directory (no adapter_config.json):"
                         " point it at a run's adapter/ folder, e.g. outputs/DATE/TIME_MODEL_QUANT/adapter.")
    if cfg.eval.adapter and poses is not None:
        load_encoder_settings(Path(cfg.eval.adapter).expanduser())  # the encoder's shape: refused now if missing
    source = locate_model(cfg.model, cfg.cache_dir)
    if source.local:  # nothing below needs the Hub: make sure nothing tries
        os.environ["HF_HUB_OFFLINE"] = "1"
    return Prepared(machine, splits, counts, source, precision, poses)


def objective_value(cfg: DictConfig, metrics: dict) -> float | list[float] | None:
    """What a sweeper gets back: eval.objective's value, or a list of values when it names several metrics
    (Optuna's multi-objective search). None when one is missing or not finite (a failed job): Optuna then marks
    the trial FAIL and goes on, where a NaN would stop its sweep; the basic sweeper ignores return values."""
    names = [cfg.eval.objective] if isinstance(cfg.eval.objective, str) else list(cfg.eval.objective)
    values = [float(metrics.get(name, float("nan"))) for name in names]
    if not all(math.isfinite(value) for value in values):
        return None
    return values[0] if isinstance(cfg.eval.objective, str) else values


def run(cfg: DictConfig) -> float | list[float] | None:
    """Run one job. Single run: bad input raises SetupError. Sweep job: every failure is recorded
    in the job's MLflow child run and None is returned, so the sweep goes on."""
    if not distributed.is_main():  # ranks 1..N-1 under torchrun: train along with rank 0, log nothing
        log.setLevel(logging.WARNING)
        with distributed.rank_errors(cfg):
            return execute(cfg, prepare(cfg))
    if distributed.launcher_run_id():  # rank 0 of the torchrun `python -m slt_hydra` started: log into its run
        with distributed.rank_errors(cfg), distributed.launcher_run(cfg):
            return execute(cfg, prepare(cfg))
    choices, sweep_dir, overrides = tracking.hydra_runtime()
    tags = {f"choice.{group}": str(option) for group, option in choices.items() if not group.startswith("hydra")}
    base_name = cfg.mlflow.run_name or "-".join(
        str(choices.get(group, cfg[group].get("name", group))) for group in ("model", "quant", "lora"))
    if sweep_dir is None:
        prepared = prepare(cfg)
        with tracking.job_run(cfg, None, base_name, tags, resume_run_id=tracking.run_to_resume(cfg)):
            tracking.log_config(cfg)
            return execute(cfg, prepared)

    parent = tracking.sweep_parent(sweep_dir)
    key = tracking.job_key(command_line_overrides())
    earlier = tracking.previous_child(cfg, parent, key) if parent else None
    if earlier is not None and earlier.data.tags.get(tracking.STATUS_TAG) in ("finished", "invalid"):
        log.info("resumed sweep: job %s already ended %s in run %s, skipped", key,
                 earlier.data.tags[tracking.STATUS_TAG], earlier.info.run_id)
        return objective_value(cfg, earlier.data.metrics)
    try:
        name = tracking.child_name(sweep_dir, command_line_overrides(), overrides or base_name)
        with tracking.job_run(cfg, parent, name, {**tags, tracking.JOB_TAG: key},
                              resume_run_id=earlier.info.run_id if earlier else None):
            try:
                prepared = prepare(cfg)
            finally:  # a refused job keeps its config too, with hardware=auto resolved if it got that far
                tracking.log_config(cfg)
            return execute(cfg, prepared)
    except KeyboardInterrupt:
        tracking.end_parent_killed(sweep_dir)
        raise
    except Exception as error:  # recorded in MLflow by job_run; the basic sweeper would stop on a raise
        log.error("job failed, recorded in MLflow, the sweep goes on: %s", error)
        return None


def write_predictions(path: Path, examples: list[Example], hypotheses: list[str],
                      zero_shot: list[str] | None) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "reference", "hypothesis"] + (["zero_shot"] if zero_shot else []))
        for i, example in enumerate(examples):
            writer.writerow([example.source, example.target, hypotheses[i]] + ([zero_shot[i]] if zero_shot else []))


def execute(cfg: DictConfig, prepared: Prepared) -> float | list[float] | None:
    if distributed.should_launch(cfg):  # hardware.num_processes > 1: torchrun runs this job; rank 0 logs here
        return objective_value(cfg, distributed.launch(cfg))
    scorer = process_scorer()  # its imports (~1 s) run in a helper process, beside torch's and the model's here
    import mlflow
    import torch
    from transformers import EarlyStoppingCallback, set_seed

    started = time.perf_counter()
    reset_peak_memory(cfg.hardware.device)
    set_seed(cfg.train.seed)
    if cfg.hardware.torch_threads:
        torch.set_num_threads(cfg.hardware.torch_threads)
    output_dir = Path(cfg.output_dir)
    if not distributed.is_main():  # other ranks log nothing (an mlflow call with no active run would start one)
        mlflow = distributed.NoTracking()
    checkpoint = resume_checkpoint(cfg, output_dir)
    done_before = mlflow.get_run(mlflow.active_run().info.run_id).data.metrics if checkpoint else {}
    kind = kind_for(cfg, prepared.poses)

    mlflow.set_tags({
        "model": cfg.model.name, "model_family": cfg.model.family, "params_b": str(cfg.model.params_b),
        "precision": weights_kind(cfg), "quant": cfg.quant.name, "hardware": cfg.hardware.name,
        "dataset": cfg.dataset.name, "lora_r": str(cfg.lora.r) if cfg.lora.enabled else "full",
        "git_commit": tracking.git_commit() or "unknown",
    })
    mlflow.log_metrics({f"data_{key}": value for key, value in prepared.data_counts.items()})
    if cfg.hardware.device == "cpu":
        mlflow.set_tag("cpu_precision", cfg.hardware.precision)
    if prepared.precision is not None:  # hardware.precision=auto: the choice, its reason and the rates behind it
        mlflow.set_tags({"cpu_precision_reason": prepared.precision.reason,
                         "cpu_precision_cached": str(prepared.precision.cached).lower()})
        mlflow.log_metrics({f"calibration_gflops_{name}": rate for name, rate in prepared.precision.gflops.items()})
        log.info("hardware.precision=auto -> %s: %s%s", prepared.precision.precision, prepared.precision.reason,
                 " (cached)" if prepared.precision.cached else "")
    estimate = estimate_memory_gb(cfg)
    if estimate is not None:
        mlflow.log_metric("memory_estimate_gb", estimate)

    # FSDP/ZeRO-3: the training arguments first, so the process group and DeepSpeed's config exist at load time.
    args = kind.training_arguments(cfg, output_dir) if distributed.sharded(cfg.hardware) and not cfg.eval.only \
        else None

    # Model.
    note_cpu_4bit_kernels(cfg.quant.load_in_4bit, cfg.hardware.device, prepared.machine.cpu_bf16)
    t = time.perf_counter()
    model, tokenizer = kind.load(cfg, prepared.source)
    if not cfg.eval.only:  # bitsandbytes' CPU inference packing drops the gradient (models.py says how)
        cpu_4bit_inference_packing(model, enabled=False)
    mlflow.log_metric("model_load_seconds", time.perf_counter() - t)
    mlflow.set_tags({"param_count": str(sum(p.numel() for p in model.parameters())), **kind.tags(cfg, model)})
    mlflow.log_metric("model_memory_gb", model.get_memory_footprint() / 2**30)  # weights as really held
    log.info("loaded %s (%s, %s) in %.1fs", cfg.model.name, prepared.source.location, kind.name,
             time.perf_counter() - t)

    batch_size = translation_batch_size(cfg)
    splits = prepared.splits
    logged: dict[str, float] = {}  # every result metric, so the objective is whichever one was asked for

    def log_metrics(values: dict[str, float]) -> None:
        logged.update(values)
        mlflow.log_metrics(values)

    def translate_and_score(generator, split: str, prefix: str, shots_for=None) -> list[str]:
        t0 = time.perf_counter()
        examples = splits[split]
        hypotheses = kind.translate(cfg, generator, tokenizer, [e.source for e in examples], batch_size, shots_for)
        seconds = time.perf_counter() - t0
        scores = scorer.score(hypotheses, [e.target for e in examples], tokenize=cfg.dataset.tokenize,
                              lowercase=cfg.dataset.lowercase, tokenized=cfg.dataset.tokenized)
        log_metrics({f"{prefix}{split}_{m}": scores[m] for m in SCORES})
        log_metrics({f"{prefix}{split}_translations_per_second": len(examples) / seconds})
        mlflow.set_tag("bleu_signature", scores["bleu_signature"])
        log.info("%s%s: BLEU-4 %.2f chrF %.2f ROUGE-L %.2f (%d sentences, %.1fs)", prefix, split,
                 scores["bleu4"], scores["chrf"], scores["rougeL"], len(examples), seconds)
        return hypotheses

    def score_splits(generator, zero_shot: list[str] | None = None, shots_for=None) -> None:
        for split in cfg.eval.splits:
            hypotheses = translate_and_score(generator, split, "", shots_for)
            if not distributed.is_main():  # FSDP/ZeRO-3: every rank translates in step, rank 0 writes
                continue
            path = output_dir / f"predictions_{split}.csv"
            write_predictions(path, splits[split], hypotheses, zero_shot if split == "test" else None)
            mlflow.log_artifact(str(path), "predictions")
            if split == "test":  # shown side by side in the UI's artifact view
                mlflow.log_table({"source": [e.source for e in splits[split]],
                                  "reference": [e.target for e in splits[split]],
                                  "hypothesis": hypotheses, **({"zero_shot": zero_shot} if zero_shot else {})},
                                 artifact_file="predictions/test_table.json")

    def finish() -> float | list[float] | None:
        wall = time.perf_counter() - started
        log_metrics({"wall_seconds": wall, "peak_memory_gb": peak_memory_gb(cfg.hardware.device)})
        objective = objective_value(cfg, logged)
        log.info("done in %.0fs; %s = %s; outputs in %s", wall, cfg.eval.objective, objective, output_dir)
        return objective

    if cfg.eval.only:  # score the base model, or a saved adapter, with k-shot prompts if asked
        mlflow.set_tags({"mode": "eval_only", "shots": str(cfg.eval.shots),
                         "shot_selection": cfg.eval.shot_selection, "adapter": str(cfg.eval.adapter)})
        generator = kind.attach_adapter(model, Path(cfg.eval.adapter).expanduser()) if cfg.eval.adapter else model
        score_splits(generator, shots_for=shot_picker(splits["train"], cfg.eval.shots, cfg.eval.shot_selection,
                                                      cfg.train.seed))
        return finish()
    mlflow.set_tag("mode", "train")

    # Zero-shot: the same model before training, on the test split (the before/after comparison).
    zero_shot, zero_shot_file = None, output_dir / "zeroshot_test.json"
    if cfg.eval.zero_shot and "zeroshot_test_bleu4" in done_before and zero_shot_file.is_file():
        zero_shot = json.loads(zero_shot_file.read_text())  # resumed: scored before the interruption
    elif cfg.eval.zero_shot and distributed.is_main() and not distributed.sharded(cfg.hardware):
        # (rank 0 alone; FSDP/ZeRO-3 skip it: no process holds the whole model before training)
        zero_shot = translate_and_score(model, "test", "zeroshot_")
        zero_shot_file.write_text(json.dumps(zero_shot, ensure_ascii=False))

    # Train, with the lora group's adapter; checkpoint-N/ folders land beside the predictions.
    evaluate_dev = cfg.train.eval_strategy != "no"
    callbacks = [mlflow_callback()]
    if cfg.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    t = time.perf_counter()
    trainer = kind.trainer(cfg, model, tokenizer, splits, args or kind.training_arguments(cfg, output_dir),
                           evaluate_dev, callbacks)
    mlflow.log_metric("trainer_setup_seconds", time.perf_counter() - t)  # the trainer tokenizes, wraps with LoRA
    mlflow.set_tag("trainable_params", str(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)))
    log_metrics(truncation_counts(trainer, len(splits["train"]), cfg.train.max_length))
    with training_kernels(cfg, model, trainer) as attention:
        if attention is not None:
            mlflow.set_tags({"train_attention": attention.kernel, "train_attention_reason": attention.reason,
                             "train_attention_cached": str(attention.cached).lower()})
            mlflow.log_metrics({f"attention_ms_{name}": ms for name, ms in attention.milliseconds.items()})
            log.info("hardware.train_attention -> %s: %s%s", attention.kernel, attention.reason,
                     " (cached)" if attention.cached else "")
        train_and_measure(trainer, evaluate_dev, checkpoint, done_before, log_metrics)
    cpu_4bit_inference_packing(trainer.model, enabled=True)  # training is over: translation may use it
    log_metrics(kind.after_training(trainer, logged["train_seconds"]))

    # The adapter (or the full model, without LoRA) and its tokenizer. Saved before translating: in several
    # processes every rank takes part (FSDP/ZeRO-3 gather the shards) and rank 0 writes.
    adapter_dir = output_dir / ("adapter" if cfg.lora.enabled else "model")
    trainer.save_model(str(adapter_dir))
    if not distributed.translates(cfg):  # DDP/ZeRO-2: rank 0 translates with its full copy; this rank is done
        return None
    if distributed.is_main():
        tokenizer.save_pretrained(str(adapter_dir))
    if cfg.mlflow.log_adapter and cfg.lora.enabled:
        mlflow.log_artifacts(str(adapter_dir), "adapter")

    # Translate and score the requested splits with the trained model.
    score_splits(trainer.model, zero_shot)
    return finish()
