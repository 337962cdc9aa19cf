"""The pose path's throughput: `python -m slt_hydra +experiment=pose_quick`, shortened, on the real SmolLM2-135M.

    python -m benchmarks.bench_pose --steps 12 --test-samples 24   # what make bench runs

The job trains the pose encoder + LoRA for --steps optimizer steps on the synthetic pose corpus (no dev-loss
evaluation, no checkpoints, no zero-shot pass) and translates --test-samples test poses; its MLflow run gives
the figures: keypoint frames read by the encoder per second of training, real tokens per second (the text and the
soft tokens, no padding: the trainer's ``num_input_tokens_seen``), seconds per step, test translations per second
and the process's peak memory, with the precision ``hardware=auto`` chose on this CPU.

There is no plain-library contender: neither TRL nor transformers has a model that reads keypoints (TRL's
vision-language path takes a processor's ``pixel_values``), so this row is the suite's own figures, not a ratio.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.bench_overhead import run_job
from benchmarks.common import fmt, shortened


def overrides(steps: int, test_samples: int) -> list[str]:
    return ["+experiment=pose_quick", *shortened(steps), "train.eval_strategy=no", "train.save_strategy=no",
            "train.load_best_model_at_end=false", "eval.zero_shot=false", "eval.splits=[test]",
            "eval.objective=test_bleu4", f"dataset.max_eval_samples={test_samples}", "mlflow.experiment_name=bench"]


def benchmark(steps: int, test_samples: int, workdir: Path, log=None) -> dict:
    job = run_job(overrides(steps, test_samples), workdir, log=log)
    m = {key: value["value"] for key, value in job["run"]["metrics"].items()}
    tags = job["run"]["tags"]
    return {
        "steps": steps, "test_samples": test_samples, "wall": job["wall"],
        "train_seconds": m.get("train_seconds"), "seconds_per_step": m.get("train_seconds", 0) / steps,
        "frames": m.get("train_frames"), "frames_per_second": m.get("train_frames_per_second"),
        "tokens": m.get("train_tokens"), "tokens_per_second": m.get("train_tokens_per_second"),
        "test_translations_per_second": m.get("test_translations_per_second"),
        "peak_memory_gb": m.get("peak_memory_gb"), "precision": tags.get("precision"),
        "cpu_precision": tags.get("cpu_precision"), "cpu_precision_reason": tags.get("cpu_precision_reason"),
        "encoder_params": tags.get("pose_encoder_params"), "feature_dim": tags.get("pose_feature_dim"),
        "overrides": overrides(steps, test_samples),
    }


def render(p: dict) -> list[str]:
    """The pose section of docs/benchmarks.md."""
    return [
        "## 5. Pose input (`+experiment=pose_quick`, shortened)",
        "",
        f"`python -m slt_hydra {' '.join(p['overrides'])}`: the pose encoder ({int(p['encoder_params']) / 1e6:.1f} M "
        f"parameters, {p['feature_dim']} values per frame) and LoRA on SmolLM2-135M, {p['steps']} optimizer steps "
        f"of 16 sequences, then {p['test_samples']} test poses translated; precision chosen by `hardware=auto`: "
        f"{p['cpu_precision']} ({p['cpu_precision_reason'] or 'set, not measured'}).",
        "",
        "| frames/s (training) | real tokens/s (training) | s / step | test translations/s | peak memory | job wall |",
        "|---|---|---|---|---|---|",
        f"| {fmt(p['frames_per_second'], 0)} | {fmt(p['tokens_per_second'], 0)} | {fmt(p['seconds_per_step'], 2)} | "
        f"{fmt(p['test_translations_per_second'], 2)} | {fmt(p['peak_memory_gb'], 1)} GB | {fmt(p['wall'], 0)} s |",
        "",
        "Real tokens count the soft tokens (one per `pose.downsample` frames) and the text, not padding. No plain "
        "TRL or transformers contender exists for keypoint input (neither has a model that reads keypoints), so "
        "this row has no ratio; the gloss rows above compare the shared machinery (TRL's trainer, PEFT, generation).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pose", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of 16 sequences")
    parser.add_argument("--test-samples", type=int, default=24, help="test poses translated")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None, help="also write the section of docs/benchmarks.md here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_pose_"))
    result = benchmark(args.steps, args.test_samples, workdir)
    print(json.dumps(result, indent=1, default=str))
    print("\n".join(render(result)))
    if args.md:
        args.md.write_text("\n".join(render(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
