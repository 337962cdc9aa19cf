"""Translation throughput: our batched greedy generation against one `transformers.pipeline` call per sentence.

    python -m benchmarks.bench_translate --sentences 200 --reps 2 --batch-sizes 8,16,32,64
    python -m benchmarks.bench_translate --adapter outputs/DATE/TIME_MODEL_QUANT/adapter   # a trained adapter

Same model object, same sentences (the demo dev + test splits), same chat-formatted prompts, greedy decoding
with generate=greedy's settings (max_new_tokens 64):

- pipeline:  ``pipeline("text-generation", model, tokenizer)`` called once per sentence with the chat messages,
             as the guides do;
- ours_bN:   ``slt_hydra.translate.translate`` (prompts sorted by length, left padding, KV cache, the batch's
             shared system turn computed once) at batch size N;
- noprefix_bN: the same without the shared-prefix cache (translate() as it was before), largest N only.

Each repetition is one child process that loads the model once and times every contender in turn, the
order reversed on every other repetition. Outputs are compared sentence by sentence with the pipeline's.
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import compose, fmt, median, quiet, run_child, write_result

BATCH_SIZES = (8, 16, 32, 64)


def load(adapter: Path | None, workdir: Path):
    """Our default config and model (as run.execute loads it), with a trained LoRA adapter if one is given."""
    from slt_hydra.data import load_splits
    from slt_hydra.models import load_model_and_tokenizer
    from slt_hydra.run import prepare

    cfg = compose([], workdir / "translate")
    prepared = prepare(cfg)
    model, tokenizer = load_model_and_tokenizer(cfg, prepared.source)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    splits, _ = load_splits(cfg.dataset)
    sources = [e.source for e in splits["dev"] + splits["test"]]
    return cfg, model, tokenizer, sources


def pipeline_translate(model, tokenizer, sources, cfg) -> list[str]:
    """One pipeline call per sentence, chat messages in, greedy: what the guides show."""
    from transformers import pipeline

    from slt_hydra.data import build_messages

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    gen = cfg.generate
    outputs = []
    for source in sources:
        result = pipe(build_messages(source, cfg.dataset), max_new_tokens=gen.max_new_tokens, do_sample=False,
                      num_beams=1, repetition_penalty=gen.repetition_penalty, temperature=None, top_p=None,
                      top_k=None, pad_token_id=tokenizer.pad_token_id)
        outputs.append(str(result[0]["generated_text"][-1]["content"]).strip())
    return outputs


def batch_size(name: str) -> int:
    return int(name.rsplit("_b", 1)[1])


@contextmanager
def no_shared_prefix():
    import slt_hydra.translate as module

    real = module.shared_prefix
    module.shared_prefix = lambda model, enc, pad_token_id: dict(enc)
    try:
        yield
    finally:
        module.shared_prefix = real


def child(sentences: int, batch_sizes: list[int], rep: int, adapter: Path | None, workdir: Path) -> dict:
    import torch

    from slt_hydra.data import build_messages
    from slt_hydra.translate import translate

    quiet()
    cfg, model, tokenizer, sources = load(adapter, workdir)
    if cfg.hardware.torch_threads:
        torch.set_num_threads(cfg.hardware.torch_threads)
    sources = sources[:sentences]
    names = ["pipeline"] + [f"ours_b{b}" for b in batch_sizes] + [f"noprefix_b{max(batch_sizes)}"]
    order = names if rep % 2 == 0 else list(reversed(names))
    timings, outputs = {}, {}
    for name in order:
        started = time.perf_counter()
        if name == "pipeline":
            outputs[name] = pipeline_translate(model, tokenizer, sources, cfg)
        elif name.startswith("noprefix"):  # our batched path as it was before the shared-prefix cache
            with no_shared_prefix():
                outputs[name] = translate(model, tokenizer, sources, cfg.dataset, cfg.generate, batch_size(name))
        else:
            outputs[name] = translate(model, tokenizer, sources, cfg.dataset, cfg.generate, batch_size(name))
        timings[name] = time.perf_counter() - started
    reference = outputs["pipeline"]
    prompts = [tokenizer.apply_chat_template(build_messages(src, cfg.dataset), add_generation_prompt=True,
                                             tokenize=False) for src in sources]
    prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    new_tokens = {name: sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
                  for name, texts in outputs.items()}
    return {
        "rep": rep, "order": order, "sentences": len(sources), "seconds": timings, "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "identical": {name: sum(a == b for a, b in zip(texts, reference)) for name, texts in outputs.items()},
        "differences": {name: [(s, a, b) for s, a, b in zip(sources, texts, reference) if a != b][:5]
                        for name, texts in outputs.items() if name != "pipeline"},
        "adapter": str(adapter) if adapter else None, "max_new_tokens": cfg.generate.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
    }


def benchmark(sentences: int, reps: int, batch_sizes: list[int], adapter: Path | None, workdir: Path,
              log=None) -> dict:
    runs = []
    for rep in range(reps):
        print(f"  translate: rep {rep + 1}/{reps} ({sentences} sentences; pipeline and batch sizes "
              f"{','.join(map(str, batch_sizes))})", flush=True)
        args = ["--child", "--sentences", str(sentences), "--rep", str(rep),
                "--batch-sizes", ",".join(map(str, batch_sizes))]
        if adapter is not None:
            args += ["--adapter", str(adapter)]
        runs.append(run_child("benchmarks.bench_translate", args, workdir / "translate", timeout=3600, log=log))
        r = runs[-1]
        print("    " + ", ".join(f"{name} {r['sentences'] / s:.2f}/s" for name, s in r["seconds"].items()), flush=True)
    n = runs[0]["sentences"]
    summary = {}
    for name in runs[0]["seconds"]:
        seconds = median(r["seconds"][name] for r in runs)
        summary[name] = {"seconds": seconds, "translations_per_second": n / seconds,
                         "seconds_per_translation": seconds / n,
                         "identical": min(r["identical"][name] for r in runs), "sentences": n,
                         "new_tokens": runs[0]["new_tokens"][name]}
    base = summary["pipeline"]["translations_per_second"]
    for name, row in summary.items():
        row["speedup"] = row["translations_per_second"] / base
    best = max((k for k in summary if k.startswith("ours_b")), key=lambda k: summary[k]["translations_per_second"])
    return {"sentences": n, "reps": reps, "adapter": runs[0]["adapter"], "runs": runs, "summary": summary,
            "best": best, "best_batch_size": batch_size(best), "best_speedup": summary[best]["speedup"],
            "prompt_tokens": runs[0]["prompt_tokens"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_translate", description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200, help="demo dev + test sentences translated (<= 200)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--adapter", type=Path, default=None, help="a trained LoRA adapter folder (default: none)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slt_bench_"))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.child:
        write_result(args.out, child(args.sentences, sizes, args.rep, args.adapter, workdir))
        return 0
    result = benchmark(args.sentences, args.reps, sizes, args.adapter, workdir)
    for name, row in result["summary"].items():
        print(f"{name:10s} {fmt(row['translations_per_second'])}/s  x{fmt(row['speedup'])}  "
              f"identical {row['identical']}/{row['sentences']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
