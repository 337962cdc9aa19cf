"""`python -m slt_hydra.translate`: translate with a trained run, from a file, stdin, or line by line.

Reloads the run's base model as the run loaded it (quantization, dtype) with its LoRA adapter, and uses the run's
prompt and decoding settings (slt_hydra/saved_run.py):  python -m slt_hydra.translate --help
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from slt_hydra.config import translation_batch_size
from slt_hydra.data import lines_of, read_text
from slt_hydra.errors import CliError, SetupError, report_error
from slt_hydra.kinds import kind_for
from slt_hydra.models import locate_model
from slt_hydra.saved_run import add_run_arguments, fit_hardware, load_adapted_model, quiet_loading, resolve_run

PROG = "python -m slt_hydra.translate"
PROMPT = "gloss> "


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def one_line(text: str) -> str:
    """A translation as one output line (a model can emit newlines)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def read_input(path: str) -> list[str]:
    """One gloss sequence per line ('-' = stdin); CliError when there is nothing to translate."""
    if path == "-":
        lines = lines_of(sys.stdin.read())
        where = "stdin"
    else:
        file = Path(path)
        if not file.is_file():
            raise CliError(f"--input {path}: no such file")
        lines = lines_of(read_text(file))
        where = str(file)
    if not any(line.strip() for line in lines):
        raise CliError(f"empty input: {where} holds no gloss sequence (one per line)")
    return lines


def translate_lines(model, tokenizer, lines: list[str], cfg: DictConfig, batch_size: int) -> list[str]:
    """The run's translation of every non-blank line, with a progress bar; a blank line gives a blank output line.
    One translate call over all of them: the same batches, so the same outputs, as the run's own translation."""
    wanted = [i for i, line in enumerate(lines) if line.strip()]
    outputs = [""] * len(lines)
    with tqdm(total=len(wanted), desc="translating", unit="line", file=sys.stderr, dynamic_ncols=True) as bar:
        texts = kind_for(cfg).translate(cfg, model, tokenizer, [lines[i].strip() for i in wanted], batch_size,
                                        on_batch=bar.update)
    for i, text in zip(wanted, texts):
        outputs[i] = one_line(text)
    return outputs


def interactive(model, tokenizer, cfg: DictConfig) -> None:
    """Read a gloss sequence, print its translation; an empty line or EOF (Ctrl-D) ends."""
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print("type a gloss sequence and press Enter; an empty line or Ctrl-D ends", file=sys.stderr, flush=True)
    while True:
        if tty:
            try:
                line = input(PROMPT)
            except EOFError:
                print(file=sys.stderr)
                break
        else:  # piped: the prompt goes to stderr so stdout holds only translations
            print(PROMPT, end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
        if not line.strip():
            break
        (text,) = kind_for(cfg).translate(cfg, model, tokenizer, [line.strip()], 1)
        print(one_line(text), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Translate gloss sequences with a trained slt_hydra adapter, on its base model loaded as the "
                    "run loaded it (same quantization and dtype) and with the run's prompt and decoding settings.",
        epilog="modes:\n"
               "  --input FILE        translate FILE (one gloss sequence per line; '-' = stdin), one translation per\n"
               "                      line to --output (or stdout); blank lines stay blank; progress on stderr\n"
               "  (no --input)        stdin a terminal, or --interactive: prompt 'gloss> ', print each translation,\n"
               "                      stop at an empty line or EOF; stdin piped: translate all of it, as --input -\n"
               "examples:\n"
               f"  {PROG} --run-dir outputs/2026-11-22/17-03-54_local_none --input glosses.txt --output en.txt\n"
               f"  {PROG} --run-id 3f2a... --tracking-uri sqlite:///$PWD/mlflow.db\n"
               f"  echo 'IX-1 LIKE COFFEE' | {PROG} --adapter run/adapter --base /models/SmolLM2\n"
               "errors (no such run, adapter or config; empty input) end with one line on stderr and exit status 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    files = parser.add_argument_group("input and output")
    files.add_argument("--input", metavar="FILE", help="gloss sequences, one per line ('-' = stdin)")
    files.add_argument("--output", metavar="FILE", help="with --input: where the translations go (default: stdout)")
    files.add_argument("--interactive", action="store_true", help="read from stdin line by line even when it is piped")
    gen = parser.add_argument_group("decoding (default: the run's generate and hardware settings)")
    gen.add_argument("--batch-size", metavar="N", type=positive_int,
                     help="sentences per generate() call (default: generate.batch_size, else the hardware's "
                          "generate_batch_size, else its per_device_eval_batch_size)")
    gen.add_argument("--max-new-tokens", metavar="N", type=positive_int,
                     help="longest translation in tokens (default: generate.max_new_tokens)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = None
    try:
        if args.output is not None and args.input is None:
            raise CliError("--output goes with --input (interactive translations are printed)")
        if args.interactive and args.input is not None:
            raise CliError("--interactive reads stdin: leave out --input")
        run = resolve_run(args)
        locate_model(run.cfg.model, run.cfg.cache_dir)  # a missing base fails now, not after reading input
        batch_mode = args.input is not None or not (args.interactive or sys.stdin.isatty())
        lines = read_input(args.input or "-") if batch_mode else []
        if args.max_new_tokens is not None:
            run.cfg.generate.max_new_tokens = args.max_new_tokens
        fit_hardware(run)
        for note in run.notes:
            print(f"note: {note}", file=sys.stderr)
        quiet_loading()
        print(f"loading {run.cfg.model.name} ({run.cfg.quant.name}, {run.cfg.hardware.device}) + adapter from "
              f"{run.origin}", file=sys.stderr, flush=True)
        model, tokenizer = load_adapted_model(run)
        if not batch_mode:
            interactive(model, tokenizer, run.cfg)
            return 0
        batch_size = args.batch_size or translation_batch_size(run.cfg)
        outputs = translate_lines(model, tokenizer, lines, run.cfg, batch_size)
        text = "".join(line + "\n" for line in outputs)
        if args.output:
            out = Path(args.output)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text, encoding="utf-8", newline="\n")
            except OSError as error:
                raise CliError(f"--output {out}: cannot write ({error})") from error
            print(f"{len(outputs)} translations written to {out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        return 0
    except (SetupError, OmegaConfBaseException, KeyboardInterrupt) as error:
        return report_error("slt_hydra.translate", error)
    finally:
        if run is not None:
            run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
