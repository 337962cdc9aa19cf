"""Training throughput: our run against plain TRL, same model, data, optimizer steps and global batch.

    python -m benchmarks.bench_train --steps 9 --reps 3           # alternates the contenders, prints medians
    python -m benchmarks.bench_train --steps 2 --reps 1 --guide   # + the guides' QLoRA recipe, 1 step, once
    python -m benchmarks.bench_train --contenders ours --sft-extra '{"padding_free": true, "max_length": null}'

Contenders (each in its own process; all train SmolLM2-135M-Instruct with LoRA r16 on q/k/v/o on the 600 demo
train pairs for STEPS optimizer steps of 16 sequences; 9 steps = the first of the length-grouped sampler's
megabatches of 144, transformers' heuristic for 600 pairs at batch 16, so ours trains on whole sorted groups):

- ours:      slt_hydra's real path: the composed default config -> run.prepare -> models.load_causal_lm ->
             training.score_target_positions_only()
             -> SFTTrainer(args=sft_config(cfg), peft_config=peft_config(cfg.lora), callbacks=[mlflow_callback()])
             inside an open MLflow run, as run.execute builds it (evaluation and checkpoints off: they are not
             training throughput).
- trl_tuned: plain TRL as a careful user writes it on CPU: fp32, bf16 and gradient checkpointing off, adamw_torch,
             no packing, TRL's other defaults (random batches, right padding); same hyperparameters as ours.
- trl_defaults: plain TRL with SFTConfig's own defaults on the CPU: bf16 autocast, gradient checkpointing. Where the
             CPU has native bf16 it alternates with the others; where bf16 is emulated (most of a minute per step)
             it runs --defaults-steps steps once. The training baseline is the faster of it and trl_tuned.
- ours_full_head: ours as it was before training.score_target_positions_only(): TRL's CPU loss sends every position
             (prompt and padding too) through the LM head. Shows what that one change buys.
- trl_guide: the guides' QLoRA recipe as copied: 4-bit NF4 + double quantization, fp16, paged_adamw_8bit,
             gradient checkpointing (SFTConfig's default), micro-batch 4 x accumulation 4. About 4 min per step on
             2 CPU cores, so it runs --guide-steps steps (default 1), once, and is labelled so.

Every contender's tokens are counted the same way, by a wrapper around its data collator: real tokens = the
tokenized examples' lengths (no padding), target tokens = their non -100 labels, padded tokens = the collated
batch's size. Loss: the trainer's mean training loss over the steps, and a held-out loss on 48 dev pairs
computed by one function (``heldout_loss``) for every contender. `--child profile` times the parts of our step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    alternate,
    compose,
    cpu_seconds,
    fmt,
    median,
    model_dir,
    peak_rss_gb,
    quiet,
    run_child,
    shortened,
    write_result,
)

GLOBAL_BATCH = 16
HELDOUT = 48  # dev pairs scored after training by heldout_loss
CONTENDERS = ("ours", "trl_tuned", "ours_full_head")


# --------------------------------------------------------------------------- shared by every contender


class CountingCollator:
    """Wraps a contender's collator; records real / target / padded tokens of every batch it builds."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[dict[str, int]] = []

    def __call__(self, features):
        batch = self.inner(features)
        self.batches.append({
            "examples": len(features),
            "real": sum(len(f["input_ids"]) for f in features),
            "target": sum(sum(1 for t in f["labels"] if t != -100) for f in features) if "labels" in features[0]
            else 0,
            "padded": int(batch["input_ids"].numel()),
        })
        return batch


def step_timer():
    """A callback that records each optimizer step's wall and CPU seconds."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._wall, self._cpu = time.perf_counter(), cpu_seconds()

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter() - self._wall)
            self.cpu.append(cpu_seconds() - self._cpu)

    return StepTimer()


def heldout_loss(model, tokenizer, examples, dataset_cfg, batch_size: int = 16) -> float:
    """Mean per-token loss on the translations of ``examples`` (prompt tokens masked), right-padded batches,
    the model's own forward: the same measurement for every contender."""
    import torch

    from slt_hydra.data import build_messages

    def ids(messages, generation_prompt):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
        return list(out["input_ids"] if not isinstance(out, list) else out)

    rows = []
    for e in examples:
        prompt = build_messages(e.source, dataset_cfg)
        p = ids(prompt, True)
        full = ids(prompt + [{"role": "assistant", "content": e.target}], False)
        rows.append((full, [-100] * len(p) + full[len(p):]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = count = 0.0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r[0]) for r in chunk)
            input_ids = torch.tensor([r[0] + [tokenizer.pad_token_id] * (width - len(r[0])) for r in chunk])
            labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in chunk])
            mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in chunk])
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift = labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), shift.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += nll.item()
            count += int((shift != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def train_and_measure(trainer, steps: int, accumulation: int, model, tokenizer, heldout, dataset_cfg) -> dict:
    """Train, then report throughput from the counted batches, losses and peak memory."""
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    timer = step_timer()
    trainer.add_callback(timer)
    cpu0 = cpu_seconds()
    result = trainer.train()
    train_cpu = cpu_seconds() - cpu0
    runtime = result.metrics["train_runtime"]
    used = counter.batches[:steps * accumulation]  # the dataloader may have built one batch ahead
    real, target, padded = (sum(b[k] for b in used) for k in ("real", "target", "padded"))
    return {
        "steps": trainer.state.global_step,
        "examples": sum(b["examples"] for b in used),
        "train_seconds": runtime,
        "train_cpu_seconds": train_cpu,
        "step_seconds_median": median(timer.wall),
        "step_seconds_median_after_first": median(timer.wall[1:]) if len(timer.wall) > 1 else median(timer.wall),
        "step_seconds": timer.wall,
        "step_cpu_seconds": timer.cpu,
        "step_real_tokens": [sum(b["real"] for b in used[i:i + accumulation])
                             for i in range(0, len(used), accumulation)],
        "real_tokens": real,
        "target_tokens": target,
        "padded_tokens": padded,
        "padding_share": 1 - real / padded if padded else 0.0,
        "real_tokens_per_second": real / runtime,
        "real_tokens_per_cpu_second": real / train_cpu if train_cpu else float("nan"),
        "train_loss": result.training_loss,
        "heldout_loss": heldout_loss(model, tokenizer, heldout, dataset_cfg) if heldout else None,
        "peak_rss_gb": peak_rss_gb(),
    }


# --------------------------------------------------------------------------- the contenders (child side)


def base_overrides(steps: int) -> list[str]:
    """Our default job, stopped after STEPS optimizer steps; evaluation and checkpoints off."""
    return [*shortened(steps),
            f"dataset.max_eval_samples={HELDOUT}",
            "train.eval_strategy=no", "train.save_strategy=no", "train.load_best_model_at_end=false"]


def build_ours(steps: int, workdir: Path, sft_extra: dict, full_head: bool = False,
               overrides: list[str] | None = None):
    """Our trainer, built the way run.execute builds it, from the composed default config
    (``full_head``: without the target-only LM-head loss, as before; ``overrides``: instead of base_overrides)."""
    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    from slt_hydra.data import to_prompt_completion
    from slt_hydra.models import load_causal_lm, peft_config
    from slt_hydra.run import prepare
    from slt_hydra.training import mlflow_callback, score_target_positions_only, sft_config

    cfg = compose(base_overrides(steps) if overrides is None else overrides, workdir / "ours")
    prepared = prepare(cfg)
    set_seed(cfg.train.seed)
    if cfg.hardware.torch_threads:
        torch.set_num_threads(cfg.hardware.torch_threads)
    model, tokenizer = load_causal_lm(cfg, prepared.source)
    args = sft_config(cfg, Path(cfg.output_dir))
    if sft_extra:  # what-if experiments only (--sft-extra); make bench never sets it
        args = dataclasses.replace(args, **sft_extra)
    if not full_head:
        score_target_positions_only()
    trainer = SFTTrainer(model=model, args=args,
                         train_dataset=to_prompt_completion(prepared.splits["train"], cfg.dataset),
                         processing_class=tokenizer, peft_config=peft_config(cfg.lora), callbacks=[mlflow_callback()])
    return cfg, prepared, trainer, tokenizer


def open_mlflow_run(workdir: Path):
    """As in a real job, the Trainer's MLflow callback logs into an already open run."""
    import mlflow

    from slt_hydra import tracking

    workdir.mkdir(parents=True, exist_ok=True)
    tracking.use_store(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}"), "bench_train")
    return mlflow.start_run()


def ours_kernels(cfg, trainer):
    """How run.execute trains (training.training_kernels): the attention kernel, the shared prefix, the casts."""
    from slt_hydra.training import training_kernels

    return training_kernels(cfg, trainer.model.get_base_model(), trainer)


def child_ours(steps: int, workdir: Path, sft_extra: dict, full_head: bool = False) -> dict:
    import torch

    with open_mlflow_run(workdir):
        cfg, prepared, trainer, tokenizer = build_ours(steps, workdir, sft_extra, full_head)
        args = trainer.args
        with ours_kernels(cfg, trainer) as attention:
            out = train_and_measure(trainer, steps, args.gradient_accumulation_steps, trainer.model, tokenizer,
                                    None, cfg.dataset)
        # the held-out loss as for every contender: the model's own forward, outside our training kernels
        out["heldout_loss"] = heldout_loss(trainer.model, tokenizer, prepared.splits["dev"], cfg.dataset)
    out["settings"] = {k: getattr(args, k) for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "train_sampling_strategy", "padding_free",
        "packing", "bf16", "fp16", "gradient_checkpointing", "optim", "dataloader_num_workers")}
    out["settings"]["torch_threads"] = torch.get_num_threads()
    out["settings"]["precision"] = cfg.hardware.precision  # hardware=auto: measured here (slt_hydra/precision.py)
    out["settings"]["attention"] = attention.kernel if attention else "sdpa"
    out["settings"]["attention_reason"] = attention.reason if attention else "the model's default"
    return out


PROFILE_PARTS = {
    "head_forward": "LM head + loss, forward: TRL's chunked log-prob over the translation's positions and the "
                    "whole 49k vocabulary, with entropy and top-1 accuracy",
    "head_backward": "LM head + loss, backward (the same tiles recomputed)",
    "backbone_forward": "backbone forward: 30 decoder layers with LoRA on q/k/v/o",
    "backbone_backward": "backbone backward (gradients through the frozen weights to the LoRA weights)",
    "optimizer": "optimizer step (AdamW over the LoRA weights)",
    "collate": "data collation",
    "rest": "the rest: gradient clipping, scheduler, callbacks, logging",
}


def child_profile(steps: int, workdir: Path) -> dict:
    """Our run with timers around each part of a step (no profiler: its per-operator cost would distort them).
    Process CPU seconds (all threads) as well as wall seconds: on a shared machine the CPU split is the steadier."""
    from transformers import TrainerCallback
    from trl.kernels import chunked_logprob

    wall = dict.fromkeys(PROFILE_PARTS, 0.0)
    cpu = dict.fromkeys(PROFILE_PARTS, 0.0)

    def timed(key, function):
        def wrapper(*args, **kwargs):
            started, started_cpu = time.perf_counter(), cpu_seconds()
            try:
                return function(*args, **kwargs)
            finally:
                wall[key] += time.perf_counter() - started
                cpu[key] += cpu_seconds() - started_cpu
        return wrapper

    head = chunked_logprob.ChunkedLogProbFunction
    head.forward = staticmethod(timed("head_forward", head.forward))
    head.backward = staticmethod(timed("head_backward", head.backward))

    class OptimizerTimer(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.started, self.started_cpu = time.perf_counter(), cpu_seconds()

        def on_optimizer_step(self, args, state, control, **kwargs):
            wall["optimizer"] += time.perf_counter() - self.started
            cpu["optimizer"] += cpu_seconds() - self.started_cpu

    with open_mlflow_run(workdir):
        cfg, _, trainer, _ = build_ours(steps, workdir, {})
        trainer.compute_loss = timed("backbone_forward", trainer.compute_loss)
        trainer.accelerator.backward = timed("backbone_backward", trainer.accelerator.backward)
        trainer.data_collator = timed("collate", trainer.data_collator)
        trainer.add_callback(OptimizerTimer())
        cpu0 = cpu_seconds()
        with ours_kernels(cfg, trainer):
            runtime = trainer.train().metrics["train_runtime"]
        total_cpu = cpu_seconds() - cpu0
    for split in (wall, cpu):  # compute_loss and backward include the head's forward and backward
        split["backbone_forward"] -= split["head_forward"]
        split["backbone_backward"] -= split["head_backward"]
        split["rest"] = 0.0
    wall["rest"] = runtime - sum(wall.values())
    cpu["rest"] = total_cpu - sum(cpu.values())
    return {"steps": steps, "total_seconds": runtime, "total_cpu_seconds": total_cpu, "wall": wall, "cpu": cpu,
            "labels": PROFILE_PARTS, "shares": {PROFILE_PARTS[k]: v / total_cpu for k, v in cpu.items()}}


def plain_trl_inputs(steps: int, workdir: Path):
    """What a plain-TRL user starts from: the model folder, the demo pairs as prompt-completion data, and the
    hyperparameters of our default config (so losses are comparable)."""
    from slt_hydra.data import load_splits, to_prompt_completion

    cfg = compose(base_overrides(steps), workdir / "trl")
    splits, _ = load_splits(cfg.dataset)
    return cfg, model_dir(cfg), to_prompt_completion(splits["train"], cfg.dataset), splits["dev"]


def lora(cfg):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules))


# trl_tuned: the CPU tuning a careful user writes; trl_defaults: none, SFTConfig's own bf16 autocast, gradient
# checkpointing and optimizer (plain TRL as its docs write it).
PLAIN_TRL_PRECISION = {
    "trl_tuned": {"bf16": False, "gradient_checkpointing": False, "optim": "adamw_torch"},
    "trl_defaults": {},
}


def child_plain_trl(name: str, steps: int, workdir: Path) -> dict:
    """Plain TRL on the CPU with our default config's hyperparameters; PLAIN_TRL_PRECISION[name] on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg, folder, train, dev = plain_trl_inputs(steps, workdir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    t = cfg.train
    args = SFTConfig(
        output_dir=str(workdir / name), per_device_train_batch_size=GLOBAL_BATCH,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps, lr_scheduler_type=t.lr_scheduler_type, max_grad_norm=t.max_grad_norm,
        max_length=t.max_length, seed=t.seed, use_cpu=True, save_strategy="no", report_to=[],
        **PLAIN_TRL_PRECISION[name],
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora(cfg))
    out = train_and_measure(trainer, steps, 1, trainer.model, tokenizer, dev, cfg.dataset)
    out["settings"] = {"per_device_train_batch_size": GLOBAL_BATCH, "gradient_accumulation_steps": 1,
                       "train_sampling_strategy": args.train_sampling_strategy, "padding_free": args.padding_free,
                       "packing": args.packing, "bf16": args.bf16,
                       "gradient_checkpointing": args.gradient_checkpointing,
                       "optim": str(getattr(args.optim, "value", args.optim)), "torch_threads": torch.get_num_threads()}
    return out


def child_trl_guide(steps: int, workdir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cfg, folder, train, _ = plain_trl_inputs(steps, workdir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization)
    micro = 4
    args = SFTConfig(
        output_dir=str(workdir / "trl_guide"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=GLOBAL_BATCH // micro, max_steps=steps, learning_rate=2e-4,
        fp16=True, optim="paged_adamw_8bit",  # the recipe; gradient checkpointing is SFTConfig's default (True)
        save_strategy="no", report_to=[], seed=cfg.train.seed,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora(cfg))
    out = train_and_measure(trainer, steps, GLOBAL_BATCH // micro, trainer.model, tokenizer, None, cfg.dataset)
    out["settings"] = {"per_device_train_batch_size": micro, "gradient_accumulation_steps": GLOBAL_BATCH // micro,
                       "load_in_4bit": True, "fp16": True, "optim": "paged_adamw_8bit",
                       "gradient_checkpointing": args.gradient_checkpointing, "torch_threads": torch.get_num_threads()}
    return out


def run_contender(name: str, steps: int, workdir: Path, sft_extra: dict | None = None) -> dict:
    quiet()
    started = time.perf_counter()
    if name == "ours":
        out = child_ours(steps, workdir, sft_extra or {})
    elif name == "ours_full_head":
        out = child_ours(steps, workdir, sft_extra or {}, full_head=True)
    elif name == "profile":
        out = child_profile(steps, workdir)
    elif name in PLAIN_TRL_PRECISION:
        out = child_plain_trl(name, steps, workdir)
    elif name == "trl_guide":
        out = child_trl_guide(steps, workdir)
    else:
        raise SystemExit(f"unknown contender {name!r}")
    out["contender"] = name
    out["child_seconds"] = time.perf_counter() - started
    return out


# --------------------------------------------------------------------------- the comparison (parent side)


def summarize(runs: list[dict]) -> dict:
    """Medians per contender over the repetitions."""
    keys = ("real_tokens_per_second", "real_tokens_per_cpu_second", "train_seconds", "step_seconds_median",
            "peak_rss_gb", "train_loss", "heldout_loss", "padding_share")
    summary = {}
    for name in dict.fromkeys(r["contender"] for r in runs):
        mine = [r for r in runs if r["contender"] == name]
        summary[name] = {k: median(r.get(k) for r in mine) for k in keys}
        summary[name].update(reps=len(mine), steps=mine[0]["steps"], examples=mine[0]["examples"],
                             real_tokens=mine[0]["real_tokens"], target_tokens=mine[0]["target_tokens"],
                             settings=mine[0].get("settings", {}))
    return summary


def benchmark(steps: int, reps: int, guide_steps: int, workdir: Path, log=None, sft_extra: dict | None = None,
              contenders=CONTENDERS, defaults_steps: int = 2) -> dict:
    """The contenders alternated over REPS; TRL's defaults (bf16 autocast) join them where this CPU has native
    bf16, else run DEFAULTS_STEPS steps once (emulated bf16 takes most of a minute per step)."""
    from slt_hydra.machine import cpu_flags, has_native_bf16

    native_bf16 = has_native_bf16(cpu_flags())
    if defaults_steps and native_bf16 and "trl_defaults" not in contenders:
        contenders = (*contenders, "trl_defaults")
    runs = []
    extra = ["--sft-extra", json.dumps(sft_extra)] if sft_extra else []
    for rep, name in alternate(contenders, reps):
        print(f"  train: rep {rep + 1}/{reps} {name} ({steps} steps)", flush=True)
        runs.append(run_child("benchmarks.bench_train", ["--child", name, "--steps", str(steps),
                                                        *(extra if name == "ours" else [])],
                              workdir / "train", timeout=3600, log=log))
        r = runs[-1]
        print(f"    {fmt(r['real_tokens_per_second'], 1)} real tokens/s, {fmt(r['train_seconds'], 1)} s, "
              f"loss {fmt(r['train_loss'], 4)}, held-out {fmt(r['heldout_loss'], 4)}, "
              f"peak {fmt(r['peak_rss_gb'])} GiB", flush=True)
    if guide_steps:
        print(f"  train: trl_guide ({guide_steps} step(s), once)", flush=True)
        runs.append(run_child("benchmarks.bench_train", ["--child", "trl_guide", "--steps", str(guide_steps)],
                              workdir / "train", timeout=3600, log=log))
    if defaults_steps and not native_bf16 and "trl_defaults" not in contenders:
        print(f"  train: trl_defaults ({defaults_steps} step(s), once: bf16 is emulated on this CPU)", flush=True)
        runs.append(run_child("benchmarks.bench_train", ["--child", "trl_defaults", "--steps", str(defaults_steps)],
                              workdir / "train", timeout=3600, log=log))
    summary = summarize(runs)
    plain = [name for name in ("trl_tuned", "trl_defaults") if name in summary]
    if "ours" in summary and plain:  # the baseline: the faster of plain TRL tuned to fp32 and TRL's own defaults
        best = max(plain, key=lambda name: summary[name]["real_tokens_per_second"])
        same_steps = [name for name in plain if summary[name]["steps"] == steps]
        loss_base = best if best in same_steps else (same_steps[0] if same_steps else None)
        ours = summary["ours"]
        summary["best_plain"] = best
        summary["ratio_vs_best_plain"] = ours["real_tokens_per_second"] / summary[best]["real_tokens_per_second"]
        if loss_base:  # losses only compare over the same steps
            summary["best_plain_loss_base"] = loss_base
            summary["heldout_loss_diff_vs_best_plain"] = ours["heldout_loss"] / summary[loss_base]["heldout_loss"] - 1
    if "ours" in summary and "trl_tuned" in summary:
        ours, tuned = summary["ours"], summary["trl_tuned"]
        summary["ratio_vs_tuned"] = ours["real_tokens_per_second"] / tuned["real_tokens_per_second"]
        summary["ratio_vs_tuned_cpu"] = ours["real_tokens_per_cpu_second"] / tuned["real_tokens_per_cpu_second"]
        summary["train_loss_diff"] = ours["train_loss"] / tuned["train_loss"] - 1
        summary["heldout_loss_diff"] = ours["heldout_loss"] / tuned["heldout_loss"] - 1
    if "ours" in summary and "ours_full_head" in summary:
        ours, before = summary["ours"], summary["ours_full_head"]
        summary["ratio_vs_full_head"] = ours["real_tokens_per_second"] / before["real_tokens_per_second"]
        summary["full_head_train_loss_diff"] = ours["train_loss"] / before["train_loss"] - 1
    if "ours" in summary and "trl_guide" in summary:
        summary["ratio_vs_guide"] = (summary["ours"]["real_tokens_per_second"]
                                     / summary["trl_guide"]["real_tokens_per_second"])
    return {"steps": steps, "reps": reps, "guide_steps": guide_steps, "defaults_steps": defaults_steps,
            "native_bf16": native_bf16, "runs": runs, "summary": summary}


def profile(steps: int, workdir: Path, log=None) -> dict:
    print(f"  train: profile of ours ({steps} steps)", flush=True)
    result = run_child("benchmarks.bench_train", ["--child", "profile", "--steps", str(steps)], workdir / "train",
                       timeout=3600, log=log)
    for name, share in result["shares"].items():
        print(f"    {100 * share:5.1f} %  {name}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=9, help="optimizer steps of 16 sequences")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each contender, alternated")
    parser.add_argument("--guide", action="store_true", help="also run the guides' QLoRA recipe (slow), once")
    parser.add_argument("--guide-steps", type=int, default=1)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--defaults-steps", type=int, default=2,
                        help="steps of plain TRL's defaults (bf16 autocast) where bf16 is emulated; 0 = skip")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sft-extra", type=json.loads, default=None,
                        help="what-if: JSON of SFTConfig fields replaced in ours (never used by make bench)")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_"))
    if args.child:
        write_result(args.out, run_contender(args.child, args.steps, workdir, args.sft_extra))
        return 0
    result = benchmark(args.steps, args.reps, args.guide_steps if args.guide else 0, workdir,
                       sft_extra=args.sft_extra, contenders=tuple(args.contenders.split(",")),
                       defaults_steps=args.defaults_steps)
    print(json.dumps(result["summary"], indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
