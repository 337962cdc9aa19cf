"""`python -m slt_hydra.translate`: translate with a trained run, from a file, stdin, or line by line; a run
trained on pose keypoints translates pose files (--poses).

Reloads the run's base model as the run loaded it (quantization, dtype) with its LoRA adapter (and a pose run's
encoder), and uses the run's prompt and decoding settings (slt_hydra/saved_run.py):
    python -m slt_hydra.translate --help
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
from slt_hydra.pose import pose_inputs, read_pose_inputs
from slt_hydra.saved_run import (
    add_run_arguments,
    fit_hardware,
    is_pose_run,
    load_adapted_model,
    pose_settings,
    quiet_loading,
    resolve_run,
)

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


def translate_poses_of(model, tokenizer, kind, cfg: DictConfig, names: list[str], batch_size: int) -> list[str]:
    """A pose run's translation of each pose (kind: the run's PoseLLM, around the poses read), as
    'name<TAB>translation' lines, in the order given."""
    with tqdm(total=len(names), desc="translating", unit="pose", file=sys.stderr, dynamic_ncols=True) as bar:
        texts = kind.translate(cfg, model, tokenizer, names, batch_size, on_batch=bar.update)
    return [f"{name}\t{one_line(text)}" for name, text in zip(names, texts)]


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
        description="Translate gloss sequences (or, for a run trained on pose input, pose files) with a trained "
                    "slt_hydra adapter, on its base model loaded as the run loaded it (same quantization and dtype) "
                    "and with the run's prompt and decoding settings.",
        epilog="modes:\n"
               "  --input FILE        translate FILE (one gloss sequence per line; '-' = stdin), one translation per\n"
               "                      line to --output (or stdout); blank lines stay blank; progress on stderr\n"
               "  --poses PATH ...    a run trained on pose input (dataset.input=pose): translate each pose (a .pose,\n"
               "                      .npy or .npz file, a folder of OpenPose *.json frames, or a folder of those),\n"
               "                      read as the run read its corpus; 'NAME<TAB>translation' lines in that order\n"
               "  (no --input)        stdin a terminal, or --interactive: prompt 'gloss> ', print each translation,\n"
               "                      stop at an empty line or EOF; stdin piped: translate all of it, as --input -\n"
               "examples:\n"
               f"  {PROG} --run-dir outputs/2026-11-22/17-03-54_local_none --input glosses.txt --output en.txt\n"
               f"  {PROG} --run-id 3f2a... --tracking-uri sqlite:///$PWD/mlflow.db\n"
               f"  echo 'IX-1 LIKE COFFEE' | {PROG} --adapter run/adapter --base /models/SmolLM2\n"
               f"  {PROG} --run-dir outputs/2026-12-03/10-12-01_local_none --poses poses/ --output en.tsv\n"
               "errors (no such run, adapter or config; empty input) end with one line on stderr and exit status 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    files = parser.add_argument_group("input and output")
    files.add_argument("--input", metavar="FILE", help="gloss sequences, one per line ('-' = stdin)")
    files.add_argument("--output", metavar="FILE",
                       help="with --input or --poses: where the translations go (default: stdout)")
    files.add_argument("--interactive", action="store_true", help="read from stdin line by line even when it is piped")
    files.add_argument("--poses", metavar="PATH", nargs="+", type=Path,
                       help="a pose run's input: pose files, OpenPose JSON folders, or folders of them")
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
        if args.output is not None and args.input is None and not args.poses:
            raise CliError("--output goes with --input or --poses (interactive translations are printed)")
        if args.interactive and args.input is not None:
            raise CliError("--interactive reads stdin: leave out --input")
        if args.poses and (args.input is not None or args.interactive):
            raise CliError("--poses is the input of a pose run: leave out --input and --interactive")
        run = resolve_run(args)
        pose_run = is_pose_run(run)
        if pose_run and not args.poses:
            raise CliError(f"{run.origin} was trained on pose input (its adapter holds a pose encoder): give the "
                           "poses to translate with --poses PATH ... (.pose/.npy/.npz files, OpenPose JSON folders, "
                           "or folders of them)")
        if args.poses and not pose_run:
            raise CliError(f"{run.origin} was trained on gloss text, not poses: give glosses with --input FILE (or "
                           "on stdin) instead of --poses")
        locate_model(run.cfg.model, run.cfg.cache_dir)  # a missing base fails now, not after reading input
        kind = poses = None
        if pose_run:  # every pose read and checked before the model loads
            settings = pose_settings(run)
            poses = read_pose_inputs(pose_inputs(args.poses), settings)
            if poses.feature_dim != settings["feature_dim"]:
                raise CliError(f"{run.origin} was trained on {settings['feature_dim']} values per frame "
                               f"({settings['read_layout']} layout, parts {settings['parts']}, {settings['dims']} "
                               f"dims); these poses give {poses.feature_dim} ({poses.layout} layout): give poses "
                               "extracted as the run's corpus was")
            kind = kind_for(run.cfg, poses)
        batch_mode = args.input is not None or pose_run or not (args.interactive or sys.stdin.isatty())
        lines = read_input(args.input or "-") if batch_mode and not pose_run else []
        if args.max_new_tokens is not None:
            run.cfg.generate.max_new_tokens = args.max_new_tokens
        fit_hardware(run)
        for note in run.notes:
            print(f"note: {note}", file=sys.stderr)
        quiet_loading()
        print(f"loading {run.cfg.model.name} ({run.cfg.quant.name}, {run.cfg.hardware.device}) + adapter from "
              f"{run.origin}", file=sys.stderr, flush=True)
        model, tokenizer = load_adapted_model(run, kind)
        if not batch_mode:
            interactive(model, tokenizer, run.cfg)
            return 0
        batch_size = args.batch_size or translation_batch_size(run.cfg)
        if pose_run:
            outputs = translate_poses_of(model, tokenizer, kind, run.cfg, list(poses.features), batch_size)
        else:
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
