"""`python -m slt_hydra.plan [overrides]`: will this run fit? The memory plan, printed, before anything loads.

    python -m slt_hydra.plan model=qwen2.5_7b_instruct quant=4bit hardware=gpu_16gb
    python -m slt_hydra.plan model=qwen2.5_72b quant=auto hardware=gpu_80gb      # the highest precision that fits

Takes the same overrides as a run (Hydra's compose API on ``conf/``: no output directory, no download, no torch,
no transformers) and prints a breakdown, a verdict against the hardware's memory with 10% headroom, and what to
change when it does not fit. Exit code 0 = fits, 1 = does not fit, 2 = bad overrides. What is counted, and how:
slt_hydra/memory.py.
"""
from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from slt_hydra import validate
from slt_hydra.config import compose, resolve_hardware
from slt_hydra.machine import Machine, light_machine
from slt_hydra.memory import (
    GB,
    HEADROOM,
    STRATEGY_LABEL,
    Plan,
    batch_sizes,
    data_parallel,
    plain,
    plan_memory,
    resolve_auto_quant,
    suggestions,
)


def _lr(value: float) -> str:
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _gb(value: float) -> str:
    return f"{value / GB:7.2f}"


def format_plan(cfg: DictConfig, plan: Plan, machine: Machine | None = None) -> str:
    hw, lora = cfg.hardware, cfg.lora
    train_batch, accumulation, eval_batch, _ = batch_sizes(cfg)
    lines = []
    published = cfg.model.params_b
    count = f"{plan.params / 1e9:.3f}B parameters computed" if plan.params else "parameters unknown (no arch)"
    where = cfg.model.get('hub_id') or cfg.model.get('path') or 'model.path=?'
    lines.append(f"model={cfg.model.name} ({where}): {count}"
                 + (f", published {published}B" if published is not None else ""))
    adapter = (f"LoRA r{lora.r}/alpha{lora.alpha} on {plain(lora.target_modules)}" if lora.enabled
               else "full fine-tuning")
    lines.append(f"quant={cfg.quant.name} ({plan.weights} weights), hardware={hw.name} ({hw.device}, {hw.dtype}"
                 f"{', precision ' + hw.precision if hw.device == 'cpu' and 'precision' in hw else ''}), "
                 f"{adapter}, batch {train_batch} x {cfg.train.max_length} tokens (x{accumulation} accumulation), "
                 f"eval batch {eval_batch}, gradient checkpointing {'on' if hw.gradient_checkpointing else 'off'}, "
                 f"optim {hw.optim}" + (", evaluation only" if cfg.eval.get("only") else ""))
    world, strategy = data_parallel(hw)
    if world > 1:
        lines.append(f"{world} processes ({hw.get('num_processes', 1)} per node x {hw.get('num_nodes', 1)} nodes), "
                     f"strategy {strategy} ({STRATEGY_LABEL.get(strategy, '?')}); global batch "
                     f"{train_batch * accumulation * world}; every figure below is per process")
    lines.append("")
    width = max([len(r.what) for r in plan.rows] + [len(r.what) + 4 for _, rows in plan.peaks.values() for r in rows]
                + [40]) + 2
    lines.append(f"{'component':<{width}}{'GB':>7}  how")
    for row in plan.rows:
        lines.append(f"{row.what:<{width}}{_gb(row.bytes)}  {row.how}")
    static = sum(r.bytes for r in plan.rows)
    lines.append(f"{'= resident':<{width}}{_gb(static)}")
    for phase, (value, rows) in plan.peaks.items():
        lines.append(f"{phase}:")
        for row in rows:
            lines.append(f"  + {row.what:<{width - 4}}{_gb(row.bytes)}  {row.how}")
        lines.append(f"  {'= peak':<{width - 2}}{_gb(value)}")
    lines.append("")
    lines.append(f"{'TOTAL (the largest peak: ' + plan.peak_phase + ')':<{width}}{_gb(plan.total)}")
    if plan.have_gb:
        source = (f"hardware={hw.name} memory_gb" if hw.memory_gb else
                  f"this machine's {'GPU' if hw.device == 'cuda' else 'RAM'}")
        if hw.device == "cpu" and hw.get("num_processes", 1) > 1:
            source += f", shared by {hw.num_processes} processes"
        lines.append(f"memory: {plan.have_gb:.1f} GB ({source}); usable with {HEADROOM:.0%} headroom: "
                     f"{plan.usable_gb:.1f} GB")
        verdict = "fits" if plan.fits else "does not fit"
        lines.append(f"verdict: {verdict} ({plan.total_gb:.1f} GB of {plan.usable_gb:.1f} GB usable)")
        if not plan.fits and plan.floor_gb <= plan.usable_gb:
            lines.append(f"  (with every sequence at train.max_length={cfg.train.max_length}; before its first token "
                         f"the run holds {plan.floor_gb:.1f} GB, so a run is not refused, only warned: short "
                         "sentences need less, as batches are padded to their longest example)")
    elif plan.peaks.get("unknown"):
        lines.append("verdict: unknown (the model's size is unknown: set model.params_b=N)")
    else:
        lines.append("verdict: unknown (no memory budget: set hardware.memory_gb=N)")
    rec = cfg.model.get("recommended")
    if rec:
        targets = rec.target_modules if isinstance(rec.target_modules, str) else f"[{','.join(rec.target_modules)}]"
        lines.append(f"recommended for this model: lora.r={rec.lora_r} lora.alpha={rec.lora_alpha} "
                     f"lora.target_modules={targets} train.learning_rate={_lr(rec.learning_rate)}")
    if plan.fits is False:
        lines.append("")
        lines.append("what to change (the planner's total after each change):")
        found = suggestions(cfg, plan, machine)
        for overrides, total, fits in found:
            lines.append(f"  {overrides}\n      -> {total:.1f} GB: {'fits' if fits else 'does not fit'}")
        if not any(fits for _, _, fits in found):
            smallest = min([total for _, total, _ in found] + [plan.total_gb])
            lines.append(f"  nothing above fits: the smallest plan needs {smallest:.1f} GB, i.e. "
                         f"{smallest / (1 - HEADROOM):.0f} GB of memory with the headroom. Use a smaller model, "
                         "or a bigger GPU (hardware=gpu_24gb / gpu_80gb, or hardware.memory_gb=N).")
    for warning in plan.warnings:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


USAGE = """usage: python -m slt_hydra.plan [GROUP=OPTION ...] [KEY=VALUE ...]

The memory plan of the run these overrides describe (same syntax as python -m slt_hydra), and whether it fits
the hardware's memory (hardware.memory_gb, else this machine's RAM or GPU). quant=auto resolves to the highest
precision that fits. Exit code 0 = fits, 1 = does not fit, 2 = bad overrides.
Example: python -m slt_hydra.plan model=qwen2.5_7b_instruct quant=4bit hardware=gpu_16gb"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = compose(args, job_name="plan")
    except Exception as error:  # Hydra's composition errors: unknown option, misspelt key, wrong type
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        print(f"slt_hydra.plan: {error}{cause}", file=sys.stderr)
        return 2
    machine = None
    if cfg.hardware.name == "auto" or not cfg.hardware.memory_gb or cfg.quant.name == "auto":
        machine = light_machine()
    precision = resolve_hardware(cfg, machine, overrides=args)
    if precision is not None:
        print(f"hardware.precision=auto -> {precision.precision}: {precision.reason}"
              + (" (cached)" if precision.cached else ""))
    if cfg.hardware.device == "cpu" and cfg.hardware.get("train_attention") == "auto":
        print("hardware.train_attention=auto: sdpa or eager, whichever is faster at the run's batch and sentence "
              "length, timed when training starts (docs/setup.md)")
    chosen = resolve_auto_quant(cfg, machine)
    plan = plan_memory(cfg, machine)
    if chosen:
        why = ("(the highest precision that fits)" if plan.fits is not False
               else "(nothing fits; the lowest precision, and what to change below)")
        print(f"quant=auto -> quant={chosen} {why}")
    print(format_plan(cfg, plan, machine))
    for remark in validate.remarks(cfg):
        print(f"WARNING: {remark}")
    return 0 if plan.fits is not False else 1


if __name__ == "__main__":
    sys.exit(main())
