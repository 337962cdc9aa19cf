"""One experiment, top to bottom: check -> load -> zero-shot -> train -> translate -> score -> log.

``prepare`` does everything that can fail on bad input (config rules, data files, where the weights
are) in seconds, before a model is loaded. ``execute`` is the heavy part, inside an MLflow run.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from slt_hydra import distributed, tracking, validate
from slt_hydra.data import Example, load_splits, to_prompt_completion
from slt_hydra.errors import SetupError
from slt_hydra.machine import Machine, auto_hardware_profile, detect_machine
from slt_hydra.metrics import perplexity, score_corpus
from slt_hydra.models import ModelSource, load_model_and_tokenizer, locate_model, peft_config
from slt_hydra.schema import translation_batch_size
from slt_hydra.validate import SCORES

log = logging.getLogger("slt_hydra")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Prepared:
    machine: Machine
    splits: dict[str, list[Example]]
    data_counts: dict[str, int]
    source: ModelSource


def command_line_overrides() -> list[str]:
    """The running Hydra job's overrides (``lora.r=8`` ...), empty outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resolve_hardware(cfg: DictConfig, machine: Machine, overrides: list[str] | None = None) -> None:
    """Replace hardware=auto by the profile that fits this machine (cpu, gpu_16gb, ...).

    ``hardware.KEY=VALUE`` overrides from the command line still win over the chosen profile."""
    if cfg.hardware.name != "auto":
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hardware = OmegaConf.merge(cfg.hardware,
                               OmegaConf.load(CONF_DIR / "hardware" / f"{auto_hardware_profile(machine)}.yaml"))
    mine = [o for o in (command_line_overrides() if overrides is None else overrides)
            if o.lstrip("+~").startswith("hardware.")]
    for override in OverridesParser.create().parse_overrides(mine):
        OmegaConf.update(hardware, override.key_or_group.removeprefix("hardware."), override.value(), merge=True)
    cfg.hardware = hardware


def prepare(cfg: DictConfig) -> Prepared:
    """All checks that need no model: raise one SetupError listing every problem found."""
    machine = detect_machine()
    resolve_hardware(cfg, machine)
    from slt_hydra.plan import resolve_auto_quant  # quant=auto -> the highest precision whose memory plan fits
    resolve_auto_quant(cfg, machine)
    problems = validate.check(cfg, machine)
    if problems:
        raise SetupError("this experiment cannot run as configured:\n  - " + "\n  - ".join(problems))
    splits, counts = load_splits(cfg.dataset)
    if cfg.eval.adapter and not (Path(cfg.eval.adapter).expanduser() / "adapter_config.json").is_file():
        raise SetupError(f"eval.adapter={cfg.eval.adapter} is not a LoRA adapter directory (no adapter_config.json):"
                         " point it at a run's adapter/ folder, e.g. outputs/DATE/TIME_MODEL_QUANT/adapter.")
    source = locate_model(cfg.model, cfg.cache_dir)
    if source.local:  # nothing below needs the Hub: make sure nothing tries
        os.environ["HF_HUB_OFFLINE"] = "1"
    return Prepared(machine, splits, counts, source)


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


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """With train.resume=auto, the newest checkpoint-N/ in output_dir, if the active run wrote it.

    Claims output_dir for the active run either way, so a later resume knows whose checkpoints these are."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        return None
    mine = tracking.claim_output_dir(output_dir, active.info.run_id, cfg.mlflow.tracking_uri)
    if cfg.train.resume != "auto":
        return None
    # The newest complete one: the Trainer writes trainer_state.json last, so a kill mid-save leaves none.
    complete = [path for path in output_dir.glob("checkpoint-*")
                if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()]
    checkpoint = str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None
    if checkpoint and not mine:
        log.warning("train.resume=auto: %s is another run's checkpoint, not resumed; training from the start",
                    checkpoint)
        return None
    if checkpoint is None:
        log.info("train.resume=auto: no checkpoint-N/ in %s yet, training from the start", output_dir)
    return checkpoint


def train_and_measure(trainer, evaluate_dev: bool, checkpoint: str | None, done_before: dict, log_metrics) -> None:
    """Dev loss before training (unless a resumed run has it), training (from checkpoint, if resuming), its
    throughput in real tokens, and dev loss after. Shared by the LLM and seq2seq paths."""
    import mlflow

    if evaluate_dev and "zeroshot_dev_loss" not in done_before:  # fresh LoRA adapters are a no-op: the base model
        loss = trainer.evaluate()["eval_loss"]
        log_metrics({"zeroshot_dev_loss": loss, "zeroshot_dev_perplexity": perplexity(loss)})
    if checkpoint:
        log.info("train.resume=auto: continuing from %s", checkpoint)
        mlflow.set_tag("resumed_from", Path(checkpoint).name)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = result.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    log_metrics({
        "train_seconds": train_seconds,
        "train_tokens": tokens,
        "train_tokens_per_second": tokens / train_seconds if train_seconds else 0.0,
        "train_loss_final": result.training_loss,
    })
    if evaluate_dev:  # with load_best_model_at_end, this is the best checkpoint's
        loss = trainer.evaluate()["eval_loss"]
        log_metrics({"dev_loss": loss, "dev_perplexity": perplexity(loss)})


def score_translations(cfg: DictConfig, examples: list[Example], hypotheses: list[str], seconds: float,
                       name: str, log_metrics) -> None:
    """Score one split's translations and log `<name>_<metric>` and its translations/s (LLM and seq2seq paths)."""
    import mlflow

    scores = score_corpus(hypotheses, [e.target for e in examples], tokenize=cfg.dataset.tokenize,
                          lowercase=cfg.dataset.lowercase)
    log_metrics({f"{name}_{m}": scores[m] for m in SCORES})
    log_metrics({f"{name}_translations_per_second": len(examples) / seconds})
    mlflow.set_tag("bleu_signature", scores["bleu_signature"])
    log.info("%s: BLEU-4 %.2f chrF %.2f ROUGE-L %.2f (%d sentences, %.1fs)", name,
             scores["bleu4"], scores["chrf"], scores["rougeL"], len(examples), seconds)


def reset_peak_memory(device: str) -> None:
    """Per-job peaks even when jobs share a process (Linux: writing 5 to clear_refs resets VmHWM)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_predictions(path: Path, examples: list[Example], hypotheses: list[str],
                      zero_shot: list[str] | None) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "reference", "hypothesis"] + (["zero_shot"] if zero_shot else []))
        for i, example in enumerate(examples):
            writer.writerow([example.source, example.target, hypotheses[i]] + ([zero_shot[i]] if zero_shot else []))


def sft_config(cfg: DictConfig, output_dir: Path):
    """TRL SFTConfig from the train and hardware groups. Everything precision-related is explicit:
    SFTConfig's own defaults (bf16=True, gradient_checkpointing=True) are a trap on CPU."""
    from trl import SFTConfig

    return SFTConfig(max_length=cfg.train.max_length, **trainer_arguments(cfg, output_dir))


def score_target_positions_only() -> None:
    """Make TRL's fused LM-head loss score only the positions that carry a label (the translation) on CPU too.

    TRL 1.16 does so on CUDA/XPU, but elsewhere it sends every position (prompt and padding included) through the
    49k-word vocabulary and back, for a loss that ignores all but the target tokens; the reason it gives (tile
    shapes recompiling on every batch, on Neuron) does not hold for eager CPU kernels. On the default job that was
    35 % of a training step (docs/benchmarks.md). The compact path is TRL's own: same loss, entropy and token
    accuracy, computed on the target rows only. Its device test is looked up at call time in trl.trainer.utils;
    without it (another TRL), nothing changes."""
    import trl.trainer.utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "compact_on_cpu", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact.compact_on_cpu = True
    trl_utils._use_triton = compact


def trainer_arguments(cfg: DictConfig, output_dir: Path) -> dict:
    """The Trainer arguments from the train and hardware groups, shared by SFTConfig and the seq2seq path's
    Seq2SeqTrainingArguments (slt_hydra/seq2seq.py)."""
    hw, train = cfg.hardware, cfg.train
    on_cuda = hw.device == "cuda"
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        lr_scheduler_type=train.lr_scheduler_type,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        per_device_train_batch_size=train.per_device_train_batch_size or hw.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps or hw.gradient_accumulation_steps,
        per_device_eval_batch_size=hw.per_device_eval_batch_size,
        train_sampling_strategy=train.train_sampling_strategy,
        logging_steps=train.logging_steps,
        eval_strategy=train.eval_strategy,
        eval_steps=train.eval_steps,
        save_strategy=train.save_strategy,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=train.load_best_model_at_end,
        metric_for_best_model="eval_loss" if train.load_best_model_at_end else None,
        seed=train.seed,
        data_seed=train.seed,
        bf16=on_cuda and hw.dtype == "bfloat16",
        fp16=on_cuda and hw.dtype == "float16",
        use_cpu=not on_cuda,
        optim=hw.optim,
        gradient_checkpointing=hw.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",  # real tokens, for tokens/s
        report_to=["mlflow"],  # the Trainer's MLflow callback logs into our open run
        run_name=None,
        save_only_model=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **distributed.trainer_kwargs(cfg),  # several processes: gloo/nccl, FSDP or DeepSpeed (distributed.py)
    )


def execute(cfg: DictConfig, prepared: Prepared) -> float | list[float] | None:
    if distributed.should_launch(cfg):  # hardware.num_processes > 1: torchrun runs this job; rank 0 logs here
        return objective_value(cfg, distributed.launch(cfg))
    import mlflow
    import torch
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTTrainer

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

    mlflow.set_tags({
        "model": cfg.model.name, "model_family": cfg.model.family, "params_b": str(cfg.model.params_b),
        "precision": validate.weights_kind(cfg), "quant": cfg.quant.name, "hardware": cfg.hardware.name,
        "dataset": cfg.dataset.name, "lora_r": str(cfg.lora.r) if cfg.lora.enabled else "full",
        "git_commit": tracking.git_commit() or "unknown",
    })
    mlflow.log_metrics({f"data_{key}": value for key, value in prepared.data_counts.items()})
    estimate = validate.estimate_memory_gb(cfg)
    if estimate is not None:
        mlflow.log_metric("memory_estimate_gb", estimate)
    if cfg.model.architecture == "seq2seq":  # T5, NLLB: transformers' Seq2SeqTrainer, same metrics
        from slt_hydra import seq2seq

        return seq2seq.execute(cfg, prepared, output_dir, started, checkpoint, done_before)

    # FSDP/ZeRO-3: the training arguments first, so the process group and DeepSpeed's config exist at load time.
    args = sft_config(cfg, output_dir) if distributed.sharded(cfg.hardware) and not cfg.eval.only else None

    # Model.
    t = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg, prepared.source)
    mlflow.log_metric("model_load_seconds", time.perf_counter() - t)
    mlflow.set_tag("param_count", str(sum(p.numel() for p in model.parameters())))
    mlflow.log_metric("model_memory_gb", model.get_memory_footprint() / 2**30)  # weights as really held
    log.info("loaded %s (%s) in %.1fs", cfg.model.name, prepared.source.location, time.perf_counter() - t)

    batch_size = translation_batch_size(cfg)
    splits = prepared.splits
    logged: dict[str, float] = {}  # every result metric, so the objective is whichever one was asked for

    def log_metrics(values: dict[str, float]) -> None:
        logged.update(values)
        mlflow.log_metrics(values)

    def translate_and_score(generator, split: str, prefix: str, shots_for=None) -> list[str]:
        from slt_hydra.translate import translate

        t0 = time.perf_counter()
        examples = splits[split]
        hypotheses = translate(generator, tokenizer, [e.source for e in examples], cfg.dataset, cfg.generate,
                               batch_size, shots_for=shots_for)
        score_translations(cfg, examples, hypotheses, time.perf_counter() - t0, prefix + split, log_metrics)
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
        from slt_hydra.fewshot import shot_picker

        mlflow.set_tags({"mode": "eval_only", "shots": str(cfg.eval.shots),
                         "shot_selection": cfg.eval.shot_selection, "adapter": str(cfg.eval.adapter)})
        generator = model
        if cfg.eval.adapter:
            from peft import PeftModel

            generator = PeftModel.from_pretrained(model, str(Path(cfg.eval.adapter).expanduser()))
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

    # Train: TRL SFT on prompt-completion conversations, loss on the completion only.
    evaluate_dev = cfg.train.eval_strategy != "no"
    callbacks = []
    if cfg.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    score_target_positions_only()
    trainer = SFTTrainer(
        model=model,
        args=args or sft_config(cfg, output_dir),  # checkpoint-N/ folders land beside the predictions
        train_dataset=to_prompt_completion(splits["train"], cfg.dataset),
        eval_dataset=to_prompt_completion(splits["dev"], cfg.dataset) if evaluate_dev else None,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora),
        callbacks=callbacks,
    )
    mlflow.set_tag("trainable_params", str(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)))
    train_and_measure(trainer, evaluate_dev, checkpoint, done_before, log_metrics)

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
