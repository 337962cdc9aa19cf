"""`make bench`: every comparison in one invocation, then docs/benchmarks.md.

    python -m benchmarks.run_all            # the full settings (53-57 min on a 2-core machine)
    python -m benchmarks.run_all --quick    # a smoke run of every part (21 min on 2 cores); writes the doc too
    python -m benchmarks.run_all --no-guide --out /tmp/b.md

Order: the overhead job first (the default job shortened to 9 steps and 50 dev/test sentences; its trained adapter
is then used for translation), training throughput (ours, the tuned TRL baseline and ours as before alternated, then
the guides' recipe once, then timers on our step), translation throughput, the pose path's throughput (the pose
quick experiment shortened: frames/s and real tokens/s; no plain-library contender exists for it), time to
quality (training minutes to a dev BLEU-4 of 55, ours against plain TRL's defaults, within a budget), and the
default job in the precision hardware=auto chose against fp32 (dev loss, test BLEU-4; three seeds, each in both).
Raw results (JSON) and every child's output are kept in the work folder named at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_overhead, bench_pose, bench_precision, bench_quality, bench_train, bench_translate
from benchmarks.common import ROOT, fmt, machine_facts, median

FULL = dict(train_steps=9, train_reps=5, guide_steps=1, profile_steps=2, sentences=200, translate_reps=2,
            batch_sizes=[64, 128, 256], overhead_steps=9, overhead_eval_samples=50, pose_steps=12, pose_test_samples=24,
            quality_every=4, quality_budget_minutes=10, precision_shorten=[], precision_seeds=[42, 43, 44])
QUICK = dict(train_steps=2, train_reps=1, guide_steps=0, profile_steps=1, sentences=24, translate_reps=1,
             batch_sizes=[8, 24], overhead_steps=2, overhead_eval_samples=8, pose_steps=2, pose_test_samples=4,
             quality_every=2, quality_budget_minutes=0.5,
             precision_shorten=["train.max_steps=2", "train.warmup_steps=1", "dataset.max_train_samples=32",
                                "dataset.max_eval_samples=8"], precision_seeds=[42, 43])
TRAIN_TARGET, LOSS_TOLERANCE, TRANSLATE_TARGET = 3.0, 0.02, 10.0
OVERHEAD_TARGET, LOAD_TARGET = 0.05, 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke settings: every part, tiny sizes")
    parser.add_argument("--no-guide", action="store_true", help="skip the guides' QLoRA recipe (~4 min a step)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--workdir", type=Path, default=None, help="raw results and logs (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every contender (default: torch's, one per core); 1 on a busy machine")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="measure nothing: write --out again from a results.json an earlier run saved")
    args = parser.parse_args(argv)
    if args.render:  # the text changed, not the figures
        args.out.write_text(render(json.loads(args.render.read_text())))
        print(f"wrote {args.out} from {args.render}", flush=True)
        return 0
    if args.threads:
        os.environ["SLT_BENCH_THREADS"] = str(args.threads)
    settings = dict(QUICK if args.quick else FULL)
    if args.no_guide:
        settings["guide_steps"] = 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    options = [o for o, on in (("--quick", args.quick), ("--no-guide", args.no_guide),
                               (f"--threads {args.threads}", args.threads)) if on]
    command = "make bench" + (f' BENCH_ARGS="{" ".join(options)}"' if options else "")
    started = time.perf_counter()
    facts = machine_facts()
    print(f"benchmarks ({'quick' if args.quick else 'full'}): raw results and logs in {workdir}", flush=True)
    with (workdir / "children.log").open("w") as log:
        overhead = bench_overhead.benchmark(settings["overhead_steps"], settings["overhead_eval_samples"],
                                            workdir / "overhead", log=log)
        train = bench_train.benchmark(settings["train_steps"], settings["train_reps"], settings["guide_steps"],
                                      workdir, log=log)
        profile = (bench_train.profile(settings["profile_steps"], workdir, log=log)
                   if settings["profile_steps"] else None)
        adapter = Path(overhead["adapter"])
        translate = bench_translate.benchmark(settings["sentences"], settings["translate_reps"],
                                              settings["batch_sizes"], adapter if adapter.is_dir() else None,
                                              workdir, log=log)
        pose = bench_pose.benchmark(settings["pose_steps"], settings["pose_test_samples"], workdir / "pose", log=log)
        quality = bench_quality.benchmark(settings["quality_every"], settings["quality_budget_minutes"], workdir,
                                          log=log)
        precision = bench_precision.benchmark(workdir / "precision", log=log,
                                              shorten=settings.get("precision_shorten"),
                                              seeds=tuple(settings.get("precision_seeds", bench_precision.SEEDS)))
    facts["loadavg_end"] = os.getloadavg()
    facts["threads_forced"] = args.threads
    total = time.perf_counter() - started
    results = {"facts": facts, "settings": settings, "quick": args.quick, "seconds": total, "command": command,
               "overhead": overhead, "train": train, "profile": profile, "translate": translate, "pose": pose,
               "quality": quality, "precision": precision}
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    print(f"wrote {args.out} ({total / 60:.1f} min); raw results: {workdir / 'results.json'}", flush=True)
    return 0


# --------------------------------------------------------------------------- the document


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def render(r: dict) -> str:
    f, s = r["facts"], r["settings"]
    v = f["versions"]
    lines = [
        "# Benchmarks: slt_hydra against plain TRL / transformers, side by side",
        "",
        f"Written by `{r['command']}` (`python -m benchmarks.run_all`) on "
        f"{f['date']} in {r['seconds'] / 60:.1f} min. Raw numbers: the `results.json` the command names at the end.",
        "",
        *([
            "> **Quick run** (`--quick`): tiny sizes, one repetition, no guide recipe; the figures below show that "
            "every "
            "part runs, not the full comparison. The full settings are `make bench`.",
            "",
        ] if r["quick"] else []),
        f"- Machine: {f['cpu']} (bf16 flags: {', '.join(f.get('cpu_bf16_flags') or []) or 'none'}), "
        f"{f['cores']} cores, {f['ram_gb']} GiB RAM, CUDA: {'yes' if f['cuda'] else 'no'}; "
        f"torch threads {threads_text(f)}; load average at start {fmt_load(f['loadavg'])}, at end "
        f"{fmt_load(f.get('loadavg_end'))} (above ~{f['cores']} the CPU was shared and the times are inflated).",
        f"- Python {f['python']}, torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
        f"peft {v['peft']}, bitsandbytes {v['bitsandbytes']}, accelerate {v['accelerate']}, "
        f"datasets {v['datasets']}, mlflow {v['mlflow']}, hydra-core {v['hydra-core']}.",
        f"- Model: the embedded SmolLM2-135M-Instruct (safetensors cache), LoRA {lora_text(f.get('lora'))}; data: "
        "the demo corpus (`slt_hydra/resources/demo`).",
        "- Medians over repetitions; contenders alternate (A B, B A, ...) and each runs in its own process.",
        "",
    ]
    lines += render_train(r["train"], r.get("profile"), s, r["translate"].get("shared_prefix_tokens"))
    lines += render_translate(r["translate"])
    lines += render_overhead(r["overhead"], s)
    if r.get("quality"):
        lines += bench_quality.render(r["quality"])
    if r.get("pose"):
        lines += bench_pose.render(r["pose"])
    if r.get("precision"):
        lines += bench_precision.render(r["precision"])
    lines += [
        "## GPU",
        "",
        "Not measured: no GPU was lent to this task, so every figure here is CPU-only. The same commands run on a CUDA "
        "machine (`hardware=auto` picks a GPU profile), but their GPU figures have not been taken.",
        "",
        "## Reproduce",
        "",
        "```bash",
        "make bench                     # full settings, writes docs/benchmarks.md",
        "make bench BENCH_ARGS=--quick  # smoke run of every part",
        "make bench BENCH_ARGS=\"--threads 1\"   # one torch thread per contender: steadier on a shared machine",
        "python -m benchmarks.bench_train --steps 9 --reps 5 [--guide]       # one part at a time",
        "python -m benchmarks.bench_translate --sentences 200 --reps 2 --batch-sizes 64,128,256 [--adapter DIR]",
        "python -m benchmarks.bench_overhead --steps 9 --eval-samples 50    # no options: the whole default job",
        "python -m benchmarks.bench_pose --steps 12 --test-samples 24       # the pose path",
        "python -m benchmarks.bench_quality --every 4 --budget-minutes 10   # time to dev BLEU-4 55",
        "python -m benchmarks.bench_precision                               # the default job: chosen vs fp32",
        "```",
        "",
        "Benchmarks are not tests: the test suite has no timed assertions.",
        "",
    ]
    return "\n".join(lines)


def lora_text(lora: dict | None) -> str:
    if not lora:  # results saved before the facts held it: lora=default as it was then (dropout 0 since 2026-12-05)
        return "r16 / alpha 32 / dropout 0 on q/k/v/o"
    return (f"r{lora['r']} / alpha {lora['alpha']} / dropout {lora['dropout']:g} on "
            f"{'/'.join(m.removesuffix('_proj') for m in lora['target_modules'])}")


def threads_text(f: dict) -> str:
    if f.get("threads_forced"):
        return f"{f['threads_forced']} for every contender (`--threads {f['threads_forced']}`)"
    return f"{f['torch_threads']} (torch's default)"


def fmt_load(load) -> str:
    return "n/a" if not load else " / ".join(f"{x:.1f}" for x in load)


def render_train(t: dict, profile: dict | None, s: dict, prefix_tokens: int | None = None) -> list[str]:
    sm = t["summary"]
    names = {"ours": "**ours** (`python -m slt_hydra` defaults)", "trl_tuned": "plain TRL, tuned for CPU",
             "ours_full_head": "ours before `score_target_positions_only` (TRL's CPU loss over every position)",
             "trl_guide": "guides' QLoRA recipe, as copied",
             "trl_defaults": "plain TRL, its own defaults (`SFTConfig()`: bf16 autocast, grad. ckpt)"}
    lines = [
        "## 1. Training throughput",
        "",
        f"{t['steps']} optimizer steps of 16 sequences (the default job's batch) from the demo train split, "
        f"{t['reps']} repetition(s) each"
        + (f"; the guides' recipe {t['guide_steps']} step(s), once" if t["guide_steps"]
           else "; the guides' recipe skipped")
        + (f"; plain TRL's defaults {t['defaults_steps']} step(s), once (bf16 is emulated on this CPU)"
           if t.get("defaults_steps") and not t.get("native_bf16") else "")
        + ". Real tokens = the tokenized examples' lengths (no padding), "
        "counted by one wrapper around each contender's data collator; time = `trainer.train()`'s runtime; peak "
        "memory = the contender process's VmHWM; train loss = the trainer's mean over the steps; held-out loss = "
        "one function for all, on 48 dev pairs after training.",
        "",
        "| contender | settings | real tokens/s | s/step | peak RSS GiB | train loss | held-out loss | padding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("ours", "trl_tuned", "trl_defaults", "ours_full_head", "trl_guide"):
        if name not in sm:
            continue
        row = sm[name]
        lines.append(
            f"| {names[name]} | {settings_text(row['settings'])} | {fmt(row['real_tokens_per_second'], 1)} | "
            f"{fmt(row['step_seconds_median'], 2)} | {fmt(row['peak_rss_gb'])} | {fmt(row['train_loss'], 4)} | "
            f"{fmt(row['heldout_loss'], 4)} | {fmt(100 * row['padding_share'], 1)} % |")
    lines.append("")
    if "ratio_vs_best_plain" in sm:
        best, base = sm["best_plain"], sm.get("best_plain_loss_base")
        diff = sm.get("heldout_loss_diff_vs_best_plain")
        ok = sm["ratio_vs_best_plain"] >= TRAIN_TARGET and diff is not None and loss_ok(diff)
        lines.append(
            f"- Baseline: the faster plain-TRL setting here, **{names[best]}**. ours / it: "
            f"**{sm['ratio_vs_best_plain']:.2f}x** real tokens/s; held-out loss "
            + (f"{100 * diff:+.1f} % against {names[base]}" if diff is not None else "not comparable (other steps)")
            + f". Target >= {TRAIN_TARGET:.0f}x with the held-out loss no more than {100 * LOSS_TOLERANCE:.0f} % "
            f"above the baseline's: {verdict(ok)}.")
    steady = steady_ratio(t)
    if steady:
        lines.append(
            f"- Without each contender's first optimizer step (warm-up: kernels built for each new shape, memory "
            f"allocated), each step's real tokens over its time: ours {steady[1]:.0f} real tokens/s, the baseline "
            f"{steady[2]:.0f}, so **{steady[0]:.2f}x** after the first step. (Ours trains length-grouped batches, "
            "longest first, so its step times fall through a run for that reason too; this rate counts each step's "
            "own tokens.) The verdict above stays on the whole 9 steps.")
    if "ratio_vs_tuned" in sm:
        lines += [
            f"- ours / tuned TRL: **{sm['ratio_vs_tuned']:.2f}x** real tokens/s (per CPU-second: "
            f"{sm['ratio_vs_tuned_cpu']:.2f}x); train loss {100 * sm['train_loss_diff']:+.1f} %, held-out loss "
            f"{100 * sm['heldout_loss_diff']:+.1f} %.",
        ]
    if "ratio_vs_full_head" in sm:
        lines.append(
            f"- ours / ours before (LM head over every position): **{sm['ratio_vs_full_head']:.2f}x**, train loss "
            f"{100 * sm['full_head_train_loss_diff']:+.2f} %: TRL's own compact loss path, which it takes on "
            "CUDA/XPU, now taken on CPU too (`training.score_target_positions_only`).")
    if "ratio_vs_guide" in sm:
        lines.append(f"- ours / the guides' recipe: **{sm['ratio_vs_guide']:.0f}x** real tokens/s "
                     f"({sm['trl_guide']['step_seconds_median']:.0f} s per step of 16 for the recipe).")
    lines.append("")
    if profile:
        lines += render_profile(profile, sm.get("ours"), sm.get(sm.get("best_plain", ""), None),
                                names.get(sm.get("best_plain", ""), "the baseline"), prefix_tokens)
    return lines


def steady_ratio(t: dict) -> tuple[float, float, float] | None:
    """ours / the baseline in real tokens per second over the steps after the first (medians over the repetitions):
    (ratio, ours' real tokens/s, the baseline's). Each step's own tokens count: ours trains length-grouped
    batches, longest first, so its step times alone would overstate its later steps' speed."""
    sm = t["summary"]
    best = sm.get("best_plain")
    if not best or "ours" not in sm:
        return None

    def rate(name):
        runs = [r for r in t["runs"] if r["contender"] == name and len(r.get("step_real_tokens") or []) > 1
                and len(r.get("step_seconds") or []) == len(r["step_real_tokens"])]
        if not runs or runs[0]["steps"] != t["steps"]:
            return None
        return median(sum(r["step_real_tokens"][1:]) / sum(r["step_seconds"][1:]) for r in runs)

    ours, base = rate("ours"), rate(best)
    return (ours / base, ours, base) if ours and base else None


def loss_ok(*differences: float) -> bool:
    """A loss within the tolerance of the baseline's, or lower."""
    return all(d <= LOSS_TOLERANCE for d in differences)


def settings_text(st: dict) -> str:
    parts = []
    if st.get("load_in_4bit"):
        parts.append("4-bit NF4")
    if st.get("precision") == "bfloat16":
        parts.append("bf16 weights, fp32 LoRA")
    else:
        parts.append("fp16 autocast" if st.get("fp16") else "bf16 autocast" if st.get("bf16") else "fp32")
    parts.append(f"{st.get('per_device_train_batch_size')}x{st.get('gradient_accumulation_steps')}")
    if st.get("train_sampling_strategy"):
        parts.append({"group_by_length": "length-grouped", "random": "random batches"}.get(
            st["train_sampling_strategy"], st["train_sampling_strategy"]))
    if st.get("padding_free"):
        parts.append("padding-free")
    if st.get("packing"):
        parts.append("packing")
    parts.append("grad. ckpt" if st.get("gradient_checkpointing") else "no grad. ckpt")
    if st.get("attention"):  # ours: hardware.train_attention as chosen here
        parts.append(f"{st['attention']} attention")
    parts.append(st.get("optim", ""))
    parts.append(f"{st.get('torch_threads')} threads")
    return ", ".join(p for p in parts if p)


PRECISION_WORDS = {"float32": "fp32", "bf16_autocast": "bf16 autocast over fp32 weights", "bfloat16": "bf16 weights"}


def render_profile(p: dict, ours: dict | None, baseline: dict | None = None, baseline_name: str = "",
                   prefix_tokens: int | None = None) -> list[str]:
    steps = p["steps"]
    lines = [
        "### Where our training step's time goes",
        "",
        f"Timers around each part of our run's step ({steps} step(s); process CPU seconds, all threads, which a busy "
        "machine disturbs less than wall seconds):",
        "",
        "| part | CPU s per step | share |",
        "|---|---|---|",
    ]
    for key, label in p["labels"].items():
        lines.append(f"| {label} | {fmt(p['cpu'][key] / steps, 2)} | "
                     f"{fmt(100 * p['cpu'][key] / p['total_cpu_seconds'], 1)} % |")
    head = (p["cpu"]["head_forward"] + p["cpu"]["head_backward"]) / p["total_cpu_seconds"]
    targets = f"{fmt(100 * ours['target_tokens'] / ours['real_tokens'], 0)} %" if ours else "a fifth"
    st = (ours or {}).get("settings", {})
    how = PRECISION_WORDS.get(st.get("precision"), "fp32")
    if st.get("attention"):
        how += f", {st['attention']} attention ({st.get('attention_reason', 'the model default')})"
    shared = ""
    if prefix_tokens and ours:  # the chat turn every row starts with, run once per batch of 16
        rows = ours["examples"] / ours["steps"]
        saved = (rows - 1) * prefix_tokens / (ours["real_tokens"] / ours["steps"])
        shared = (f" It runs the chat turn every row starts with ({prefix_tokens} tokens) once per batch, so about "
                  f"{fmt(100 * saved, 0)} % of the real tokens never pass through it.")
    lines += [
        "",
        f"The LM head and loss take {fmt(100 * head, 0)} % of our step: they score only the translation's "
        f"positions ({targets} of the real tokens here; the chat prompt is most of each sequence), where TRL 1.16 on a "
        "CPU (no Triton) sends every position, prompt and padding included, through the 49k-word vocabulary and back "
        f"(the row \"ours before\"). The rest is the 30-layer backbone in {how}." + shared + " Length-grouped "
        "batches leave it almost no padding. (TRL's `padding_free=True` was slower on top of them in a side run on "
        "the fp32 EPYC of 2026-12-03, 80 against 105 real tokens/s: with no varlen attention kernel on CPU, SDPA "
        "attends over the whole flattened batch under a block-diagonal mask.)",
        "",
    ]
    if ours and baseline:  # the ceiling: ours with everything but the backbone free, against the baseline
        backbone = (p["cpu"]["backbone_forward"] + p["cpu"]["backbone_backward"]) / p["total_cpu_seconds"]
        ceiling = ours["real_tokens_per_second"] / backbone / baseline["real_tokens_per_second"]
        lines += [
            f"The limit: the backbone's forward and backward are {fmt(100 * backbone, 0)} % of our step; were "
            f"everything else free, ours would run {ceiling:.1f}x the baseline ({baseline_name}) here"
            + (f", so the {TRAIN_TARGET:.0f}x target needs a faster backbone on this CPU (fused kernels such as "
               "`torch.compile`'s, not tried here), not less work around it." if ceiling < TRAIN_TARGET else "."),
            "",
        ]
    return lines


def render_translate(t: dict) -> list[str]:
    sm = t["summary"]
    model = ("with the LoRA adapter the overhead job (section 3) trained" if t.get("adapter")
             else "the base model (no adapter)")
    lines = [
        "## 2. Translation throughput",
        "",
        f"{t['sentences']} sentences (demo dev + test), SmolLM2-135M-Instruct {model}, greedy, max 64 new tokens, "
        f"{t['reps']} repetition(s); the plain-library contenders on fp32 weights, ours in the precision "
        f"`hardware=auto` chose here ({t.get('precision', 'float32')}"
        + (f": {t['ours_weights']} weights, a second model object" if t.get("ours_weights") not in (None, "float32")
           else "") + "). Speed-up: against the faster pipeline per sentence "
        f"({'bf16 autocast' if t.get('baseline') == 'pipeline_bf16' else 'fp32'} here). BLEU-4: against the "
        "references, with the fp32 pipeline's on the same sentences in brackets.",
        "",
        "| contender | translations/s | s per translation | speed-up | outputs identical to the fp32 pipeline's "
        "| BLEU-4 (pipeline) | decoder positions per translation (prefill + decoding) | GFLOP per translation "
        "| GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in sm.items():
        size = name.rsplit("_b", 1)[-1]
        label = ("`transformers.pipeline`, one call per sentence" if name == "pipeline"
                 else "`transformers.pipeline` under bf16 autocast, one call per sentence" if name == "pipeline_bf16"
                 else f"ours without the shared-prefix cache, batch {size}" if name.startswith("noprefix")
                 else f"ours without prefill in groups of rows (generate prefills the padded batch), batch {size}"
                 if name.startswith("nogroups")
                 else f"ours without merging the LoRA adapter (its own matmuls in every forward), batch {size}"
                 if name.startswith("nomerge")
                 else f"ours without dropping finished rows (one generate call per batch), batch {size}"
                 if name.startswith("nodrop")
                 else f"ours on fp32 weights, no autocast, batch {size}" if name.startswith("oursfp32")
                 else "transformers' continuous batching, `model.generate_batch`" if name == "generate_batch"
                 else f"ours, `translate()` batch {size}")
        work, n = row["work"], row["sentences"]
        positions = (f"{fmt(work['prefill_positions'] / n, 1)} (packed: both)" if name == "generate_batch" else
                     f"{fmt(work['prefill_positions'] / n, 1)} + {fmt(work['decode_positions'] / n, 1)}")
        lines.append(f"| {label} | {fmt(row['translations_per_second'])} | {fmt(row['seconds_per_translation'], 3)} | "
                     f"{fmt(row['speedup'])}x | {row['identical']}/{row['sentences']} | "
                     f"{fmt(row.get('bleu4'))} ({fmt(row.get('bleu4_pipeline'))}) | {positions} | "
                     f"{fmt(row['gflop_per_translation'])} | {fmt(row['gflop_per_second'], 0)} |")
    best = t["best_speedup"]
    same = t.get("best_same_bleu")  # the fastest row of ours whose BLEU-4 is within 0.5 of the fp32 pipeline's
    if same is None and "best_same_bleu" not in t:  # results saved before that row existed
        same = t["best"] if abs(sm[t["best"]].get("bleu4", 0) - sm["pipeline"].get("bleu4", 0)) <= 0.5 else None
    precision = PRECISION_WORDS.get(t.get("precision"), t.get("precision"))
    lines += [
        "",
        f"- Best batch size: **{t['best_batch_size']}** ({best:.1f}x the faster pipeline, in {precision}), BLEU-4 "
        f"{fmt(sm[t['best']].get('bleu4'))} against the fp32 pipeline's {fmt(sm['pipeline'].get('bleu4'))}. "
        + (f"The fastest row of ours within 0.5 BLEU-4 of it: {same} ({sm[same]['speedup']:.1f}x, BLEU-4 "
           f"{fmt(sm[same]['bleu4'])}, {sm[same]['identical']}/{sm[same]['sentences']} outputs identical). "
           if same else "No row of ours is within 0.5 BLEU-4 of it. ")
        + f"Target >= {TRANSLATE_TARGET:.0f}x at a BLEU-4 within 0.5: "
        f"{verdict(same is not None and sm[same]['speedup'] >= TRANSLATE_TARGET)}.",
    ]
    if "pipeline_bf16" in sm:
        b16 = sm["pipeline_bf16"]
        lines.append(
            f"- The pipeline in bf16 autocast: {fmt(b16['translations_per_second'])} translations/s against "
            f"{fmt(sm['pipeline']['translations_per_second'])} in fp32, over {b16['sentences']} sentences; "
            f"{b16['sentences'] - b16['identical']} of its outputs differ from fp32's; BLEU-4 {fmt(b16['bleu4'])} "
            f"against fp32's {fmt(b16['bleu4_pipeline'])} on the same sentences.")
    pipeline, ours = sm["pipeline"], sm[t["best"]]
    n = pipeline["sentences"]
    prompt, new = t["prompt_tokens"] / n, ours["new_tokens"] / n
    least = t["least_gflop_per_translation"]
    ceiling = ours["gflop_per_second"] / least / pipeline["translations_per_second"]
    roof = t["matmul_gflop_per_second"] / least / pipeline["translations_per_second"]
    largest = max(int(k.rsplit("_b", 1)[1]) for k in sm if k.startswith("ours_b"))
    mine = sm.get(f"ours_b{largest}")

    def gain(other: str) -> str:
        row = sm.get(f"{other}_b{largest}")
        return f"{mine['translations_per_second'] / row['translations_per_second']:.2f}x" if row and mine else "n/a"

    outputs_text = "bf16 or int8 weights would cut the work but change the outputs. "
    if t.get("precision", "float32") != "float32":
        row, fp32 = sm[t["best"]], next((k for k in sm if k.startswith("oursfp32")), None)
        outputs_text = (f"bf16 changes some outputs: {row['sentences'] - row['identical']} of {row['sentences']} "
                        f"differ from the fp32 pipeline's at batch {t['best_batch_size']}")
        outputs_text += (f"; on fp32 weights ours gives its outputs exactly ({sm[fp32]['identical']}/"
                         f"{sm[fp32]['sentences']}) at {fmt(sm[fp32]['translations_per_second'])} translations/s "
                         f"({sm[fp32]['speedup']:.1f}x). " if fp32 else ". ")
    lines += [
        "- GFLOP = 2 x the weight matrices' multiply-adds over the positions each contender's forward passes really "
        "ran (counted by a wrapper around the model's forward; attention scores left out, ~1 % at these lengths).",
        f"- Each translation is ~{prompt:.0f} prompt tokens ({t['shared_prefix_tokens']} of them the same chat turn "
        f"in every prompt) and ~{new:.0f} new ones. At batch {largest}, computing the shared turn once per batch "
        f"gives {gain('noprefix')}, prefilling groups of 32 neighbouring rows (each padded to its own longest) "
        f"instead of the whole padded batch {gain('nogroups')}, merging the LoRA adapter into the weights "
        f"{gain('nomerge')} and letting finished rows leave the batch {gain('nodrop')} (the rows without them). "
        "The pipeline rows run the adapter unmerged, as PEFT hands it over; merging it first (`merge_and_unload`) "
        "would speed the pipeline up too (not measured here).",
        f"- Where the time goes: a plain fp32 matmul of the model's MLP shape (1024 rows) runs "
        f"{fmt(t['matmul_gflop_per_second'], 0)} GFLOP/s on this machine. Ours ({precision}) runs "
        f"{fmt(ours['gflop_per_second'], 0)} GFLOP/s "
        + (f"({fmt(100 * ours['gflop_per_second'] / t['matmul_gflop_per_second'], 0)} % of it: the decoding steps' "
           "small matrices, attention and norms run slower)" if t.get("precision", "float32") == "float32"
           else "(bf16 matmuls)")
        + ", the pipeline "
        f"{fmt(pipeline['gflop_per_second'], 0)} GFLOP/s (one sentence at a time). Ours does "
        f"{fmt(ours['gflop_per_translation'])} GFLOP per translation at batch {t['best_batch_size']} (the pipeline "
        f"{fmt(pipeline['gflop_per_translation'])}); the least any batched greedy decoder can do here is "
        f"{fmt(least)} (each prompt's own ~{t['own_prompt_tokens']:.0f} tokens and each new token once, no padding): "
        f"{ceiling:.1f}x the pipeline at our rate, {roof:.1f}x at the plain matmul's."
        + (f" So the {TRANSLATE_TARGET:.0f}x target is out of reach on this CPU in fp32 with identical outputs."
           if roof < TRANSLATE_TARGET and t.get("precision", "float32") == "float32" else ""),
        (f"- transformers' continuous batching (paged cache, prompts packed without padding, finished rows dropped) "
         f"gives the same outputs at {fmt(sm['generate_batch']['translations_per_second'])} translations/s "
         f"({fmt(sm['generate_batch']['gflop_per_second'], 0)} GFLOP/s) here. " if "generate_batch" in sm else "- ")
        + outputs_text
        + f"The pipeline takes {fmt(pipeline['seconds_per_translation'], 2)} s per translation here, not the "
        "guides' 2-5 s: bigger models, where one-at-a-time decoding waits on memory reads that a batch shares.",
    ]
    diffs = t["runs"][0]["differences"].get(t["best"], [])
    if diffs:
        lines.append("- Where batched outputs differ from the pipeline's (first ones): " + "; ".join(
            f"`{src}`: ours \"{a}\" / pipeline \"{b}\"" for src, a, b in diffs[:3]) + ".")
    lines.append("")
    return lines


def own_imports_line(o: dict) -> list[str]:
    """The suite's own imports (outside the training stack), by the import that loaded them, biggest first."""
    own = o.get("own_imports_seconds", {})
    grouped = not own or isinstance(next(iter(own.values())), dict)
    if not grouped:  # results saved before 2026-12-06: {package: seconds}, each package on its own
        own = {name: {"seconds": seconds, "inside": {}} for name, seconds in own.items()}
    own = {name: entry for name, entry in own.items() if entry["seconds"] >= 0.05}
    if not own:
        return []

    def part(name, entry):
        inside = [f"{other} {fmt(seconds, 2)}" for other, seconds in entry["inside"].items()
                  if other != name and seconds >= 0.05][:4]
        return f"{name} {fmt(entry['seconds'], 2)} s" + (f" ({', '.join(inside)} of it)" if inside else "")

    parts = "; ".join(part(name, entry) for name, entry in list(own.items())[:6])
    total = fmt(sum(entry["seconds"] for entry in own.values()), 1)
    how = "by the import the suite asks for, with what it drags in" if grouped else "by package"
    if "rouge_score" in own:  # results from before the scorer's helper process (slt_hydra/scorer.py)
        libraries, helper = ("MLflow's tracking client and SQL store; rouge-score imports all of NLTK, which imports "
                             "scipy.stats and scikit-learn"), ""
    else:
        libraries = "MLflow's tracking client and SQL store"
        helper = (" rouge-score's (all of NLTK, which imports scipy.stats and scikit-learn: about a second) is not "
                  "among them: the job scores in a helper process that imports it on the other core while the job "
                  "imports torch and loads its model (slt_hydra/scorer.py).")
    return [f"- Of the suite's own seconds, importing what the training stack does not load ({total} s; {how}; "
            f"over 0.05 s): {parts}. These are the libraries' own import costs ({libraries}): fixed seconds that "
            f"no setting of ours removes.{helper}"]


def calibration_line(o: dict, d: dict) -> list[str]:
    """hardware=auto's measurements: cached or not in this job, and what they cost on a machine's first run."""
    timed = o.get("calibration_seconds")
    if not timed:
        return []
    first = sum(timed.values())
    cached = o.get("calibration_cached") or {}
    state = ("both read from the cache an earlier run on this machine wrote" if cached and all(cached.values())
             else "measured in this job" if cached and not any(cached.values()) else "partly cached")
    own = o["suite_overhead_seconds"] - o.get("shared_seconds", o["library_imports_seconds"])
    share = (own + first) / d["wall_seconds"] if cached and all(cached.values()) else None
    return [f"- `hardware=auto`'s measurements (precision calibration, attention kernel): {state}. Measured afresh, "
            f"as on a machine's first run, they take {fmt(timed['precision'], 2)} + {fmt(timed['attention'], 2)} s"
            + (f": the default job's own overhead with them, {fmt(100 * share, 1)} %." if share is not None else ".")]


def render_overhead(o: dict, s: dict) -> list[str]:
    wall = o["wall_seconds"]
    job = "the default job (`python -m slt_hydra`, no overrides)" if not o["overrides"] else (
        f"`python -m slt_hydra {' '.join(o['overrides'])}` (shortened)")
    lines = [
        "## 3. Overhead of the suite",
        "",
        f"{job}, one run, timed from process start to exit ({fmt(wall, 1)} s), with an MLflow store that already "
        "exists (as after a first run). Phases in the job's order; **bold** = the suite's overhead, the training "
        "stack's imports included (see below).",
        "",
        "| phase | seconds | share |",
        "|---|---|---|",
    ]
    for key, seconds in o["phases"].items():
        label = o["labels"][key]
        label = f"**{label}**" if key in o["overhead_keys"] else label
        lines.append(f"| {label} | {fmt(seconds, 1)} | {fmt(100 * seconds / wall, 1)} % |")
    d = o["default_job"]
    shortened = bool(o["overrides"])
    lines += [
        "",
        f"- The bold rows: {fmt(o['suite_overhead_seconds'], 1)} s = {fmt(100 * o['suite_overhead_share'], 1)} % "
        "of this job's wall time"
        + (f"; scaled to the default job ({d['steps']} steps, 100 dev + 100 test sentences: training, generation "
           f"and dev-loss evaluation grow with it, the overhead does not; {fmt(d['wall_seconds'], 0)} s): "
           f"{fmt(100 * d['suite_overhead_share'], 1)} %" if shortened else "")
        + f". {fmt(o['library_imports_seconds'], 1)} s of them is importing torch, transformers, TRL, PEFT, "
        "datasets and what they load ("
        + ("counted from the job's own `-X importtime` lines; "
           f"{fmt(o['library_imports_fresh_seconds'], 1)} s timed alone in a fresh interpreter"
           if "library_imports_fresh_seconds" in o else "timed alone in a fresh interpreter")
        + ")"
        + (f" and {fmt(o['trainer_init_seconds'], 1)} s is TRL's `SFTTrainer(...)` being built (it tokenizes the "
           "train split and wraps the model with LoRA; the job times the call)" if "trainer_init_seconds" in o else "")
        + ", which a plain TRL training script pays as well; the rest is the suite's own overhead (composition, "
        "validation, data checks, MLflow, checkpoints, saving, scoring, exit): "
        f"**{fmt(100 * d['own_overhead_share'], 2)} %** of the default job "
        f"({fmt(o['suite_overhead_seconds'] - o.get('shared_seconds', o['library_imports_seconds']), 1)} s). "
        f"Target < {100 * OVERHEAD_TARGET:.0f} %: {verdict(d['own_overhead_share'] < OVERHEAD_TARGET)}"
        + ("" if d["own_overhead_share"] < OVERHEAD_TARGET else
           ": these seconds are fixed, so their share grows as training and translation get faster")
        + ". Everything outside training and generation "
        f"(adding the imports, model load and dev-loss evaluation): {fmt(100 * d['outside_share'], 1)} % of the "
        "default job.",
        *own_imports_line(o),
        *calibration_line(o, d),
        f"- Model load from the local cache: {fmt(o['model_load_seconds'])} s. Target < {LOAD_TARGET:.0f} s: "
        f"{verdict(o['model_load_seconds'] < LOAD_TARGET)}.",
        f"- Process start -> training starts: {fmt(o['time_to_train_start'], 1)} s; -> first optimizer step done: "
        f"{fmt(o['time_to_first_step_end'], 1)} s (the default job translates the test split zero-shot and computes "
        "the dev loss before it trains).",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
