"""Time to quality: training minutes until the dev BLEU-4 reaches a target (55), ours against plain TRL.

    python -m benchmarks.bench_quality --every 4 --budget-minutes 12      # what make bench runs

Both contenders train SmolLM2-135M-Instruct with LoRA r16 on q/k/v/o on the demo corpus with the default job's
hyperparameters and schedule (1 epoch = 38 steps of 16, learning rate, warm-up, linear decay, seed):

- ours:         slt_hydra's trainer, built as run.execute builds it (benchmarks.bench_train.build_ours), with the
                precision ``hardware=auto`` chooses on this CPU;
- trl_defaults: plain TRL with SFTConfig's own precision defaults (bf16 autocast, gradient checkpointing, its
                optimizer), as the throughput table's row of that name;
- trl_tuned:    plain TRL tuned for CPU (fp32, no gradient checkpointing, adamw_torch), as the throughput table's.

Every --every optimizer steps, and when the clock passes --budget-minutes, the training pauses and one function
(the same for both: slt_hydra's batched greedy translation, in the precision the contender holds its model in,
as run.execute translates: bf16 autocast for ours where it chose bf16, fp32 for plain TRL's fp32 models; then
sacrebleu) translates and scores the
whole dev split (100 sentences); the clock stops while it does, so the minutes are training minutes. A contender
stops at the first evaluation at or above the target, at the end of the epoch, or at the budget. Model loading
and trainer set-up are timed apart (``setup_seconds``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import compose, fmt, model_dir, quiet, run_child, write_result

TARGET = 55.0
DEFAULT_JOB = ["train.eval_strategy=no", "train.save_strategy=no", "train.load_best_model_at_end=false"]
CONTENDERS = ("ours", "trl_tuned", "trl_defaults")


def dev_bleu_clock(model, tokenizer, dev, cfg, every: int, target: float, budget_seconds: float,
                   translating=contextlib.nullcontext):
    """A TrainerCallback: every ``every`` steps (and at the budget or the last step) it stops the clock, scores the
    dev split, records (step, training seconds, BLEU-4), and ends training at the target or the budget."""
    from transformers import TrainerCallback

    from slt_hydra.config import translation_batch_size
    from slt_hydra.generation import translate_chat
    from slt_hydra.metrics import score_corpus

    class DevBleuClock(TrainerCallback):
        def __init__(self):
            self.points: list[dict] = []
            self.train_seconds = 0.0
            self.eval_seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.running_since = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = self.train_seconds + time.perf_counter() - self.running_since
            last = state.global_step >= state.max_steps
            over = elapsed >= budget_seconds
            if state.global_step % every and not (last or over):
                return
            self.train_seconds = elapsed
            started = time.perf_counter()
            was_training = model.training
            model.eval()
            base = model.get_base_model()  # (ours may train with eager attention: translate as every contender does)
            kernel = base.config._attn_implementation
            base.set_attn_implementation("sdpa")
            with translating():
                hypotheses = translate_chat(model, tokenizer, [e.source for e in dev], cfg.dataset, cfg.generate,
                                            translation_batch_size(cfg))
            base.set_attn_implementation(kernel)
            model.train(was_training)
            bleu = score_corpus(hypotheses, [e.target for e in dev], tokenize=cfg.dataset.tokenize)["bleu4"]
            self.eval_seconds += time.perf_counter() - started
            self.points.append({"step": state.global_step, "train_seconds": elapsed, "dev_bleu4": bleu})
            print(f"    step {state.global_step}: {elapsed / 60:.2f} min of training, dev BLEU-4 {bleu:.2f}",
                  flush=True)
            if bleu >= target or over:
                control.should_training_stop = True
            self.running_since = time.perf_counter()

    return DevBleuClock()


def build_plain_trl(name: str, workdir: Path):
    """Plain TRL with the default job's hyperparameters and bench_train's precision settings for ``name``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from benchmarks.bench_train import GLOBAL_BATCH, PLAIN_TRL_PRECISION, lora
    from slt_hydra.data import load_splits, to_prompt_completion

    cfg = compose(DEFAULT_JOB, workdir / "trl")
    splits, _ = load_splits(cfg.dataset)
    folder = model_dir(cfg)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    t = cfg.train
    args = SFTConfig(
        output_dir=str(workdir / name), per_device_train_batch_size=GLOBAL_BATCH,
        gradient_accumulation_steps=1, num_train_epochs=t.num_train_epochs, learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps, lr_scheduler_type=t.lr_scheduler_type, max_grad_norm=t.max_grad_norm,
        max_length=t.max_length, seed=t.seed, use_cpu=True, save_strategy="no", report_to=[],
        **PLAIN_TRL_PRECISION[name],
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_prompt_completion(splits["train"], cfg.dataset),
                         processing_class=tokenizer, peft_config=lora(cfg))
    settings = {"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
                "optim": str(getattr(args.optim, "value", args.optim))}
    return cfg, splits["dev"], trainer, tokenizer, settings


def run_contender(name: str, workdir: Path, every: int, target: float, budget_minutes: float) -> dict:
    quiet()
    started = time.perf_counter()
    if name == "ours":
        from benchmarks.bench_train import build_ours, open_mlflow_run

        run = open_mlflow_run(workdir)
        cfg, prepared, trainer, tokenizer = build_ours(0, workdir, {}, overrides=DEFAULT_JOB)
        dev, settings = prepared.splits["dev"], {"precision": cfg.hardware.precision}
    elif name in ("trl_defaults", "trl_tuned"):
        run = None
        cfg, dev, trainer, tokenizer, settings = build_plain_trl(name, workdir)
    else:
        raise SystemExit(f"unknown contender {name!r}")
    translating = contextlib.nullcontext
    if name == "ours":  # as run.execute translates: under the precision's autocast (bf16 weights need it)
        from slt_hydra.precision import autocast

        translating = functools.partial(autocast, cfg.hardware)
    clock = dev_bleu_clock(trainer.model, tokenizer, dev, cfg, every, target, budget_minutes * 60, translating)
    trainer.add_callback(clock)
    setup = time.perf_counter() - started
    if name == "ours":  # the attention kernel and adapter casts run.execute trains with
        from benchmarks.bench_train import ours_kernels

        with ours_kernels(cfg, trainer) as attention:
            trainer.train()
        settings["attention"] = attention.kernel if attention else "sdpa"
    else:
        trainer.train()
    if run is not None:
        import mlflow

        mlflow.end_run()
    reached = next((p for p in clock.points if p["dev_bleu4"] >= target), None)
    steps = trainer.state.global_step
    return {"contender": name, "target": target, "every": every, "budget_minutes": budget_minutes,
            "setup_seconds": setup, "points": clock.points, "reached": reached, "steps": steps,
            "max_steps": trainer.state.max_steps, "eval_seconds": clock.eval_seconds,
            "seconds_per_step": clock.train_seconds / steps if steps else None,
            "dev_sentences": len(dev), "settings": settings}


EMULATED_BF16_BUDGET_MINUTES = 4.0  # where bf16 is emulated, TRL's defaults take ~2 min a step: a few steps show it


def benchmark(every: int, budget_minutes: float, workdir: Path, log=None, target: float = TARGET) -> dict:
    """Each contender in its own process. Where this CPU emulates bf16, TRL's defaults (bf16 autocast) get a
    shorter budget, as in the throughput table (its projection is then the figure)."""
    from slt_hydra.machine import cpu_flags, has_native_bf16

    native_bf16 = has_native_bf16(cpu_flags())
    results = {}
    for name in CONTENDERS:
        budget = budget_minutes if native_bf16 or name != "trl_defaults" else min(budget_minutes,
                                                                                  EMULATED_BF16_BUDGET_MINUTES)
        print(f"  quality: {name} until dev BLEU-4 {target:g} (evaluated every {every} steps; budget "
              f"{budget:g} min)", flush=True)
        results[name] = run_child("benchmarks.bench_quality",
                                  ["--child", name, "--every", str(every), "--budget-minutes", str(budget),
                                   "--target", str(target)], workdir / "quality", timeout=budget * 60 + 3600,
                                  log=log)
        results[name]["native_bf16"] = native_bf16
    return results


def minutes_text(r: dict) -> str:
    if r["reached"]:
        return f"**{r['reached']['train_seconds'] / 60:.1f}** (step {r['reached']['step']})"
    best = max((p["dev_bleu4"] for p in r["points"]), default=float("nan"))
    why = "the epoch ended" if r["steps"] >= r["max_steps"] else f"the {r['budget_minutes']:g}-min budget ran out"
    return f"not reached: {why} at step {r['steps']} (best dev BLEU-4 {fmt(best)})"


PLAIN = {"trl_tuned": "plain TRL, tuned for CPU", "trl_defaults": "plain TRL, its own defaults"}


def render(q: dict) -> list[str]:
    ours = q["ours"]
    target = ours["target"]
    lines = [
        f"## 4. Time to quality: training minutes to a dev BLEU-4 of {target:g}",
        "",
        f"The default job's schedule (1 epoch = {ours['max_steps']} steps of 16; its learning rate, warm-up and "
        f"decay) for every contender; every {ours['every']} steps the clock stops while one function (slt_hydra's "
        "batched greedy translation, in the precision the contender trains in as run.execute translates; sacrebleu) "
        f"scores the whole dev split ({ours['dev_sentences']} "
        f"sentences). Budget {ours['budget_minutes']:g} min of training per contender"
        + ("" if ours.get("native_bf16", True) else f" ({q['trl_defaults']['budget_minutes']:g} min for plain TRL's "
           "defaults: this CPU emulates bf16)" if "trl_defaults" in q else "")
        + ". Model load and trainer set-up are not in the minutes (column set-up).",
        "",
        f"| contender | precision | minutes to dev BLEU-4 {target:g} | s / step | set-up s | dev BLEU-4 by step |",
        "|---|---|---|---|---|---|",
    ]
    how = {"float32": "fp32", "bf16_autocast": "bf16 autocast", "bfloat16": "bf16 weights"}.get(
        ours["settings"].get("precision"), ours["settings"].get("precision"))
    if ours["settings"].get("attention"):
        how += f", {ours['settings']['attention']} attention"
    rows = [("**ours**", ours, how)]
    rows += [(label, q[name], "bf16 autocast, grad. ckpt" if q[name]["settings"].get("bf16") else "fp32")
             for name, label in PLAIN.items() if name in q]
    for label, r, precision in rows:
        curve = ", ".join(f"{p['step']}: {p['dev_bleu4']:.1f}" for p in r["points"])
        lines.append(f"| {label} | {precision} | {minutes_text(r)} | {fmt(r['seconds_per_step'], 1)} | "
                     f"{fmt(r['setup_seconds'], 0)} | {curve} |")
    lines.append("")
    for name, label in PLAIN.items():
        plain = q.get(name)
        if not plain or not ours["reached"]:
            continue
        if plain["reached"]:
            ratio = plain["reached"]["train_seconds"] / ours["reached"]["train_seconds"]
            lines.append(f"- Against {label}: ours reached it in **{ratio:.1f}x** less training time "
                         f"({ours['reached']['step']} steps against {plain['reached']['step']}).")
        elif plain["seconds_per_step"]:
            projected = ours["reached"]["step"] * plain["seconds_per_step"] / 60
            lines.append(f"- Against {label}: it did not get there within the budget. At its measured "
                         f"{plain['seconds_per_step']:.1f} s per step, the {ours['reached']['step']} steps ours "
                         f"needed would take it about **{projected:.0f} min** (a projection, not a measurement: "
                         f"{projected * 60 / ours['reached']['train_seconds']:.0f}x ours), if its steps learned as "
                         "fast as ours per step.")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=4, help="optimizer steps between dev evaluations")
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="training minutes per contender, at most")
    parser.add_argument("--target", type=float, default=TARGET, help="the dev BLEU-4 to reach")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None, help="also write the section of docs/benchmarks.md here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_quality_"))
    if args.child:
        write_result(args.out, run_contender(args.child, workdir, args.every, args.target, args.budget_minutes))
        return 0
    result = benchmark(args.every, args.budget_minutes, workdir, target=args.target)
    print(json.dumps(result, indent=1, default=str))
    print("\n".join(render(result)))
    if args.md:
        args.md.write_text("\n".join(render(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
