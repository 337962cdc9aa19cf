"""Same quality in bf16: the default job in fp32 and in the precision `hardware=auto` chose, same seed and steps.

    python -m benchmarks.bench_precision    # what make bench runs (~13 min on a 2-core CPU)

The jobs are `python -m slt_hydra hardware.precision=P train.seed=S eval.zero_shot=false` on the real
SmolLM2-135M and the demo corpus: one epoch (38 steps of 16), the dev loss after training, the dev and test splits
translated and scored. Each seed runs twice, in the chosen precision and in fp32, and the pair is compared: the
dev loss (held out: never trained on), test BLEU-4, how many of the 100 test translations differ word for word,
and the training time. The issue's bar: the bf16 run within 2 % of the fp32 run's dev loss and within 1 BLEU-4
on the test split. One pair is one draw: with 100 test sentences a new seed alone moves fp32's test BLEU-4 by
about 2 points, so the verdict is on the mean change over the seeds (every pair is shown, and the fp32 runs'
spread across seeds is the yardstick). On a CPU where `hardware=auto` keeps fp32 there is nothing to compare and
the part says so (it runs one job, to read the choice).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from benchmarks.bench_overhead import run_job
from benchmarks.common import fmt, median

LOSS_BAR = 0.02  # relative dev loss
BLEU_BAR = 1.0  # test BLEU-4 points
SEEDS = (42, 43, 44)  # the default seed first; each one trains in both precisions
CHANGES = ("dev_loss_change", "test_bleu4_change", "dev_bleu4_change", "test_outputs_differ")


def overrides(precision: str, seed: int | str, workdir: Path, shorten: list[str]) -> list[str]:
    return [f"hardware.precision={precision}", f"train.seed={seed}", "eval.zero_shot=false",
            f"hydra.run.dir={workdir / 'job'}", "mlflow.experiment_name=bench_precision", *shorten]


def job(precision: str, seed: int, workdir: Path, shorten: list[str], log=None) -> dict:
    """One default job in PRECISION with SEED: its metrics, tags and test translations."""
    done = run_job(overrides(precision, seed, workdir, shorten), workdir, log=log)
    m = {key: value["value"] for key, value in done["run"]["metrics"].items()}
    with (workdir / "job" / "predictions_test.csv").open(newline="", encoding="utf-8") as f:
        test = [row["hypothesis"] for row in csv.DictReader(f)]
    return {"precision": precision, "seed": seed, "chosen": done["run"]["tags"].get("cpu_precision"),
            "reason": done["run"]["tags"].get("cpu_precision_reason"), "dev_loss": m.get("dev_loss"),
            "test_bleu4": m.get("test_bleu4"), "dev_bleu4": m.get("dev_bleu4"),
            "train_seconds": m.get("train_seconds"), "wall": done["wall"], "test_hypotheses": test}


def benchmark(workdir: Path, log=None, shorten: list[str] | None = None, seeds: tuple[int, ...] = SEEDS) -> dict:
    """The auto job of the first seed first (it says what this CPU chose), then, where that was not fp32, the fp32
    job of the same seed and both jobs of every other seed (``shorten``: overrides that cut every job down, for a
    smoke run)."""
    shorten = shorten or []
    shown = overrides("auto|float32", "|".join(map(str, seeds)), Path("DIR"), shorten)
    print(f"  precision: python -m slt_hydra {' '.join(shown)}", flush=True)
    auto = job("auto", seeds[0], workdir / f"auto_{seeds[0]}", shorten, log=log)
    if auto["chosen"] in (None, "float32"):
        return {"auto": auto, "pairs": [], "verdict": None, "shorten": shorten}
    pairs = []
    for seed in seeds:
        chosen = auto if seed == seeds[0] else job("auto", seed, workdir / f"auto_{seed}", shorten, log=log)
        fp32 = job("float32", seed, workdir / f"float32_{seed}", shorten, log=log)
        pairs.append({"seed": seed, "auto": chosen, "float32": fp32, **compare(chosen, fp32)})
    mean = {key: sum(pair[key] for pair in pairs) / len(pairs) for key in CHANGES}
    fp32_runs = [pair["float32"] for pair in pairs]
    return {"auto": auto, "pairs": pairs, "mean": mean, "shorten": shorten,
            "test_outputs": len(auto["test_hypotheses"]),
            "pairs_within": sum(within(pair) for pair in pairs),
            "fp32_spread": {"dev_loss": max(r["dev_loss"] for r in fp32_runs) / min(r["dev_loss"] for r in fp32_runs)
                            - 1,
                            "test_bleu4": max(r["test_bleu4"] for r in fp32_runs)
                            - min(r["test_bleu4"] for r in fp32_runs)},
            "training_speedup": median(pair["float32"]["train_seconds"] / pair["auto"]["train_seconds"]
                                       for pair in pairs),
            "verdict": within(mean)}


def compare(run: dict, fp32: dict) -> dict:
    return {"dev_loss_change": run["dev_loss"] / fp32["dev_loss"] - 1,
            "test_bleu4_change": run["test_bleu4"] - fp32["test_bleu4"],
            "dev_bleu4_change": run["dev_bleu4"] - fp32["dev_bleu4"],
            "test_outputs_differ": sum(a != b for a, b in zip(run["test_hypotheses"], fp32["test_hypotheses"]))}


def within(change: dict) -> bool:
    """The issue's bar: dev loss within LOSS_BAR of fp32's and test BLEU-4 within BLEU_BAR, either way."""
    return abs(change["dev_loss_change"]) <= LOSS_BAR and abs(change["test_bleu4_change"]) <= BLEU_BAR


def render(p: dict) -> list[str]:
    """The same-quality section of docs/benchmarks.md."""
    if "pairs" not in p:  # a results.json from before the seed pairs (2026-12-06): one fp32 run and one reseeded
        return ["## 6. Same quality in bf16", "", "These results predate the seed pairs; run "
                "`python -m benchmarks.bench_precision` (or `make bench`) for this section.", ""]
    auto, pairs = p["auto"], p["pairs"]
    seeds = [pair["seed"] for pair in pairs] or [auto["seed"]]
    command = " ".join(["python -m slt_hydra hardware.precision=P train.seed=S eval.zero_shot=false", *p["shorten"]])
    lines = ["## 6. Same quality in bf16: the default job in fp32 and in the chosen precision", "",
             f"`{command}`: the default job (one epoch of the demo train split"
             + ("; shortened: a smoke run" if p["shorten"] else "") + f") with seeds {', '.join(map(str, seeds))}, "
             "each seed once in the precision `hardware=auto` picks and once in fp32 (same seed, data order and "
             "steps). The dev loss after training (held out), BLEU-4 over the test and dev splits "
             f"({len(auto['test_hypotheses'])} test sentences), the test translations that differ from the same "
             "seed's fp32 run, the training time.", ""]
    if not pairs:
        return lines + [f"`hardware=auto` chose **{auto['chosen']}** on this CPU ({auto['reason']}): nothing runs in "
                        "bf16 here, so there is no second run to compare.", ""]
    lines += ["| seed | precision | dev loss | test BLEU-4 | dev BLEU-4 | test outputs differing from fp32 "
              "| training s |", "|---|---|---|---|---|---|---|"]
    for pair in pairs:
        for run in (pair["auto"], pair["float32"]):
            chosen = run is pair["auto"]
            lines.append(f"| {pair['seed']} | {'`hardware=auto` -> ' + str(run['chosen']) if chosen else 'fp32'} | "
                         f"{fmt(run['dev_loss'], 4)} | {fmt(run['test_bleu4'])} | {fmt(run['dev_bleu4'])} | "
                         f"{pair['test_outputs_differ'] if chosen else '-'} | {fmt(run['train_seconds'], 0)} |")
    met = "**met**" if p["verdict"] else "**not met**"
    chosen = auto["chosen"]
    lines += [
        "",
        f"- {chosen} against fp32, seed by seed: "
        + "; ".join(f"{pair['seed']}: {change_text(pair, p['test_outputs'])}" for pair in pairs) + ".",
        f"- Mean over the {len(pairs)} seeds: {change_text(p['mean'], p['test_outputs'])}. Bar (the dev loss within "
        f"{100 * LOSS_BAR:.0f} % of fp32's and test BLEU-4 within {BLEU_BAR:.0f}, either way), on the mean: {met}; "
        f"pair by pair: {p['pairs_within']} of {len(pairs)} within both. Training took "
        f"{fmt(p['training_speedup'], 2)}x less time in {chosen} (median over the pairs).",
        f"- The yardstick: across the seeds, fp32 alone spans {100 * p['fp32_spread']['dev_loss']:.1f} % in dev loss "
        f"and {fmt(p['fp32_spread']['test_bleu4'])} points of test BLEU-4 (only the data order and LoRA's initial "
        "weights change).",
        ""]
    return lines


def change_text(change: dict, outputs: int) -> str:
    return (f"dev loss {100 * change['dev_loss_change']:+.1f} %, test BLEU-4 {change['test_bleu4_change']:+.2f}, dev "
            f"BLEU-4 {change['dev_bleu4_change']:+.2f}, {fmt(change['test_outputs_differ'], 0)} of {outputs} test "
            "translations differ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_"))
    result = benchmark(workdir / "precision", seeds=tuple(int(seed) for seed in args.seeds.split(",")))
    print("\n".join(render(result)))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
