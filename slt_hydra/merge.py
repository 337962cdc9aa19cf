"""Merge a trained LoRA adapter into its base model and save a plain transformers model.

    python -m slt_hydra.merge (--run-dir DIR | --run-id ID | --adapter DIR [--base MODEL_DIR]) --out OUT_DIR
                              [--dtype float32|bfloat16|float16]

The base is loaded unquantized in ``--dtype`` (float32 by default), also when the run trained its adapter
on 4-bit or 8-bit weights: a LoRA update cannot be folded into bitsandbytes-quantized weights, so it is
folded into the original weights instead. The result loads with ``AutoModelForCausalLM.from_pretrained``
(``AutoModelForSeq2SeqLM`` for T5/NLLB runs) alone (no PEFT, no bitsandbytes) and keeps the tokenizer's chat
template (seq2seq: the source prefix, in config.json). A pose run's trained encoder is saved beside it
(pose_encoder.safetensors + pose_encoder.json; ``slt_hydra.pose_model.load_merged_encoder`` loads it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from omegaconf.errors import OmegaConfBaseException

from slt_hydra.errors import CliError, SetupError, report_error
from slt_hydra.kinds import kind_for
from slt_hydra.models import locate_model
from slt_hydra.pose_model import load_encoder_settings, save_merged_encoder
from slt_hydra.saved_run import add_run_arguments, load_tokenizer_like_run, quiet_loading, resolve_run

PROG = "python -m slt_hydra.merge"
DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Merge a trained slt_hydra LoRA adapter into its base model (merge_and_unload) and save the "
                    "result as safetensors with its tokenizer and chat template: a standalone model for plain "
                    "transformers, vLLM, llama.cpp conversion, ...",
        epilog="The base is loaded UNQUANTIZED in --dtype even when the run trained on 4-bit/8-bit weights\n"
               "(merging into quantized weights is not possible): the merged model then holds the original,\n"
               "dequantized weights plus the adapter, and its outputs can differ slightly from the quantized\n"
               "base + adapter that the run evaluated.\n"
               "examples:\n"
               f"  {PROG} --run-dir outputs/2026-11-22/17-03-54_local_4bit --out merged/\n"
               f"  {PROG} --run-id 3f2a... --out merged/ --dtype bfloat16\n"
               "errors (no such run, adapter or config; --out not empty) end with one line on stderr and exit "
               "status 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="OUT_DIR", type=Path, required=True,
                     help="folder for the merged model (created; must be empty unless --overwrite)")
    out.add_argument("--dtype", choices=DTYPES, default="float32",
                     help="dtype of the loaded base and of the saved model (default: float32)")
    out.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    return parser


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CliError(f"--out {out} exists and is not empty: choose another folder or pass --overwrite")


def merge(run, dtype: str):
    """(merged model, tokenizer, note or None): base unquantized in ``dtype`` on CPU + adapter, merged."""
    cfg = run.cfg
    note = None
    if cfg.quant.get("load_in_4bit") or cfg.quant.get("load_in_8bit"):
        bits = "4-bit" if cfg.quant.get("load_in_4bit") else "8-bit"
        note = (f"the run trained this adapter on {bits} (bitsandbytes) base weights; merging into quantized "
                f"weights is not possible, so it is merged into the dequantized base: the original weights, "
                f"loaded unquantized in {dtype}. Outputs can differ slightly from the run's {bits} base + adapter.")
    # Same loader as training, with quantization off and everything on CPU in the requested dtype.
    for key, value in {"name": "none", "load_in_4bit": False, "load_in_8bit": False, "weights_dtype": dtype}.items():
        cfg.quant[key] = value
    cfg.hardware.device, cfg.hardware.dtype = "cpu", dtype
    source = locate_model(cfg.model, cfg.cache_dir)
    if source.local:
        os.environ["HF_HUB_OFFLINE"] = "1"
    kind = kind_for(cfg)
    base, tokenizer = kind.load(cfg, source)
    merged = kind.attach_adapter(base, run.adapter_dir).merge_and_unload()
    merged.eval()
    return merged, load_tokenizer_like_run(run, tokenizer), note


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = None
    try:
        check_out_dir(args.out, args.overwrite)
        run = resolve_run(args)
        locate_model(run.cfg.model, run.cfg.cache_dir)  # a missing base fails before anything is loaded
        for note in run.notes:
            print(f"note: {note}", file=sys.stderr)
        quiet_loading()
        print(f"loading {run.cfg.model.name} ({args.dtype}, unquantized) + adapter from {run.origin}",
              file=sys.stderr, flush=True)
        merged, tokenizer, note = merge(run, args.dtype)
        if note:
            print(f"note: {note}")
        encoder = getattr(merged, "pose_encoder", None)  # a pose run's trained encoder: saved beside, not inside
        if encoder is not None:
            del merged.pose_encoder
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            merged.save_pretrained(str(args.out))  # transformers 5 always writes safetensors
            tokenizer.save_pretrained(str(args.out))  # with its chat template (chat_template.jinja)
            if encoder is not None:
                save_merged_encoder(encoder.to(merged.dtype), args.out, load_encoder_settings(run.adapter_dir))
        except OSError as error:
            raise CliError(f"--out {args.out}: cannot write ({error})") from error
        out = args.out.resolve()
        params = sum(p.numel() for p in merged.parameters())
        print(f"merged model ({params / 1e6:.1f}M parameters, {args.dtype}, safetensors) and tokenizer "
              f"written to {out}")
        if encoder is not None:
            print(f"pose encoder ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M parameters) written "
                  "beside it: pose_encoder.safetensors, pose_encoder.json")
        kind = kind_for(run.cfg)
        print("load it with plain transformers (no PEFT, no bitsandbytes):\n"
              f"    from transformers import {kind.auto_class}, AutoTokenizer\n"
              f"    model = {kind.auto_class}.from_pretrained({str(out)!r})\n"
              f"    tokenizer = AutoTokenizer.from_pretrained({str(out)!r})\n"
              f"    # {kind.merged_inputs}")
        return 0
    except (SetupError, OmegaConfBaseException, KeyboardInterrupt) as error:
        return report_error("slt_hydra.merge", error)
    finally:
        if run is not None:
            run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
