"""Batched translation with the model's chat template: greedy by default, beam or sampling on request.

Also a command line that reloads a trained run (its base model as the run loaded it + its LoRA adapter) and
translates a file, stdin, or line by line:  python -m slt_hydra.translate --help
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from slt_hydra.data import Example, build_messages
from slt_hydra.errors import SetupError
from slt_hydra.schema import translation_batch_size


def translate(model, tokenizer, sources: Sequence[str], dataset_cfg: DictConfig, generate_cfg: DictConfig,
              batch_size: int, shots_for: Callable[[str], Sequence[Example]] | None = None) -> list[str]:
    """Translate ``sources`` in batches; returns one string per source, in order.

    Prompts are left-padded (decoder-only models continue from the right edge) and sorted by
    length in tokens so each batch pads little; the KV cache is on (generate's default). With one beam, the
    batch's shared first tokens are computed once (``shared_prefix``); greedy decoding also lets finished rows
    leave the batch (``generate_dropping_finished``). The outputs are those of one plain generate call per
    sentence (200/200 identical on the demo, docs/benchmarks.md). ``shots_for`` gives each source its k-shot
    demonstration pairs (evaluation-only runs). An encoder-decoder model (T5, NLLB) gets no chat prompt:
    ``seq2seq.translate`` feeds the encoder its prefix + the source.
    """
    import torch

    if is_encoder_decoder(model):
        from slt_hydra.seq2seq import translate as translate_seq2seq

        return translate_seq2seq(model, tokenizer, sources, generate_cfg, batch_size)
    prompts = [
        tokenizer.apply_chat_template(build_messages(src, dataset_cfg, shots_for(src) if shots_for else ()),
                                      add_generation_prompt=True, tokenize=False)
        for src in sources
    ]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # in tokens: half the padding of characters
    outputs: list[str] = [""] * len(prompts)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    contiguous = head.register_forward_pre_hook(contiguous_input) if head is not None else None
    kwargs = generation_kwargs(generate_cfg, pad_token_id=tokenizer.pad_token_id)
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.inference_mode():
                if generate_cfg.num_beams == 1:  # beam search would need the shared cache expanded per beam
                    enc = shared_prefix(model, enc, tokenizer.pad_token_id)
                if generate_cfg.num_beams == 1 and not generate_cfg.do_sample and not several_processes():
                    new_tokens = generate_dropping_finished(model, enc, kwargs, stop_token_ids(model, tokenizer))
                else:
                    new_tokens = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = text.strip()
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
        if contiguous is not None:
            contiguous.remove()
    return outputs


def generation_kwargs(generate_cfg: DictConfig, **extra) -> dict:
    """model.generate's decoding arguments from the generate group (both the chat and the seq2seq paths)."""
    kwargs = dict(max_new_tokens=generate_cfg.max_new_tokens, num_beams=generate_cfg.num_beams,
                  do_sample=generate_cfg.do_sample, repetition_penalty=generate_cfg.repetition_penalty, **extra)
    if generate_cfg.do_sample:
        kwargs.update(temperature=generate_cfg.temperature, top_p=generate_cfg.top_p)
    else:  # silence the model's own sampling defaults under greedy/beam decoding
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def generate_dropping_finished(model, enc: dict, kwargs: dict, stop_ids: list[int], every: int = 4):
    """Greedy ``generate`` in rounds of ``every`` new tokens; after each round the rows that produced a stop token
    leave the batch, their KV-cache rows with them. In one generate call every finished row runs on until the
    batch's longest translation ends: 13.3 decoding positions per demo translation at batch 128 instead of 8.0
    (this gave 1.18x translations/s, docs/benchmarks.md). Each round continues from the cache (only the last
    token is new to it) with the whole sequence as input_ids, so greedy decoding gives the same tokens as one
    call. Returns the new tokens, pad-filled after each row's stop token."""
    import torch

    ids, mask, cache = enc["input_ids"], enc["attention_mask"], enc.get("past_key_values")
    budget, pad = kwargs["max_new_tokens"], kwargs["pad_token_id"]
    stop = torch.tensor(stop_ids, dtype=torch.long, device=ids.device)
    rows = torch.arange(ids.shape[0], device=ids.device)  # which rows of the batch are still running
    new_tokens = ids.new_full((ids.shape[0], budget), pad)
    produced = 0
    while True:
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, return_dict_in_generate=True,
                             **{**kwargs, "max_new_tokens": min(every, budget - produced)})
        new = out.sequences[:, ids.shape[1]:]
        new_tokens[rows, produced:produced + new.shape[1]] = new
        produced += new.shape[1]
        running = ~torch.isin(new, stop).any(1)
        if produced >= budget or not running.any():
            return new_tokens[:, :produced]
        keep = running.nonzero().squeeze(1)
        cache = out.past_key_values
        cache.batch_select_indices(keep)
        ids = out.sequences[keep]
        mask = torch.cat([mask[keep], mask.new_ones(len(keep), new.shape[1])], 1)
        rows = rows[keep]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a translation: the generation config's EOS ids (an int or a list), else the
    tokenizer's; none at all: no row ever leaves early."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def several_processes() -> bool:
    """FSDP/ZeRO-3 ranks translate in step (every forward gathers the shards): one generate call per batch, whose
    synced_gpus keeps them together, rather than rounds each rank would end on its own."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def contiguous_input(module, args):
    """A forward pre-hook for the LM head. In prefill, generate keeps only each row's last hidden state for the
    head; that slice of a batch is not contiguous, and torch then runs the head as a batched matmul against the
    weight broadcast to every row: 241 ms against 39 ms for one plain matmul at batch 64 here (torch.profiler)."""
    return (args[0].contiguous(), *args[1:])


def shared_prefix(model, enc, pad_token_id: int) -> dict:
    """Run the batch's common first tokens (the system turn of a chat prompt, ~40 % of a demo prompt) once and
    share their KV cache across the batch; generate then prefills only what differs. The rows are re-laid out
    as [prefix][padding][rest], same width, so the new tokens still start at the same column; positions come
    from the attention mask, so the outputs do not change (200/200 identical on the demo, fp32). Prefill is most
    of a short translation's compute on CPU: this gave 1.36x translations/s at batch 128 (docs/benchmarks.md)."""
    import torch
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    rows = [ids[i, ids.size(1) - int(n):] for i, n in enumerate(mask.sum(1))]  # left padded: tokens at the right
    shortest = min(len(r) for r in rows)
    same = torch.stack([r[:shortest] for r in rows]).eq(rows[0][:shortest]).all(0)
    length = min(int(same.long().cumprod(0).sum()), shortest - 1)  # generate needs >= 1 token of its own per row
    if len(rows) < 2 or length < 4:
        return dict(enc)
    prefix = rows[0][:length].unsqueeze(0)
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, attention_mask=torch.ones_like(prefix), past_key_values=cache, use_cache=True,
          logits_to_keep=1)  # only the cache is wanted: skip the LM head over the prefix
    cache.batch_repeat_interleave(len(rows))
    width = ids.size(1)
    pads = [ids.new_full((width - len(r),), pad_token_id) for r in rows]
    return {
        "input_ids": torch.stack([torch.cat([r[:length], p, r[length:]]) for r, p in zip(rows, pads)]),
        "attention_mask": torch.stack([torch.cat([mask.new_ones(length), mask.new_zeros(len(p)),
                                                  mask.new_ones(len(r) - length)]) for r, p in zip(rows, pads)]),
        "past_key_values": cache,
    }


def is_encoder_decoder(model) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


# --------------------------------------------------------------------------- command line
#
# python -m slt_hydra.translate: reload a trained adapter on its base model (as the run loaded it) and
# translate a file, stdin, or interactively. slt_hydra.merge reuses the run-resolving helpers below.

PROG = "python -m slt_hydra.translate"
CONFIG_GROUPS = ("model", "quant", "hardware", "dataset", "generate", "lora", "cache_dir")
PROMPT = "gloss> "


def report_error(prog: str, error: BaseException) -> int:
    """One line on stderr, no traceback, for an error the user fixes; returns the exit status (130 on Ctrl-C)."""
    if isinstance(error, KeyboardInterrupt):
        print(file=sys.stderr)
        return 130
    if isinstance(error, OmegaConfBaseException):  # an interpolation in the run's config that cannot resolve here
        error = f"cannot read the run's config: {str(error).splitlines()[0]}"
    print(f"{prog}: {error}", file=sys.stderr)
    return 2


class CliError(SetupError):
    """A bad command line or a run that cannot be reloaded; printed as one line, exit status 2."""


@dataclass
class AdapterRun:
    """What a trained run left that inference needs: its config groups and its adapter folder."""

    cfg: DictConfig  # model, quant, hardware, dataset, generate, lora, cache_dir (unresolved: read lazily)
    adapter_dir: Path
    origin: str  # where it came from, for messages
    notes: list[str] = field(default_factory=list)  # things the user should know (printed on stderr)
    _tmp: str | None = None  # downloaded MLflow artifacts, removed by cleanup()

    def cleanup(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--run-dir | --run-id [--tracking-uri] | --adapter [--base]: where the trained adapter comes from."""
    group = parser.add_argument_group("which trained adapter (exactly one of --run-dir, --run-id, --adapter)")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-dir", metavar="DIR", type=Path,
                       help="a run's output directory (hydra.run.dir): uses DIR/.hydra/config.yaml and DIR/adapter")
    which.add_argument("--run-id", metavar="ID",
                       help="an MLflow run id: downloads its config.yaml and adapter/ artifacts")
    which.add_argument("--adapter", metavar="DIR", type=Path,
                       help="a PEFT adapter folder (adapter_config.json); with --base")
    group.add_argument("--base", metavar="MODEL_DIR", type=Path,
                       help="with --adapter: the base model folder (default: the adapter's base_model_name_or_path "
                            "when that is a local folder)")
    group.add_argument("--tracking-uri", metavar="URI",
                       help="with --run-id: the MLflow store (default: $MLFLOW_TRACKING_URI, else "
                            "sqlite:///$PWD/mlflow.db)")


def _check_adapter_dir(adapter_dir: Path, what: str) -> None:
    if (adapter_dir / "adapter_config.json").is_file():
        return
    full = adapter_dir.parent / "model"
    if full.is_dir() and (full / "config.json").is_file():
        raise CliError(f"{what}: no LoRA adapter at {adapter_dir}, but {full} holds a fully fine-tuned model "
                       "(lora.enabled=false): load it directly with AutoModelForCausalLM.from_pretrained")
    if not adapter_dir.exists():
        raise CliError(f"{what}: adapter folder {adapter_dir} does not exist")
    raise CliError(f"{what}: {adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")


def _load_yaml(path: Path, what: str) -> DictConfig:
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # yaml or OmegaConf syntax errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CliError(f"{what}: cannot read {path} ({type(error).__name__}: {first})") from error
    missing = [g for g in CONFIG_GROUPS if g not in cfg]
    if missing:
        raise CliError(f"{what}: {path} lacks the config group(s) {missing}: is it a slt_hydra run config?")
    return OmegaConf.masked_copy(cfg, list(CONFIG_GROUPS))


def _absolute_model_path(cfg: DictConfig, launch_dir: str | None) -> None:
    """A relative model.path was relative to where the run was launched: make it absolute."""
    path = cfg.model.get("path")
    if path and launch_dir and not Path(os.path.expandvars(str(path))).expanduser().is_absolute():
        cfg.model.path = str(Path(launch_dir) / os.path.expandvars(str(path)))


def _from_run_dir(run_dir: Path) -> AdapterRun:
    from omegaconf import OmegaConf

    what = f"--run-dir {run_dir}"
    if not run_dir.is_dir():
        raise CliError(f"{what}: no such directory (give the hydra.run.dir of a finished `python -m slt_hydra` run)")
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise CliError(f"{what}: {config} not found: not the output directory of a `python -m slt_hydra` run")
    _check_adapter_dir(run_dir / "adapter", what)
    cfg = _load_yaml(config, what)
    launch_dir = None
    try:
        launch_dir = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # no hydra.yaml, or unreadable: a relative model.path then stays relative to $PWD
        pass
    _absolute_model_path(cfg, launch_dir)
    return AdapterRun(cfg, run_dir / "adapter", f"run directory {run_dir}")


def default_tracking_uri(explicit: str | None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _from_run_id(run_id: str, tracking_uri: str | None) -> AdapterRun:
    import logging

    uri = default_tracking_uri(tracking_uri)
    what = f"--run-id {run_id}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise CliError(f"{what}: no MLflow store at {uri} (the file does not exist); pass --tracking-uri URI "
                       "or set MLFLOW_TRACKING_URI")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Updating database tables" chatter
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        raise CliError(f"{what}: no such run in the MLflow store {uri} ({str(error).splitlines()[0]})") from error
    tmp = tempfile.mkdtemp(prefix="slt_hydra_run_")
    try:
        try:
            config = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                         dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as error:
            raise CliError(f"{what}: the run has no config.yaml artifact ({str(error).splitlines()[0]}); "
                           "was it made by `python -m slt_hydra`?") from error
        try:
            adapter = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter",
                                                          dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as error:
            status = run.data.tags.get("slt.status", run.info.status)
            raise CliError(f"{what}: the run ({status}) has no adapter/ artifact: it was trained with "
                           "mlflow.log_adapter=false or lora.enabled=false, or ended before saving; use "
                           "--run-dir on its output directory instead") from error
        cfg = _load_yaml(Path(config), what)
        _check_adapter_dir(Path(adapter), what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AdapterRun(cfg, Path(adapter), f"MLflow run {run_id} ({uri})", _tmp=tmp)


def _compose_defaults() -> DictConfig:
    """The default experiment's config (conf/config.yaml): its prompt, generation and hardware settings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from slt_hydra.run import CONF_DIR
    from slt_hydra.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["model=local"])
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _from_adapter(adapter_dir: Path, base: Path | None) -> AdapterRun:
    import json

    from omegaconf import OmegaConf

    what = f"--adapter {adapter_dir}"
    _check_adapter_dir(adapter_dir, what)
    if base is None:
        try:
            recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError) as error:
            raise CliError(f"{what}: unreadable adapter_config.json ({error})") from error
        if not recorded or not Path(recorded).is_dir():
            raise CliError(f"{what}: pass --base MODEL_DIR (the adapter names its base as {recorded!r}, "
                           "which is not a local folder)")
        base = Path(recorded)
    notes = []
    run_config = adapter_dir.parent / ".hydra" / "config.yaml"
    if run_config.is_file():  # the adapter of a run directory: keep the run's prompt, quantization, hardware
        cfg = _load_yaml(run_config, what)
    else:
        cfg = OmegaConf.masked_copy(_compose_defaults(), list(CONFIG_GROUPS))
        notes.append("no run config next to the adapter: using the default experiment's prompt and generation "
                     "settings, base weights unquantized (use --run-dir or --run-id to reload a run as trained)")
    for key, value in {"name": "local", "hub_id": None, "gguf": None, "revision": None,
                       "path": str(base.expanduser().absolute())}.items():
        cfg.model[key] = value
    return AdapterRun(cfg, adapter_dir, f"adapter {adapter_dir} on {base}", notes)


def resolve_run(args: argparse.Namespace) -> AdapterRun:
    """The run named on the command line; CliError if it cannot be found. Loads no model."""
    if args.base is not None and args.adapter is None:
        raise CliError("--base only goes with --adapter (a run's config names its own base model)")
    if args.tracking_uri is not None and args.run_id is None:
        raise CliError("--tracking-uri only goes with --run-id")
    if args.run_dir is not None:
        return _from_run_dir(args.run_dir)
    if args.run_id is not None:
        return _from_run_id(args.run_id, args.tracking_uri)
    return _from_adapter(args.adapter, args.base)


def fit_hardware(run: AdapterRun) -> None:
    """hardware=auto -> this machine's profile; a CUDA run reloaded where there is no CUDA -> the cpu profile."""
    from omegaconf import OmegaConf

    from slt_hydra.machine import detect_machine
    from slt_hydra.run import CONF_DIR, resolve_hardware

    machine = detect_machine()
    resolve_hardware(run.cfg, machine)
    if run.cfg.hardware.device == "cuda" and not machine.cuda:
        run.notes.append(f"the run used hardware={run.cfg.hardware.name} (CUDA) and this machine has no CUDA "
                         "device: loading on CPU with the cpu profile")
        run.cfg.hardware = OmegaConf.merge(run.cfg.hardware, OmegaConf.load(CONF_DIR / "hardware" / "cpu.yaml"))


def quiet_loading() -> None:
    """No per-tensor 'Loading weights' bars (ours is the one that matters), no v6 deprecation chatter."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated and will be removed in v6")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer_like_run(run: AdapterRun, tokenizer):
    """The tokenizer the run saved beside its adapter (what it trained and translated with), else the base's."""
    if not (run.adapter_dir / "tokenizer_config.json").is_file():
        return tokenizer
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(run.adapter_dir), local_files_only=True)
    if saved.pad_token is None:
        saved.pad_token = tokenizer.pad_token or saved.eos_token
    return saved


def load_adapted_model(run: AdapterRun):
    """Base model exactly as the run loaded it (quantization, dtype, device) + the trained adapter."""
    from peft import PeftModel

    from slt_hydra.models import load_model_and_tokenizer, locate_model

    source = locate_model(run.cfg.model, run.cfg.cache_dir)
    if source.local:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if run.cfg.hardware.get("torch_threads"):
        import torch

        torch.set_num_threads(run.cfg.hardware.torch_threads)
    base, tokenizer = load_model_and_tokenizer(run.cfg, source)
    model = PeftModel.from_pretrained(base, str(run.adapter_dir))
    model.eval()
    return model, load_tokenizer_like_run(run, tokenizer)


def one_line(text: str) -> str:
    """A translation as one output line (a model can emit newlines)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def read_input(path: str) -> list[str]:
    """One gloss sequence per line ('-' = stdin); CliError when there is nothing to translate."""
    from slt_hydra.data import _lines, _read_text

    if path == "-":
        lines = _lines(sys.stdin.read())
        where = "stdin"
    else:
        file = Path(path)
        if not file.is_file():
            raise CliError(f"--input {path}: no such file")
        lines = _lines(_read_text(file))
        where = str(file)
    if not any(line.strip() for line in lines):
        raise CliError(f"empty input: {where} holds no gloss sequence (one per line)")
    return lines


def translate_lines(model, tokenizer, lines: list[str], cfg: DictConfig, batch_size: int) -> list[str]:
    """translate() over all non-blank lines with a progress bar; a blank line gives a blank output line.

    Sources are ordered the way translate() orders them (by prompt length) before they are cut into
    batches, so the batches, and so the outputs, are the same as one translate() call over everything.
    """
    from tqdm import tqdm

    wanted = [i for i, line in enumerate(lines) if line.strip()]
    sources = [lines[i].strip() for i in wanted]
    lengths = ([len(s) for s in sources] if is_encoder_decoder(model) else  # seq2seq: constant prefix + source
               [len(tokenizer.apply_chat_template(build_messages(s, cfg.dataset), add_generation_prompt=True,
                                                  tokenize=False)) for s in sources])
    order = sorted(range(len(sources)), key=lambda i: lengths[i])
    outputs = [""] * len(lines)
    with tqdm(total=len(sources), desc="translating", unit="line", file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            texts = translate(model, tokenizer, [sources[i] for i in batch], cfg.dataset, cfg.generate, batch_size)
            for i, text in zip(batch, texts):
                outputs[wanted[i]] = one_line(text)
            bar.update(len(batch))
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
        (text,) = translate(model, tokenizer, [line.strip()], cfg.dataset, cfg.generate, 1)
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
        from slt_hydra.models import locate_model

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
