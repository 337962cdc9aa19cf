"""One experiment, top to bottom: check -> load -> zero-shot -> train -> translate -> score -> log.

``prepare`` does everything that can fail on bad input (config rules, data files, where the weights
are) in seconds, before a model is loaded. ``execute`` is the heavy part, inside an MLflow run.
"""
from __future__ import annotations

import csv
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from slt_hydra import tracking, validate
from slt_hydra.data import Example, load_splits, to_prompt_completion
from slt_hydra.errors import SetupError
from slt_hydra.machine import Machine, auto_hardware_profile, detect_machine
from slt_hydra.metrics import perplexity, score_corpus
from slt_hydra.models import ModelSource, load_model_and_tokenizer, locate_model, peft_config
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


def run(cfg: DictConfig) -> float:
    """Run one job. Single run: bad input raises SetupError. Sweep job: every failure is recorded
    in the job's MLflow child run and NaN is returned, so the sweep goes on."""
    choices, sweep_dir, overrides = tracking.hydra_runtime()
    tags = {f"choice.{group}": str(option) for group, option in choices.items() if not group.startswith("hydra")}
    base_name = cfg.mlflow.run_name or "-".join(
        str(choices.get(group, cfg[group].get("name", group))) for group in ("model", "quant", "lora"))
    if sweep_dir is None:
        prepared = prepare(cfg)
        with tracking.job_run(cfg, None, base_name, tags):
            tracking.log_config(cfg)
            return execute(cfg, prepared)

    parent = tracking.sweep_parent(sweep_dir)
    try:
        with tracking.job_run(cfg, parent, (overrides or base_name)[:200], tags):
            try:
                prepared = prepare(cfg)
            finally:  # a refused job keeps its config too, with hardware=auto resolved if it got that far
                tracking.log_config(cfg)
            return execute(cfg, prepared)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # recorded in MLflow by job_run; the basic sweeper would stop on a raise
        log.error("job failed, recorded in MLflow, the sweep goes on: %s", error)
        return float("nan")


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

    hw, train = cfg.hardware, cfg.train
    on_cuda = hw.device == "cuda"
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        lr_scheduler_type=train.lr_scheduler_type,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        max_length=train.max_length,
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
    )


def execute(cfg: DictConfig, prepared: Prepared) -> float:
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
    output_dir.mkdir(parents=True, exist_ok=True)

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

    # Model.
    t = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg, prepared.source)
    mlflow.log_metric("model_load_seconds", time.perf_counter() - t)
    mlflow.set_tag("param_count", str(sum(p.numel() for p in model.parameters())))
    mlflow.log_metric("model_memory_gb", model.get_memory_footprint() / 2**30)  # weights as really held
    log.info("loaded %s (%s) in %.1fs", cfg.model.name, prepared.source.location, time.perf_counter() - t)

    batch_size = cfg.generate.batch_size or cfg.hardware.per_device_eval_batch_size
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
        seconds = time.perf_counter() - t0
        scores = score_corpus(hypotheses, [e.target for e in examples], tokenize=cfg.dataset.tokenize,
                              lowercase=cfg.dataset.lowercase)
        log_metrics({f"{prefix}{split}_{m}": scores[m] for m in SCORES})
        log_metrics({f"{prefix}{split}_translations_per_second": len(examples) / seconds})
        mlflow.set_tag("bleu_signature", scores["bleu_signature"])
        log.info("%s%s: BLEU-4 %.2f chrF %.2f ROUGE-L %.2f (%d sentences, %.1fs)", prefix, split,
                 scores["bleu4"], scores["chrf"], scores["rougeL"], len(examples), seconds)
        return hypotheses

    def score_splits(generator, zero_shot: list[str] | None = None, shots_for=None) -> None:
        for split in cfg.eval.splits:
            hypotheses = translate_and_score(generator, split, "", shots_for)
            path = output_dir / f"predictions_{split}.csv"
            write_predictions(path, splits[split], hypotheses, zero_shot if split == "test" else None)
            mlflow.log_artifact(str(path), "predictions")
            if split == "test":  # shown side by side in the UI's artifact view
                mlflow.log_table({"source": [e.source for e in splits[split]],
                                  "reference": [e.target for e in splits[split]],
                                  "hypothesis": hypotheses, **({"zero_shot": zero_shot} if zero_shot else {})},
                                 artifact_file="predictions/test_table.json")

    def finish() -> float:
        wall = time.perf_counter() - started
        log_metrics({"wall_seconds": wall, "peak_memory_gb": peak_memory_gb(cfg.hardware.device)})
        objective = logged[cfg.eval.objective]
        log.info("done in %.0fs; %s = %.2f; outputs in %s", wall, cfg.eval.objective, objective, output_dir)
        return float(objective)

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
    zero_shot = translate_and_score(model, "test", "zeroshot_") if cfg.eval.zero_shot else None

    # Train: TRL SFT on prompt-completion conversations, loss on the completion only.
    evaluate_dev = cfg.train.eval_strategy != "no"
    callbacks = []
    if cfg.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, output_dir),  # checkpoint-N/ folders land beside the predictions
        train_dataset=to_prompt_completion(splits["train"], cfg.dataset),
        eval_dataset=to_prompt_completion(splits["dev"], cfg.dataset) if evaluate_dev else None,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora),
        callbacks=callbacks,
    )
    mlflow.set_tag("trainable_params", str(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)))
    if evaluate_dev:  # dev loss before training (fresh LoRA adapters are a no-op): the other before/after
        loss = trainer.evaluate()["eval_loss"]
        log_metrics({"zeroshot_dev_loss": loss, "zeroshot_dev_perplexity": perplexity(loss)})
    result = trainer.train()
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

    # Translate and score the requested splits with the trained model.
    score_splits(trainer.model, zero_shot)

    # The adapter (or the full model, without LoRA) and its tokenizer.
    adapter_dir = output_dir / ("adapter" if cfg.lora.enabled else "model")
    trainer.save_model(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    if cfg.mlflow.log_adapter and cfg.lora.enabled:
        mlflow.log_artifacts(str(adapter_dir), "adapter")

    return finish()
