"""Every rule that spans config groups, in one pure function.

``check(cfg, machine)`` returns a list of problems, each naming what to change; it imports
no torch and touches no files, so a bad combination fails in well under a second.
Single runs raise them as one SetupError; sweep jobs record them in MLflow and move on.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from slt_hydra import memory
from slt_hydra.config import weights_kind
from slt_hydra.distributed import SHARDED, processes
from slt_hydra.machine import Machine, cpu_flags, has_native_bf16
from slt_hydra.metrics import SCORES
from slt_hydra.models import LANG_CODES, language_codes
from slt_hydra.pose import pose_files_named
from slt_hydra.pose_model import soft_tokens
from slt_hydra.schema import out_of_range
from slt_hydra.tracking import SECRET_KEY

log = logging.getLogger("slt_hydra")

def _secret_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if SECRET_KEY.search(str(key)) and value not in (None, ""):
                yield path
            yield from _secret_keys(value, path + ".")


def check(cfg: DictConfig, machine: Machine) -> list[str]:
    """Problems with this combination on this machine, each with the fix. Empty = go."""
    problems: list[str] = []
    hw, quant, lora, train = cfg.hardware, cfg.quant, cfg.lora, cfg.train
    on_cpu = hw.device == "cpu"
    weights = weights_kind(cfg)

    # Secrets come from the environment only, so they never reach saved configs or MLflow params.
    for key in _secret_keys(OmegaConf.to_container(cfg, resolve=False)):
        problems.append(
            f"`{key}` looks like a secret in the config: remove it and export it instead (HF_TOKEN=... in the "
            "environment); configs and overrides are saved to disk and logged to MLflow."
        )
    # Each setting on its own (schema.ALLOWED): the rules below assume these hold.
    problems += out_of_range(cfg)
    if problems:
        return problems

    # Hardware.
    if hw.device == "cuda" and not machine.cuda:
        problems.append(
            f"hardware={hw.name} needs a CUDA GPU and none is visible: use hardware=cpu (or hardware=auto)."
        )
    if on_cpu and ("paged" in hw.optim or "8bit" in hw.optim):
        problems.append(f"hardware.optim={hw.optim} needs CUDA: use hardware.optim=adamw_torch on CPU.")

    # Several processes (slt_hydra/distributed.py): what each strategy can shard, and where it runs.
    if hw.strategy != "ddp":
        if on_cpu:
            problems.append(f"hardware.strategy={hw.strategy} needs CUDA GPUs: on CPU only ddp runs "
                            "(hardware=cpu_ddp2).")
        if hw.num_processes * hw.num_nodes == 1:
            problems.append(f"hardware.strategy={hw.strategy} shards across processes and there is one: set "
                            "hardware.num_processes=N (one per GPU), or hardware.strategy=ddp.")
        if hw.strategy in SHARDED and quant.load_in_8bit:
            problems.append(f"quant=8bit with hardware.strategy={hw.strategy}: LLM.int8 weights cannot be sharded. "
                            "Use quant=4bit (QLoRA: the NF4 weights are then stored in the compute dtype, which "
                            "FSDP and ZeRO-3 can shard), or hardware.strategy=ddp / zero2.")
        if hw.strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
            problems.append(f"hardware.strategy={hw.strategy} needs DeepSpeed, which is not installed: "
                            "`pip install deepspeed` on the GPU machine, or use hardware.strategy=fsdp.")
    if hw.num_processes * hw.num_nodes > 1 and not cfg.eval.only:  # what the ranks do not share yet
        if cfg.model.get("architecture", "causal_lm") == "seq2seq":
            problems.append(f"hardware={hw.name} runs {hw.num_processes * hw.num_nodes} processes, and "
                            "model.architecture=seq2seq trains in one: use a single-process profile "
                            "(hardware=cpu / gpu_80gb, or hardware.num_processes=1).")
        if cfg.train.get("resume", "no") == "auto":
            problems.append("train.resume=auto resumes one process only: with several, every rank must restart "
                            "from the same checkpoint, which is not done yet. Use hardware.num_processes=1 to resume.")

    # Precision the hardware cannot compute.
    for what, dtype in (("quant", quant.weights_dtype), ("hardware.dtype", hw.dtype)):
        if dtype == "bfloat16":
            if on_cpu and not machine.cpu_bf16:
                problems.append(
                    f"{what}=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): every op would be emulated, "
                    "many times slower than fp32. Use quant=none (fp32) on this CPU, "
                    "or a GPU profile (hardware=gpu_24gb)."
                )
                break
            if hw.device == "cuda" and machine.cuda and not machine.gpu_bf16:
                problems.append(
                    f"{what}=bf16 but this GPU ({machine.gpu_name}) has no bf16: use quant=fp16 or hardware=gpu_16gb."
                )
                break
        if dtype == "float16" and on_cpu:
            problems.append(
                f"{what}=fp16 on CPU: half-precision training needs a CUDA GPU. Use quant=none (fp32) here, "
                "or quant=8bit / quant=4bit to save memory."
            )
            break

    # Quantized weights are frozen: only adapters can learn (QLoRA).
    training = not cfg.eval.only
    if training and (quant.load_in_4bit or quant.load_in_8bit) and not lora.enabled:
        problems.append(
            f"quant={quant.name} with lora=none: quantized base weights cannot be trained. "
            "Keep an adapter (lora=default) or train full weights unquantized (quant=none)."
        )
    if quant.load_in_4bit and quant.load_in_8bit:
        problems.append("quant: load_in_4bit and load_in_8bit are both true; pick quant=4bit or quant=8bit.")

    # Model source.
    sources = [k for k in ("path", "hub_id", "gguf") if cfg.model.get(k)]
    if not sources:
        problems.append(f"model={cfg.model.name} names no weights: set model.path=DIR or model.hub_id=ORG/NAME.")

    # Evaluation-only runs: an adapter or k-shot prompts only make sense there.
    if not cfg.eval.only and (cfg.eval.shots or cfg.eval.adapter):
        problems.append("eval.shots / eval.adapter apply to evaluation-only runs: add eval.only=true "
                        "(fine-tuned runs translate with the zero-shot prompt they were trained on).")

    # Sequence-to-sequence models (T5, NLLB: slt_hydra/kinds/seq2seq.py): no chat prompt, so no k-shot turns.
    if cfg.model.get("architecture", "causal_lm") == "seq2seq":
        problems += _seq2seq_problems(cfg)

    # Pose input (slt_hydra/pose.py, kinds/pose.py).
    if cfg.dataset.get("input", "gloss") == "pose":
        problems += _pose_problems(cfg)

    # Training schedule.
    if training and train.load_best_model_at_end:
        if train.eval_strategy == "no":
            problems.append("train.load_best_model_at_end=true needs dev evaluation: set train.eval_strategy=epoch "
                            "(or steps), or train.load_best_model_at_end=false.")
        elif train.save_strategy != train.eval_strategy:
            problems.append(f"train.load_best_model_at_end=true needs checkpoints when dev loss is computed: set "
                            f"train.save_strategy={train.eval_strategy} (now {train.save_strategy}).")
    if training and train.early_stopping_patience is not None and not train.load_best_model_at_end:
        problems.append("train.early_stopping_patience needs train.load_best_model_at_end=true (it tracks dev loss).")
    for kind in ("eval", "save"):
        if train[f"{kind}_strategy"] == "steps" and not train[f"{kind}_steps"]:
            problems.append(f"train.{kind}_strategy=steps needs train.{kind}_steps=N.")
    if training and train.resume == "auto" and train.save_strategy == "no":
        problems.append("train.resume=auto needs checkpoints to resume from: set train.save_strategy=steps "
                        "train.save_steps=N (or epoch).")
    if training and train.num_train_epochs <= 0 and train.max_steps <= 0:
        problems.append("nothing to train: set train.num_train_epochs > 0 or train.max_steps > 0.")

    # Generation.
    gen = cfg.generate
    if gen.do_sample and gen.temperature <= 0:
        problems.append("generate.do_sample=true needs generate.temperature > 0 (or use generate=greedy).")

    # What the sweepers optimize must be something the run computes.
    computed = {f"{split}_{score}" for split in cfg.eval.splits for score in SCORES}
    computed |= {"peak_memory_gb", "wall_seconds"}  # every run logs these last (the multi-objective trade-offs)
    if training and train.eval_strategy != "no":
        computed |= {"dev_loss", "dev_perplexity"}
    objectives = [cfg.eval.objective] if isinstance(cfg.eval.objective, str) else list(cfg.eval.objective)
    for objective in objectives:
        if objective not in computed:
            problems.append(
                f"eval.objective={objective} is not computed: use <split>_<score> with split in "
                f"eval.splits {list(cfg.eval.splits)} and score in {list(SCORES)} (e.g. dev_bleu4), dev_loss, "
                "peak_memory_gb or wall_seconds (a list of them for a multi-objective search)."
            )

    # Will it fit? (GB of RAM on CPU, of GPU memory on CUDA.) With arch numbers, the memory planner: refused when
    # what the run holds before its first token (weights, adapter, gradients, optimizer state, runtime) exceeds
    # the budget less 10% headroom; only warned when the peak with every sequence at train.max_length (the
    # planner's worst case: batches are padded to their longest example) does. Without, the coarse estimate.
    have = memory.budget_gb(cfg, machine)  # per GPU; on CPU the RAM shared out between the processes
    if have and cfg.model.get("arch"):
        plan = memory.plan_memory(cfg, machine)  # the machine only changes the verdict, not the totals
        need = plan.total_gb
        usable = have * (1 - memory.HEADROOM)
        if plan.floor_gb > usable or need > usable:
            fitting = [(change, total) for change, total, fits in memory.suggestions(cfg, plan, machine) if fits]
            fix = (f" The memory planner's first change that fits: {fitting[0][0]} (about {fitting[0][1]:.1f} GB)."
                   if fitting else "")
            fix += " Breakdown and other options: `python -m slt_hydra.plan` with the same overrides."
            if plan.floor_gb > usable:
                problems.append(
                    f"model={cfg.model.name} ({cfg.model.params_b}B) with {weights} weights needs about "
                    f"{plan.floor_gb:.1f} GB to fine-tune before its first token (weights, adapter, optimizer state, "
                    f"runtime), {need:.1f} GB at its peak, and hardware={hw.name} has {have:.1f} GB ({usable:.1f} GB "
                    "usable with 10% headroom). Lower the precision (quant=8bit or quant=4bit), use a smaller model, "
                    "or a bigger hardware profile." + fix
                )
            else:
                log.warning(
                    "model=%s may run out of memory: with every sequence at train.max_length=%s the memory plan peaks "
                    "at %.1f GB, and hardware=%s has %.1f GB usable. Short sentences need much less (batches are "
                    "padded to their longest example).%s", cfg.model.name, cfg.train.max_length, need, hw.name,
                    usable, fix)
    elif have and (need := memory.estimate_memory_gb(cfg)) is not None and need > have:
        problems.append(
            f"model={cfg.model.name} ({cfg.model.params_b}B) with {weights} weights needs about {need:.1f} GB to "
            f"fine-tune, and hardware={hw.name} has {have:.1f} GB. Lower the precision (quant=8bit or quant=4bit), "
            "use a smaller model, or a bigger hardware profile."
        )

    for note in warnings(cfg):  # not fatal: logged, the run goes on
        log.warning(note)
    return problems


def _pose_problems(cfg: DictConfig) -> list[str]:
    """dataset.input=pose: what the pose path (a chat LLM with a pose encoder; DDP for several processes) can do."""
    problems = []
    pose, dataset = cfg.pose, cfg.dataset
    if cfg.model.get("architecture", "causal_lm") == "seq2seq":
        problems.append("dataset.input=pose with model.architecture=seq2seq: the pose encoder feeds a decoder-only "
                        "chat LLM's prompt; use a causal LM (model=smollm2_135m_instruct, qwen2.5_7b_instruct, ...).")
    if not cfg.lora.enabled and not cfg.eval.only:
        problems.append("dataset.input=pose with lora=none: the encoder is trained and saved with the LLM's adapter "
                        "(PEFT modules_to_save); keep an adapter (lora=default).")
    if cfg.eval.shots:
        problems.append(f"eval.shots={cfg.eval.shots} with dataset.input=pose: k-shot turns are text; a pose prompt "
                        "holds one signing. Use eval.shots=0.")
    if dataset.direction != "gloss2text":
        problems.append(f"dataset.direction={dataset.direction} with dataset.input=pose: the model reads signing and "
                        "writes text; use dataset.direction=gloss2text.")
    if dataset.format in ("parallel", "hub"):
        problems.append(f"dataset.format={dataset.format} with dataset.input=pose: a pose corpus is a csv/tsv/jsonl "
                        "file per split naming each example's pose file; use dataset.format=csv|tsv|jsonl.")
    if "{source}" not in str(dataset.prompt):
        problems.append(f"dataset.prompt={dataset.prompt!r} has no {{source}}: it marks where the signing (the soft "
                        "tokens) goes in the prompt; add {source}.")
    if pose.hidden % pose.heads:
        problems.append(f"pose.hidden={pose.hidden} is not a multiple of pose.heads={pose.heads}: each head gets "
                        "hidden / heads dimensions; e.g. pose.hidden=256 pose.heads=4.")
    if not pose.parts:
        problems.append("pose.parts is empty: name the components to read, e.g. "
                        "pose.parts=[body,left_hand,right_hand].")
    elif len(set(pose.parts)) != len(pose.parts):
        problems.append(f"pose.parts={list(pose.parts)} names a part twice: list each once.")
    if processes(cfg.hardware) > 1 and cfg.hardware.strategy != "ddp" and not cfg.eval.only:
        problems.append(f"hardware.strategy={cfg.hardware.strategy} with dataset.input=pose: the pose encoder runs "
                        "before the LLM's forward, outside what FSDP/ZeRO shard and gather; train it with "
                        "hardware.strategy=ddp (each process holds the whole model).")
    soft = soft_tokens(pose.max_frames, pose.downsample)
    if soft >= cfg.train.max_length:
        problems.append(f"pose.max_frames={pose.max_frames} / pose.downsample={pose.downsample} gives up to {soft} "
                        f"soft tokens, not fewer than train.max_length={cfg.train.max_length}: no room for the "
                        "translation; raise train.max_length or pose.downsample, or lower pose.max_frames.")
    return problems


def _seq2seq_problems(cfg: DictConfig) -> list[str]:
    """model.architecture=seq2seq: what the encoder-decoder path cannot do, or needs."""
    problems = []
    if cfg.eval.shots:
        problems.append(f"eval.shots={cfg.eval.shots} with model.architecture=seq2seq: k-shot prompts are chat turns "
                        "for decoder-only LLMs; an encoder-decoder reads one source. Use eval.shots=0.")
    if cfg.model.get("gguf") and not cfg.model.get("path"):  # the embedded SmolLM2
        problems.append(f"model={cfg.model.name} is a decoder-only LLM: model.architecture=seq2seq needs an "
                        "encoder-decoder (model=t5_base, model=nllb_200_distilled_600m, or model=local "
                        "model.path=DIR).")
    codes = language_codes(cfg)
    if codes and None in codes:
        problems.append(f"model={cfg.model.name} needs FLORES-200 language codes and none is known for "
                        f"dataset.target_lang={cfg.dataset.target_lang!r} (known: {', '.join(sorted(LANG_CODES))}): "
                        "set model.tgt_lang=CODE and model.src_lang=CODE (e.g. deu_Latn).")
    return problems


def remarks(cfg: DictConfig) -> list[str]:
    """Remarks on the combination that do not stop a run and are not about memory (memory.plan_notes are)."""
    out = []
    model = cfg.model
    if model.get("reasoning"):
        out.append(f"model={model.name} is a reasoning model: it writes long step-by-step thinking before its answer "
                   "and is not meant for translation (slow generation, answers buried in reasoning; max_new_tokens "
                   "cuts them). Prefer an instruct model of the same size (e.g. model=qwen2.5_32b).")
    if model.get("chat_template") is False and model.get("architecture", "causal_lm") != "seq2seq":
        out.append(f"model={model.name}: its tokenizer ships no chat template; the run's chat-format prompts need one.")
    if (cfg.hardware.device == "cpu" and cfg.hardware.get("precision") == "bf16_autocast"
            and not has_native_bf16(cpu_flags())):
        out.append("hardware.precision=bf16_autocast on a CPU without AVX512-BF16/AMX: every bf16 matmul is "
                   "emulated, expect training many times slower than fp32 (hardware.precision=auto picks fp32 here).")
    strategy = cfg.hardware.get("strategy", "ddp")
    if processes(cfg.hardware) > 1 and strategy in SHARDED and cfg.eval.get("zero_shot") and not cfg.eval.get("only"):
        out.append(f"hardware.strategy={strategy}: no process holds the whole model, so the zero-shot translation "
                   "before training is skipped; after training every GPU translates in step and rank 0 scores.")
    return out


def warnings(cfg: DictConfig) -> list[str]:
    """Everything worth knowing that does not stop a run: the remarks, and what the memory plan cannot count."""
    return memory.plan_notes(cfg) + remarks(cfg)


def optimizer_steps(cfg: DictConfig, n_train: int) -> int:
    """How many optimizer steps training takes: train.max_steps, else the epochs over n_train examples."""
    if cfg.train.max_steps > 0:
        return int(cfg.train.max_steps)
    hw, train = cfg.hardware, cfg.train
    batch = (train.per_device_train_batch_size or hw.per_device_train_batch_size) * processes(hw)
    accumulation = train.gradient_accumulation_steps or hw.gradient_accumulation_steps
    return math.ceil(math.ceil(n_train / batch) / accumulation * train.num_train_epochs)


def data_problems(cfg: DictConfig, splits: dict) -> list[str]:
    """The rules that need the corpus read: what the settings ask of the train split. (A pose corpus's soft tokens
    need no rule here: no sequence is kept longer than pose.max_frames, which check() holds to train.max_length.)"""
    problems = []
    if (cfg.dataset.input == "gloss" and cfg.dataset.format != "hub"
            and (named := pose_files_named(cfg.dataset, splits.get("train", ())))):
        problems.append(f"dataset.input=gloss, but the {cfg.dataset.source_field!r} column names pose files ({named}): "
                        "the model would read file names as gloss text; set dataset.input=pose.")
    n_train = len(splits.get("train", ()))
    if cfg.eval.only:
        if cfg.eval.shots > n_train:
            problems.append(f"eval.shots={cfg.eval.shots} asks for more demonstrations than the train split has "
                            f"({n_train} pairs): use eval.shots <= {n_train}.")
        return problems
    steps = optimizer_steps(cfg, n_train)
    if cfg.train.warmup_steps > steps:
        problems.append(f"train.warmup_steps={cfg.train.warmup_steps} is longer than the run ({steps} optimizer steps "
                        f"for {n_train} train pairs): use train.warmup_steps <= {steps}, or train longer.")
    return problems
