"""Same quality in bf16: the default job in fp32 and in the precision `hardware=auto` chose, same seed and steps.

    python -m benchmarks.bench_precision    # what make bench runs (~10 min on a 2-core CPU)

The jobs are `python -m slt_hydra hardware.precision=P eval.zero_shot=false` on the real SmolLM2-135M and the
demo corpus: one epoch (38 steps of 16), the dev loss after training, the dev and test splits translated and
scored. Compared: the dev loss (held out: never trained on), test BLEU-4, how many of the 100 test translations
differ word for word, and the training time. The issue's bar: the bf16 run within 2 % of the fp32 run's dev loss
and within 1 BLEU-4 on the test split. A third job, fp32 with another seed, is the yardstick: how far a run moves
when nothing but the seed changes. On a CPU where `hardware=auto` keeps fp32 there is nothing to compare and
the part says so (it runs one job, to read the choice).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from benchmarks.bench_overhead import run_job
from benchmarks.common import fmt

LOSS_BAR = 0.02  # relative dev loss
BLEU_BAR = 1.0  # test BLEU-4 points
RESEED = 43  # the fp32 run again with another seed: how much a run moves for reasons other than precision


def overrides(precision: str, workdir: Path, shorten: list[str]) -> list[str]:
    return [f"hardware.precision={precision}", "eval.zero_shot=false", f"hydra.run.dir={workdir / 'job'}",
            "mlflow.experiment_name=bench_precision", *shorten]


def job(precision: str, workdir: Path, shorten: list[str], log=None) -> dict:
    """One default job in PRECISION: its metrics, tags and test translations."""
    done = run_job(overrides(precision, workdir, shorten), workdir, log=log)
    m = {key: value["value"] for key, value in done["run"]["metrics"].items()}
    with (workdir / "job" / "predictions_test.csv").open(newline="", encoding="utf-8") as f:
        test = [row["hypothesis"] for row in csv.DictReader(f)]
    return {"precision": precision, "chosen": done["run"]["tags"].get("cpu_precision"),
            "reason": done["run"]["tags"].get("cpu_precision_reason"), "dev_loss": m.get("dev_loss"),
            "test_bleu4": m.get("test_bleu4"), "dev_bleu4": m.get("dev_bleu4"),
            "train_seconds": m.get("train_seconds"), "wall": done["wall"], "test_hypotheses": test}


def benchmark(workdir: Path, log=None, shorten: list[str] | None = None) -> dict:
    """The auto job first (it says what this CPU chose), then the fp32 one where that was not fp32
    (``shorten``: overrides that cut both jobs down, for a smoke run)."""
    shorten = shorten or []
    print(f"  precision: python -m slt_hydra {' '.join(overrides('auto|float32', Path('DIR'), shorten))}", flush=True)
    auto = job("auto", workdir / "auto", shorten, log=log)
    if auto["chosen"] in (None, "float32"):
        return {"auto": auto, "float32": None, "verdict": None, "shorten": shorten}
    fp32 = job("float32", workdir / "float32", shorten, log=log)
    # the yardstick: how far fp32 itself moves when only the seed changes (data order, LoRA's initial weights)
    reseeded = job("float32", workdir / "float32_reseeded", [*shorten, f"train.seed={RESEED}"], log=log)
    change = compare(auto, fp32)
    return {"auto": auto, "float32": fp32, "float32_reseeded": reseeded, **change,
            "reseeded_change": compare(reseeded, fp32), "test_outputs": len(fp32["test_hypotheses"]),
            "shorten": shorten,
            "verdict": abs(change["dev_loss_change"]) <= LOSS_BAR and abs(change["test_bleu4_change"]) <= BLEU_BAR}


def compare(run: dict, fp32: dict) -> dict:
    return {"dev_loss_change": run["dev_loss"] / fp32["dev_loss"] - 1,
            "test_bleu4_change": run["test_bleu4"] - fp32["test_bleu4"],
            "dev_bleu4_change": run["dev_bleu4"] - fp32["dev_bleu4"],
            "test_outputs_differ": sum(a != b for a, b in zip(run["test_hypotheses"], fp32["test_hypotheses"]))}


def render(p: dict) -> list[str]:
    """The same-quality section of docs/benchmarks.md."""
    auto, fp32 = p["auto"], p["float32"]
    command = " ".join(["python -m slt_hydra hardware.precision=P eval.zero_shot=false", *p["shorten"]])
    lines = ["## 6. Same quality in bf16: the default job in fp32 and in the chosen precision", "",
             f"`{command}`: the default job (one epoch of the demo train split, seed 42"
             + ("; shortened: a smoke run" if p["shorten"] else "") + ") once in the precision `hardware=auto` picks "
             f"and once in fp32, and fp32 again with seed {RESEED}: how far a run moves when only the seed changes. "
             "The dev loss after training (held out), BLEU-4 over the test and dev splits "
             f"({len(auto['test_hypotheses'])} test sentences), the training time.", ""]
    if fp32 is None:
        return lines + [f"`hardware=auto` chose **{auto['chosen']}** on this CPU ({auto['reason']}): nothing runs in "
                        "bf16 here, so there is no second run to compare.", ""]
    reseeded = p.get("float32_reseeded")
    rows = [("ours, `hardware=auto` -> " + str(auto["chosen"]), auto), ("ours, fp32", fp32),
            *([(f"ours, fp32, seed {RESEED}", reseeded)] if reseeded else [])]
    lines += ["| run | dev loss | test BLEU-4 | dev BLEU-4 | training s |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {fmt(r['dev_loss'], 4)} | {fmt(r['test_bleu4'])} | {fmt(r['dev_bleu4'])} | "
              f"{fmt(r['train_seconds'], 0)} |" for name, r in rows]
    met = "**met**" if p["verdict"] else "**not met**"
    lines += ["", f"- {auto['chosen']} against fp32: {change_text(p, p['test_outputs'])}. Bar: the dev loss within "
              f"{100 * LOSS_BAR:.0f} % of fp32's and test BLEU-4 within {BLEU_BAR:.0f}: {met}. Training took "
              f"{fmt(fp32['train_seconds'] / auto['train_seconds'], 2)}x less time in {auto['chosen']}."]
    if reseeded:
        lines += [f"- The yardstick: fp32 with seed {RESEED} against seed 42 (only the data order and LoRA's initial "
                  f"weights change): {change_text(p['reseeded_change'], p['test_outputs'])}."]
    return lines + [""]


def change_text(change: dict, outputs: int) -> str:
    return (f"dev loss {100 * change['dev_loss_change']:+.1f} %, test BLEU-4 {change['test_bleu4_change']:+.2f}, dev "
            f"BLEU-4 {change['dev_bleu4_change']:+.2f}; {change['test_outputs_differ']} of {outputs} test "
            "translations differ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_"))
    result = benchmark(workdir / "precision")
    print("\n".join(render(result)))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
