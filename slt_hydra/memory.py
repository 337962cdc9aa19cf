"""Will it fit? The memory plan of one fine-tuning run, from the model's architecture numbers, before anything loads.

No torch, no transformers, no files but conf/: validate.check refuses a run whose plan does not fit, `quant=auto`
picks the highest precision that does (``resolve_auto_quant``), and ``python -m slt_hydra.plan`` prints the
breakdown (`python -m slt_hydra.plan`, slt_hydra/plan.py). ``GB`` means 2**30 bytes; docs/memory.md sets the
estimates beside measurements.

What is counted (``a`` = bytes per activation value: 2 under 16-bit compute, 4 under fp32; ``T`` = tokens in a
batch = batch size x ``train.max_length``, every sequence taken at the maximum length, the worst case):

* parameters: embeddings V*h, per layer the attention projections (GQA: k/v have kv_heads*head_dim outputs; biases
  where the model has them), the MLP (gated: 3 matrices h*I, plain: 2; MoE: every expert plus the router), the
  norms (RMSNorm h, LayerNorm 2h), the final norm and lm_head unless tied;
* weights: 16/32-bit = params x 2/4 bytes. bitsandbytes quantizes nn.Linear layers only: NF4 = 0.5 byte/param plus
  one absmax per 64-value block (fp32 = 4 bytes; with double quantization 1 byte, plus one fp32 scale per 256
  blocks), LLM.int8 = 1 byte/param plus one fp32 scale per output row. Embeddings, lm_head, norms, biases (and
  transformers 5's fused MoE expert tensors, which are not Linear layers) stay in the compute dtype;
* LoRA: r*(fan_in + fan_out) per targeted Linear (``all-linear`` = every Linear but lm_head), plus fan_out for the
  DoRA magnitude; adapters are fp32 (PEFT upcasts them). Per trainable parameter: weight 4 + gradient 4 + AdamW
  moments 8 bytes (``*8bit`` optimizers: 2 bytes of state). Full fine-tuning: gradient and moments in the weights'
  dtype, as torch's AdamW keeps them;
* activations, after Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models",
  who count sbh*(34 + 5*a_heads*s/h) bytes per layer for a 16-bit GPT with a 4h MLP, dropout and eager attention.
  Adapted to the tensors PyTorch really saves in these models (a frozen base Linear saves no input; SDPA saves
  q, k, v and its output, not the s*s scores; no dropout in the base model), per token and layer:
      norms            4h per norm (the fp32 upcast of the input)
      attention        4*a*heads*head_dim (q, and k and v repeated to all heads, and the output)
      MLP              3*a*I gated (gate, act(gate), up) or 4*a*I plain tanh-GELU; x experts_per_token for MoE
      LoRA, per target (1 + a)*fan_in + a*r (dropout mask, the adapter's input, its r-dim output);
                       (a*fan_in + a*r without dropout) + a*fan_out with DoRA
      8-bit base or    a*(h + heads*head_dim + h + I): the distinct inputs of the Linear layers (bitsandbytes'
      full fine-tuning int8 matmul keeps its input; trained weights need theirs), + a*h per norm when trained
  Without gradient checkpointing all layers keep theirs: L x that x T. With it, each layer keeps its input (a*h*T)
  and one layer at a time is recomputed: L*a*h*T + that x T;
* loss: TRL 1.16's SFTTrainer computes the log-probs with a fused, chunked LM head that never builds the T x V
  logits: a tile of min(T, 4096) x min(V, 32768) in the compute dtype (T counts every position: an upper bound, as
  only the target positions are scored: TRL does so on CUDA, run.score_target_positions_only on CPU, where the tile
  path holds about CPU_LOSS_TILES temporaries), the final hidden states (a*h*T) and their
  fp32 gradient (4h*T); full fine-tuning adds the fp32 gradient of lm_head (4*V*h). (A stack that materializes the
  logits, as older TRL did, needs about 12 bytes per logit more: T x V x 12);
* bitsandbytes dequantizes one weight matrix at a time for the matmuls: the largest one, in the compute dtype;
* runtime: 0.75 GB for the CUDA context and cuBLAS workspaces on a GPU; 1.0 GB for Python, torch and the
  libraries in RAM on CPU (docs/memory.md has the measurements).

Encoder-decoder models (T5, NLLB: ``arch.decoder_layers`` set) have two stacks: the encoder's layers as above, the
decoder's with a cross-attention block more (its q/k/v/o and a norm), and T5's relative-position table per stack.
Both stacks are taken at batch x max_length tokens. Their loss is not fused: the logits are materialized, T x V in
the compute dtype plus about 12 bytes per logit (fp32 log-softmax, its gradient and the logits' gradient); in
evaluation T x V x (a + 4). Translation keeps the decoder's self- and cross-attention caches. T5's attention is
eager (its relative position bias): the scores are not counted, as above.

The peak is the largest of the training step, the dev-loss evaluation (eval batch, no gradients, optimizer state
kept) and translation (eval batch, KV cache for max_length + max_new_tokens). Eager attention (e.g. a model that
needs soft-capping) adds (4 + a)*heads*max_length bytes per token and layer, which is not counted.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from slt_hydra.config import load_option, translation_batch_size, weights_kind
from slt_hydra.distributed import processes
from slt_hydra.machine import Machine
from slt_hydra.models import FAMILY_MODULE_NAMES, model_target_modules
from slt_hydra.pose import planned_feature_dim
from slt_hydra.pose_model import soft_tokens

log = logging.getLogger("slt_hydra")

GB = 2**30
HEADROOM = 0.10  # keep 10% free: allocator fragmentation, spikes the model does not capture
CUDA_OVERHEAD = 0.75 * GB  # CUDA context + cuBLAS workspaces (not in torch's allocated bytes, still on the GPU)
CPU_OVERHEAD = 1.0 * GB  # Python, torch, transformers, TRL, datasets, MLflow in RAM
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 values
DQ_BLOCK = 256  # double quantization: the 8-bit absmax are scaled in blocks of 256 (one fp32 each)
LOSS_TOKEN_TILE, LOSS_VOCAB_TILE = 4096, 32768  # TRL's chunked log-prob kernel: tokens x vocabulary per tile
CPU_LOSS_TILES = 8  # on CPU its backward holds about 8 tile-sized fp32 temporaries (docs/memory.md)
QUANT_LABEL = {"4bit": "NF4 4-bit", "8bit": "LLM.int8 8-bit"}
# Bytes per weight without arch numbers (coarse): NF4 + double-quantized block scales, int8 + scales, 16/32-bit.
COARSE_WEIGHT_BYTES = {"4bit": 0.56, "8bit": 1.06, "float16": 2.0, "bfloat16": 2.0, "float32": 4.0}

# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int = 0
    experts_per_token: int = 0
    mlp: str = "gated"
    attention_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    norm: str = "rmsnorm"
    norms_per_layer: int = 2
    fused_qkv: bool = False
    fused_gate_up: bool = False
    family: str = "llama"
    decoder_layers: int = 0  # encoder-decoder: the decoder's layers (``layers`` = the encoder's); 0 = decoder-only
    relative_buckets: int = 0  # T5: relative-position buckets (one buckets x heads table per stack)

    @classmethod
    def from_cfg(cls, model_cfg: Any) -> "Arch | None":
        arch = model_cfg.get("arch") if hasattr(model_cfg, "get") else getattr(model_cfg, "arch", None)
        if not arch:
            return None
        heads = int(arch.num_attention_heads)
        return cls(
            layers=int(arch.num_layers), hidden=int(arch.hidden_size), intermediate=int(arch.intermediate_size),
            heads=heads, kv_heads=int(arch.get("num_key_value_heads") or heads),
            head_dim=int(arch.get("head_dim") or arch.hidden_size // heads), vocab=int(arch.vocab_size),
            tied=bool(arch.get("tie_word_embeddings", False)), experts=int(arch.get("num_experts") or 0),
            experts_per_token=int(arch.get("experts_per_token") or 0), mlp=str(arch.get("mlp", "gated")),
            attention_bias=bool(arch.get("attention_bias", False)), o_bias=bool(arch.get("o_bias", False)),
            mlp_bias=bool(arch.get("mlp_bias", False)), lm_head_bias=bool(arch.get("lm_head_bias", False)),
            norm=str(arch.get("norm", "rmsnorm")), norms_per_layer=int(arch.get("norms_per_layer", 2)),
            fused_qkv=bool(arch.get("fused_qkv", False)), fused_gate_up=bool(arch.get("fused_gate_up", False)),
            family=str(model_cfg.get("family", "llama")),
            decoder_layers=int(arch.get("decoder_layers") or 0),
            relative_buckets=int(arch.get("relative_attention_buckets") or 0),
        )


@dataclass(frozen=True)
class Linear:
    """One weight matrix of a decoder layer (``count`` > 1: one per MoE expert)."""

    name: str  # the name PEFT's target_modules matches
    fan_in: int
    fan_out: int
    bias: bool = False
    count: int = 1
    is_linear: bool = True  # an nn.Linear: bitsandbytes quantizes it, LoRA can target it

    @property
    def params(self) -> int:
        return self.count * (self.fan_in * self.fan_out + (self.fan_out if self.bias else 0))


def layer_linears(arch: Arch) -> list[Linear]:
    """The weight matrices of one decoder layer, with the names PEFT sees."""
    names = FAMILY_MODULE_NAMES.get(arch.family, {})
    h, q_out, kv_out, inter = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.intermediate
    if arch.fused_qkv:
        mats = [Linear("qkv_proj", h, q_out + 2 * kv_out, arch.attention_bias)]
    else:
        mats = [Linear(names.get("q", "q_proj"), h, q_out, arch.attention_bias),
                Linear(names.get("k", "k_proj"), h, kv_out, arch.attention_bias),
                Linear(names.get("v", "v_proj"), h, kv_out, arch.attention_bias)]
    mats.append(Linear(names.get("o", "o_proj"), q_out, h, arch.o_bias))
    if arch.experts:  # transformers 5: a router weight and every expert fused into 3-D tensors, none of them a
        # Linear: bitsandbytes leaves them in the compute dtype (checked on a tiny Mixtral) and LoRA cannot name them
        mats += [Linear("gate", h, arch.experts, is_linear=False),
                 Linear("experts.gate_up_proj", h, 2 * inter, count=arch.experts, is_linear=False),
                 Linear("experts.down_proj", inter, h, count=arch.experts, is_linear=False)]
    elif arch.mlp == "plain":
        mats += [Linear(names.get("up", "fc1"), h, inter, arch.mlp_bias),
                 Linear(names.get("down", "fc2"), inter, h, arch.mlp_bias)]
    elif arch.fused_gate_up:
        mats += [Linear("gate_up_proj", h, 2 * inter, arch.mlp_bias), Linear("down_proj", inter, h, arch.mlp_bias)]
    else:
        mats += [Linear("gate_proj", h, inter, arch.mlp_bias), Linear("up_proj", h, inter, arch.mlp_bias),
                 Linear("down_proj", inter, h, arch.mlp_bias)]
    return mats


@dataclass(frozen=True)
class Stack:
    """Identical layers: a decoder-only model's, or an encoder-decoder's encoder and decoder."""

    layers: int
    mats: list[Linear]  # the weight matrices of one layer
    norms: int  # norms per layer
    attention_blocks: int = 1  # 2 in a decoder with cross-attention


def stacks(arch: Arch) -> list[Stack]:
    """The decoder only, or the encoder and the decoder, whose layers add cross-attention (q/k/v/o and a norm)."""
    mats = layer_linears(arch)
    if not arch.decoder_layers:
        return [Stack(arch.layers, mats, arch.norms_per_layer)]
    return [Stack(arch.layers, mats, arch.norms_per_layer),
            Stack(arch.decoder_layers, mats[:4] + mats, arch.norms_per_layer + 1, attention_blocks=2)]


@dataclass(frozen=True)
class ParamCount:
    embedding: int
    lm_head: int  # 0 when tied to the embedding
    linear: int  # all decoder-layer weight matrices, biases included
    norms: int
    total: int


def count_params(arch: Arch) -> ParamCount:
    parts = stacks(arch)
    embedding = arch.vocab * arch.hidden + len(parts) * arch.relative_buckets * arch.heads
    lm_head = 0 if arch.tied else arch.vocab * arch.hidden + (arch.vocab if arch.lm_head_bias else 0)
    linear = sum(stack.layers * sum(m.params for m in stack.mats) for stack in parts)
    per_norm = arch.hidden * (2 if arch.norm == "layernorm" else 1)
    norms = sum(stack.layers * stack.norms + 1 for stack in parts) * per_norm  # + each stack's final norm
    return ParamCount(embedding, lm_head, linear, norms, embedding + lm_head + linear + norms)


def lora_targets(arch: Arch, target_modules: Any, mats: list[Linear] | None = None) -> tuple[list[Linear], list[str]]:
    """The layer matrices the adapter attaches to (in one layer: ``mats``, default the first stack's), and the
    target names that match nothing."""
    mats = layer_linears(arch) if mats is None else mats
    if isinstance(target_modules, str) and target_modules == "all-linear":
        return [m for m in mats if m.is_linear], []
    target_modules = model_target_modules(arch.family, target_modules)
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    matched = [m for m in mats if m.is_linear and m.name.split(".")[-1] in names]
    found = {m.name.split(".")[-1] for m in matched}
    return matched, [n for n in names if n not in found]


def pose_encoder_param_count(pose_cfg: Any, feature_dim: int, out_dim: int) -> int:
    """Parameters of slt_hydra/pose_model.py's encoder (frame embedding + LayerNorm, strided convolution, learned
    positions, transformer layers with 4x feed-forward, two-layer projector), without building it."""
    h, ds = int(pose_cfg.hidden), int(pose_cfg.downsample)
    frame = feature_dim * h + h + 2 * h
    merge = h * h * ds + h
    positions = soft_tokens(int(pose_cfg.max_frames), ds) * h
    layer = 4 * h * h + 4 * h + 2 * (4 * h * h) + 4 * h + h + 4 * h  # attention, feed-forward, two LayerNorms
    project = h * out_dim + out_dim + out_dim * out_dim + out_dim
    return frame + merge + positions + int(pose_cfg.layers) * layer + project


def lora_param_count(arch: Arch, lora_cfg: Any) -> int:
    r, total = int(lora_cfg.r), 0
    for stack in stacks(arch):
        mats, _ = lora_targets(arch, plain(lora_cfg.target_modules), stack.mats)
        total += stack.layers * sum(m.count * (r * (m.fan_in + m.fan_out) + (m.fan_out if lora_cfg.get("use_dora")
                                                                             else 0)) for m in mats)
    return total


def plain(value: Any) -> Any:
    """An OmegaConf list or dict as plain Python (PEFT and comparisons want lists, not ListConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, (ListConfig, DictConfig)) else value


# --------------------------------------------------------------------------- the plan


@dataclass
class Row:
    what: str
    bytes: float
    how: str = ""


@dataclass
class Plan:
    model: str
    weights: str  # weights_kind
    device: str
    params: int | None  # computed from arch (None: coarse, from params_b)
    rows: list[Row]  # the static part: weights, adapter, optimizer, runtime
    peaks: dict[str, tuple[float, list[Row]]]  # phase -> (bytes, the rows added to the static part)
    have_gb: float | None  # the memory budget
    warnings: list[str] = field(default_factory=list)
    lora_params: int = 0
    unmatched_targets: list[str] = field(default_factory=list)
    floor: float | None = None  # bytes held before the first token: resident part + gradients (+ dequant buffer)

    @property
    def total(self) -> float:
        return max(value for value, _ in self.peaks.values())

    @property
    def total_gb(self) -> float:
        return self.total / GB

    @property
    def peak_phase(self) -> str:
        return max(self.peaks, key=lambda phase: self.peaks[phase][0])

    @property
    def floor_gb(self) -> float:
        """What the run holds whatever the sequence length: it cannot fit if this does not."""
        return (self.total if self.floor is None else self.floor) / GB

    @property
    def usable_gb(self) -> float | None:
        return None if not self.have_gb else self.have_gb * (1 - HEADROOM)

    @property
    def fits(self) -> bool | None:
        return None if self.usable_gb is None else self.total_gb <= self.usable_gb


def batch_sizes(cfg: DictConfig) -> tuple[int, int, int, int]:
    hw, train = cfg.hardware, cfg.train
    train_batch = int(train.get("per_device_train_batch_size") or hw.per_device_train_batch_size)
    accumulation = int(train.get("gradient_accumulation_steps") or hw.gradient_accumulation_steps)
    eval_batch = int(hw.per_device_eval_batch_size)
    gen_batch = translation_batch_size(cfg) if "generate" in cfg else int(hw.get("generate_batch_size") or eval_batch)
    return train_batch, accumulation, eval_batch, gen_batch


def plan_notes(cfg: DictConfig) -> list[str]:
    """What the plan cannot count as the user may expect: LoRA target names that match no layer (the adapter is
    smaller than asked), MoE experts that bitsandbytes leaves unquantized. validate.warnings logs them too."""
    out = []
    model = cfg.model
    arch = Arch.from_cfg(model)
    if arch is not None and cfg.lora.enabled:
        mats, missing = lora_targets(arch, plain(cfg.lora.target_modules))
        if missing:
            names = sorted({m.name.split(".")[-1] for m in layer_linears(arch) if m.is_linear})
            recommended = model.get("recommended")
            hint = (f" (this model's recommendation: lora.target_modules=[{','.join(recommended.target_modules)}])"
                    if recommended and not isinstance(recommended.target_modules, str) else "")
            what = "match no layer" if not mats else "match no layer (the adapter only gets the others)"
            out.append(f"lora.target_modules {missing} {what} of model={model.name}: its Linear layers are "
                       f"{names}{hint}.")
        if arch.experts and (cfg.quant.load_in_4bit or cfg.quant.load_in_8bit):
            out.append(f"model={model.name}: transformers stores the MoE experts as fused 3-D tensors, which "
                       "bitsandbytes does not quantize: they stay in the compute dtype (counted so here).")
    return out


STRATEGY_LABEL = {"ddp": "a full copy per process", "zero2": "optimizer state and gradients sharded",
                  "fsdp": "weights, gradients and optimizer state sharded", "zero3": "weights, gradients and "
                  "optimizer state sharded"}


def data_parallel(hardware: Any) -> tuple[int, str]:
    """(processes in all, strategy) of a hardware profile: hardware.num_processes x num_nodes, ddp/fsdp/zero2/zero3."""
    return processes(hardware), str(hardware.get("strategy", "ddp"))


def budget_gb(cfg: DictConfig, machine: Machine | None = None) -> float | None:
    """Memory for one process: hardware.memory_gb (per GPU on CUDA), else this machine's GPU or RAM. On CPU the
    processes of one node share the RAM, so each gets its share."""
    hw = cfg.hardware
    have = hw.memory_gb or (machine.memory_gb(hw.device) if machine is not None else None)
    if have and hw.device == "cpu":
        have /= max(1, int(hw.get("num_processes", 1) or 1))
    return have


def _data_parallel_rows(rows: list[Row], pc: ParamCount, layers: int, kind: str, a: int, grads: float,
                        world: int, strategy: str) -> list[Row]:
    """Per process, in several: divide what the strategy shards (in place), and return the rows it adds.

    DDP keeps everything and an all-reduce bucket copy of the gradients; ZeRO-2 shards the optimizer state (the
    gradients at the call site); FSDP and ZeRO-3 shard the weights and the adapter too, and gather them unit by
    unit for compute: the root unit (embeddings, lm_head: FSDP does not reshard it) and two decoder layers (the
    one computing, the one prefetched), at the bytes the weights are held in."""
    if world <= 1:
        return []
    if strategy == "ddp":
        return [Row("DDP gradient buckets", grads, "all-reduce copy of the gradients")] if grads else []
    sharded_parts = ("optimizer",) if strategy == "zero2" else ("weights", "LoRA", "optimizer")
    weight_bytes = sum(row.bytes for row in rows if row.what.startswith("weights"))
    for row in rows:
        if row.what.startswith(sharded_parts):
            row.bytes /= world
            row.how += f"; 1/{world} per process ({strategy})"
    if strategy == "zero2":
        return []
    root = (pc.embedding + pc.lm_head) * (a if kind in ("4bit", "8bit") else DTYPE_BYTES.get(kind, a))
    layer = max(0.0, weight_bytes - root) / max(1, layers)
    return [Row("gathered for compute (transient)", root + 2 * layer,
                "unsharded at a time: embeddings/lm_head + 2 decoder layers")]


def plan_memory(cfg: DictConfig, machine: Machine | None = None) -> Plan:
    """The memory plan for ``cfg`` (model.arch required for the detailed plan; else a coarse one from params_b)."""
    hw, lora = cfg.hardware, cfg.lora
    kind = weights_kind(cfg)
    compute = hw.dtype if hw.dtype in DTYPE_BYTES else "float32"
    a = DTYPE_BYTES[compute]  # activation and non-quantized weight bytes under bitsandbytes
    training = not cfg.eval.get("only", False)
    train_batch, _, eval_batch, gen_batch = batch_sizes(cfg)
    seq = int(cfg.train.max_length)
    new_tokens = int(cfg.generate.max_new_tokens) if "generate" in cfg else 64
    have = budget_gb(cfg, machine)
    overhead = Row("runtime", CUDA_OVERHEAD if hw.device == "cuda" else CPU_OVERHEAD,
                   "CUDA context + cuBLAS workspace" if hw.device == "cuda" else "Python, torch and libraries in RAM")
    arch = Arch.from_cfg(cfg.model)
    if arch is None:
        return _coarse_plan(cfg, kind, overhead, have)

    pc = count_params(arch)
    parts = stacks(arch)
    rows: list[Row] = []
    # Weights.
    if kind in ("4bit", "8bit"):
        quantized = [(stack.layers, [m for m in stack.mats if m.is_linear]) for stack in parts]
        q_params = sum(n * sum(m.count * m.fan_in * m.fan_out for m in mats) for n, mats in quantized)
        if kind == "4bit":
            blocks = sum(n * sum(m.count * math.ceil(m.fan_in * m.fan_out / NF4_BLOCK) for m in mats)
                         for n, mats in quantized)
            if cfg.quant.get("bnb_4bit_use_double_quant", True):
                scales = blocks * 1 + math.ceil(blocks / DQ_BLOCK) * 4
                how = "0.5 B/param + 8-bit absmax per 64 + fp32 per 256 blocks"
            else:
                scales = blocks * 4
                how = "0.5 B/param + fp32 absmax per 64"
            q_bytes = q_params / 2 + scales
        else:
            q_bytes = q_params + sum(n * sum(m.count * m.fan_out * 4 for m in mats) for n, mats in quantized)
            how = "1 B/param + fp32 scale per row"
        rows.append(Row(f"weights: quantized Linear layers ({q_params / 1e9:.2f}B)", q_bytes,
                        f"{QUANT_LABEL[kind]}: {how} = {q_bytes / q_params:.3f} B/param"))
        rest = pc.total - q_params
        rows.append(Row(f"weights: embeddings, lm_head, norms, biases ({rest / 1e9:.2f}B)", rest * a,
                        f"{compute} (bitsandbytes quantizes Linear layers only)"))
        largest = max(m.fan_in * m.fan_out for _, mats in quantized for m in mats)
        dequant = Row("dequantized matrix (transient)", largest * a, f"largest Linear in {compute}")
    else:
        wb = DTYPE_BYTES[kind]
        rows.append(Row(f"weights ({pc.total / 1e9:.2f}B)", pc.total * wb, f"{kind}: {wb} B/param"))
        dequant = None

    # Adapter / trainable state.
    unmatched: list[str] = []
    lora_n = 0
    grads = optim = 0.0
    eight_bit_optim = "8bit" in str(hw.optim)
    if lora.enabled:
        mats, unmatched = lora_targets(arch, plain(lora.target_modules))
        lora_n = lora_param_count(arch, lora)
        targets = ",".join(sorted({m.name.split(".")[-1] for m in mats})) or "nothing"
        rows.append(Row(f"LoRA adapter ({lora_n / 1e6:.1f}M params)", lora_n * 4,
                        f"r={lora.r} on {targets}; fp32"))
        if training:
            grads, optim = lora_n * 4.0, lora_n * (2.0 if eight_bit_optim else 8.0)
            grad_how, optim_how = "fp32", ("8-bit AdamW: 2 B/param" if eight_bit_optim else "AdamW fp32: 8 B/param")
    elif training:
        wb = DTYPE_BYTES.get(kind, 2)
        grads, optim = pc.total * wb, pc.total * (2.0 if eight_bit_optim else 2.0 * wb)
        grad_how = f"full fine-tuning: {kind}"
        optim_how = "8-bit AdamW: 2 B/param" if eight_bit_optim else f"AdamW moments in {kind}: {2 * wb} B/param"
    if cfg.dataset.get("input", "gloss") == "pose":  # the pose encoder: fp32, trained fully (modules_to_save)
        enc_n = pose_encoder_param_count(cfg.pose, planned_feature_dim(cfg.pose), arch.hidden)
        rows.append(Row(f"pose encoder ({enc_n / 1e6:.1f}M params)", enc_n * 4,
                        f"hidden {cfg.pose.hidden}, {cfg.pose.layers} layers, projector to {arch.hidden}; fp32"))
        if training:
            grads, optim = grads + enc_n * 4.0, optim + enc_n * 8.0
            optim_how += " (+ the pose encoder's, AdamW fp32: 8 B/param)"
    if training:
        rows.append(Row("optimizer state", optim, optim_how))
    world, strategy = data_parallel(hw)
    if world > 1 and training and strategy != "ddp":  # ZeRO-2, FSDP and ZeRO-3 split the gradients
        grads, grad_how = grads / world, f"{grad_how}, 1/{world} per process ({strategy})"
    rows += _data_parallel_rows(rows, pc, sum(stack.layers for stack in parts), kind, a, grads if training else 0.0,
                                world, strategy)
    rows.append(overhead)
    static = sum(r.bytes for r in rows)

    # Activations per token and layer (see the module docstring).
    per_stack = [(stack.layers, _layer_activation_bytes(arch, cfg, a, kind, training, stack)) for stack in parts]
    layers = sum(n for n, _ in per_stack)
    per_token_layer = sum(n * b for n, b in per_stack) / layers  # the mean over layers (encoder and decoder differ)
    forward_only = _forward_transient_bytes(arch, a)
    if arch.decoder_layers:  # encoder-decoder: no fused loss, the logits are materialized (module docstring)
        loss_name, loss_how = "loss (logits)", f"final hidden states + fp32 gradient + {a + 12} B per logit"
        loss_tile = lambda tokens: tokens * arch.vocab * (a + 12)  # noqa: E731
        eval_logits = lambda tokens: tokens * arch.vocab * (a + 4)  # noqa: E731
    else:
        loss_name, loss_how = "loss (fused LM head)", "final hidden states + fp32 gradient + one logits tile"
        tiles = CPU_LOSS_TILES if hw.device == "cpu" else 1
        loss_how = loss_how.replace("one logits tile", f"{tiles} logits tiles") if tiles > 1 else loss_how
        eval_logits = lambda tokens: min(tokens, LOSS_TOKEN_TILE) * min(arch.vocab, LOSS_VOCAB_TILE) * a  # noqa: E731
        loss_tile = lambda tokens: tiles * eval_logits(tokens)  # noqa: E731
    peaks: dict[str, tuple[float, list[Row]]] = {}
    if training:
        tokens = train_batch * seq
        if hw.gradient_checkpointing:
            act = (layers * a * arch.hidden + max(b for _, b in per_stack)) * tokens
            act_how = (f"checkpointing: {layers} layer inputs + 1 layer recomputed "
                       f"({per_token_layer / 1e3:.0f} kB/token)")
        else:
            act = layers * per_token_layer * tokens
            act_how = f"{layers} layers x {per_token_layer / 1e3:.0f} kB/token"
        act += 4 * arch.hidden * tokens * len(parts)  # the final norm(s)
        full_head = 0 if lora.enabled else 4 * arch.vocab * arch.hidden
        loss = (a + 4) * arch.hidden * tokens + loss_tile(tokens) + full_head
        added = [Row("gradients", grads, grad_how),
                 Row(f"activations (batch {train_batch} x {seq} tokens)", act, act_how),
                 Row(loss_name, loss, loss_how)]
        if dequant:
            added.append(dequant)
        peaks["training step"] = (static + sum(r.bytes for r in added), added)

    eval_tokens = eval_batch * seq
    added = [Row(f"forward, one layer at a time (eval batch {eval_batch} x {seq})", forward_only * eval_tokens,
                 f"{forward_only / 1e3:.0f} kB/token, no gradients"),
             Row(loss_name, a * arch.hidden * eval_tokens + eval_logits(eval_tokens), "")]
    if dequant:
        added.append(dequant)
    peaks["evaluation (dev loss)"] = (static + sum(r.bytes for r in added), added)

    # The (decoder's) KV cache; an encoder-decoder's holds its cross-attention keys/values for the source too.
    kv = 2 * parts[-1].layers * arch.kv_heads * arch.head_dim * a * gen_batch * (seq + new_tokens)
    added = [Row(f"KV cache (batch {gen_batch} x {seq + new_tokens})", kv, compute),
             Row("prefill, one layer at a time", forward_only * gen_batch * seq, "")]
    if dequant:
        added.append(dequant)
    peaks["translation"] = (static + sum(r.bytes for r in added), added)

    floor = static + grads + (dequant.bytes if dequant else 0.0)
    return Plan(cfg.model.name, kind, hw.device, pc.total, rows, peaks, have, plan_notes(cfg), lora_n, unmatched, floor)


def _layer_activation_bytes(arch: Arch, cfg: DictConfig, a: int, kind: str, training: bool = True,
                            stack: Stack | None = None) -> float:
    """Bytes saved for backward per token in one layer of ``stack`` (default: the decoder-only model's layer)."""
    stack = stack or stacks(arch)[0]
    h, inter, attn, blocks = arch.hidden, arch.intermediate, arch.heads * arch.head_dim, stack.attention_blocks
    experts = max(1, arch.experts_per_token or 1)
    total = stack.norms * 4 * h + blocks * 4 * a * attn + (4 if arch.mlp == "plain" else 3) * a * inter * experts
    parallel = stack.norms == 1  # Phi-2: attention and MLP read the same normed input
    linear_inputs = a * (blocks * (h + attn) + (0 if parallel else h) + inter * experts)
    lora = cfg.lora
    if lora.enabled:
        mats, _ = lora_targets(arch, plain(lora.target_modules), stack.mats)
        # dropout keeps its mask for backward: 1 byte on CUDA, but on CPU a tensor of the input's dtype (docs/memory.md)
        mask = (a if cfg.hardware.device == "cpu" else 1) if float(lora.get("dropout", 0.0)) > 0 else 0
        for m in mats:
            dora = a * m.fan_out if lora.get("use_dora") else 0
            total += m.count * ((mask + a) * m.fan_in + a * int(lora.r) + dora)
        if kind == "8bit":
            total += linear_inputs
    else:
        total += linear_inputs + a * h * stack.norms
    return float(total)


def _forward_transient_bytes(arch: Arch, a: int) -> float:
    """Per token, what one layer holds at once in a forward without gradients (evaluation, prefill)."""
    experts = max(1, arch.experts_per_token or 1)
    return float(max(3 * a * arch.intermediate * experts, 4 * a * arch.heads * arch.head_dim) + 2 * a * arch.hidden)


def _coarse_plan(cfg: DictConfig, kind: str, overhead: Row, have: float | None) -> Plan:
    """No arch numbers (model=local): the parameter count only. LoRA adapters are taken as ~1% of the weights per
    16 of rank; full fine-tuning keeps fp32 master weights, gradients and two Adam moments (16 bytes/param).
    Activations for short gloss sentences are covered by a 20% margin, the runtime by 1 GB."""
    if cfg.model.params_b is None:  # nothing to plan from: no verdict
        return Plan(cfg.model.name, kind, cfg.hardware.device, None, [], {"unknown": (0.0, [])}, None,
                    plan_notes(cfg) + [f"model={cfg.model.name}: size unknown (no arch, params_b null): set "
                                  "model.params_b=N for an estimate."])
    params = float(cfg.model.params_b) * 1e9
    coarse = COARSE_WEIGHT_BYTES
    weights = params * coarse[kind]
    if cfg.eval.get("only", False):
        trainable = 0.0
    elif cfg.lora.enabled:
        targets = plain(cfg.lora.target_modules)
        spread = 2.5 if targets == "all-linear" else len(targets) / 4
        trainable = params * 0.01 * (cfg.lora.r / 16) * spread
    else:
        trainable = params
    state = trainable * (10.0 if "8bit" in str(cfg.hardware.optim) else 16.0)
    rows = [Row(f"weights ({params / 1e9:.2f}B, coarse)", weights, f"{coarse[kind]} B/param"),
            Row("trainable state (coarse)", state, "~1% of params per r16 x 16 B"),
            Row("margin for activations", 0.2 * (weights + state), "20%"),
            Row("runtime", 1.0 * GB, "")]
    total = sum(r.bytes for r in rows)
    return Plan(cfg.model.name, kind, cfg.hardware.device, None, rows, {"coarse estimate": (total, [])}, have,
                plan_notes(cfg) + [f"model={cfg.model.name} has no arch numbers: coarse estimate from params_b."])


def estimate_memory_gb(cfg: DictConfig) -> float | None:
    """The plan's peak in GB (the detailed plan with arch numbers, else the coarse one); None when the model's size
    is unknown (no arch numbers and no params_b)."""
    plan = plan_memory(cfg)
    return None if "unknown" in plan.peaks else plan.total_gb


# --------------------------------------------------------------------------- what to change


def _with(cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for key, value in overrides.items():
            if key == "quant":
                new.quant = _quant_profile(new.quant, value)
            else:
                OmegaConf.update(new, key, value, merge=False)
    return new


def _quant_profile(current: DictConfig, name: str) -> DictConfig:
    return OmegaConf.merge(current, load_option("quant", name))


def _sixteen_bit(cfg: DictConfig) -> str:
    return "bf16" if cfg.hardware.dtype == "bfloat16" else "fp16" if cfg.hardware.dtype == "float16" else "none"


def _precisions(cfg: DictConfig, machine: Machine | None) -> list[str]:
    """quant options from the highest precision to the lowest, for this hardware."""
    if cfg.hardware.device == "cuda":
        return [_sixteen_bit(cfg), "8bit", "4bit"]
    options = ["none"]  # fp32 on CPU
    if machine is not None and machine.cpu_bf16:
        options.append("bf16")
    return options + ["8bit", "4bit"]


_RANK = {"float32": 4, "bfloat16": 3, "float16": 3, "8bit": 2, "4bit": 1}


def suggestions(cfg: DictConfig, plan: Plan, machine: Machine | None = None) -> list[tuple[str, float, bool]]:
    """What to change, in the guides' order, each with the planner's new total: (overrides, GB, fits).

    Precision first (the guides' tree: a budget of 40 GB+ takes 16-bit, 24 GB+ 8-bit, else 4-bit), then
    gradient checkpointing, a smaller batch with more accumulation (same effective batch), a smaller evaluation
    batch, a smaller LoRA rank, shorter sequences. Each step is shown alone, then all of them together, stopping
    at the first combination that fits (with the lowest precision as a last resort).
    """
    if plan.usable_gb is None or plan.params is None:
        return []
    have = plan.have_gb or 0.0
    current = _RANK.get(weights_kind(cfg), 3)
    lower = [(option, _RANK.get(weights_kind(_with(cfg, {"quant": option})), 3))
             for option in _precisions(cfg, machine)]
    lower = [(option, rank) for option, rank in lower if rank < current]
    tier = 3 if have >= 40 else 2 if have >= 24 else 1
    steps: list[dict[str, Any]] = []
    world, strategy = data_parallel(cfg.hardware)
    if world > 1 and cfg.hardware.device == "cuda" and strategy in ("ddp", "zero2") and not cfg.quant.load_in_8bit:
        steps.append({"hardware.strategy": "fsdp"})  # several GPUs: shard the weights before lowering precision
    if lower:
        steps.append({"quant": next((option for option, rank in lower if rank <= tier), lower[-1][0])})
    hw, train = cfg.hardware, cfg.train
    training = not cfg.eval.get("only", False)
    if training and not hw.gradient_checkpointing:
        steps.append({"hardware.gradient_checkpointing": True})
    train_batch, accumulation, eval_batch, gen_batch = batch_sizes(cfg)
    if training and train_batch > 1:
        smaller = max(1, train_batch // 4)
        batch_key = "train" if train.get("per_device_train_batch_size") else "hardware"
        accumulation_key = "train" if train.get("gradient_accumulation_steps") else "hardware"
        steps.append({f"{batch_key}.per_device_train_batch_size": smaller,
                      f"{accumulation_key}.gradient_accumulation_steps": accumulation * train_batch // smaller})
    if eval_batch > 4 or gen_batch > 4:
        smaller_eval = {"hardware.per_device_eval_batch_size": max(1, eval_batch // 4)}
        if "generate" in cfg and cfg.generate.get("batch_size"):
            smaller_eval["generate.batch_size"] = max(1, gen_batch // 4)
        elif hw.get("generate_batch_size"):
            smaller_eval["hardware.generate_batch_size"] = max(1, gen_batch // 4)
        steps.append(smaller_eval)
    if training and cfg.lora.enabled and cfg.lora.r > 8:
        steps.append({"lora.r": max(8, cfg.lora.r // 2), "lora.alpha": max(16, cfg.lora.alpha // 2)})
    if train.max_length > 128:
        steps.append({"train.max_length": 128})

    out: list[tuple[str, float, bool]] = []
    combined: dict[str, Any] = {}
    together = plan
    for step in steps:
        alone = plan_memory(_with(cfg, step), machine)
        out.append((_render(step, hw.name), alone.total_gb, bool(alone.fits)))
        combined.update(step)
        together = plan_memory(_with(cfg, combined), machine)
        if together.fits:
            break
    if not together.fits and lower and combined.get("quant") != lower[-1][0]:
        combined["quant"] = lower[-1][0]
        together = plan_memory(_with(cfg, combined), machine)
    if len(combined) > 1:
        out.append((_render(combined, hw.name), together.total_gb, bool(together.fits)))
    return out


def _render(overrides: dict[str, Any], hardware: str | None = None) -> str:
    """Overrides as typed on the command line. hardware.* keys come after hardware=NAME: with hardware=auto the
    resolved profile would replace them."""
    parts = [f"hardware={hardware}"] if hardware and any(k.startswith("hardware.") for k in overrides) else []
    for key, value in overrides.items():
        parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return " ".join(parts)


# --------------------------------------------------------------------------- quant=auto


def resolve_auto_quant(cfg: DictConfig, machine: Machine | None) -> str | None:
    """Replace quant=auto by the highest precision whose plan fits (else 4bit). Returns the choice, or None
    when quant is not auto. Needs hardware resolved first (``config.resolve_hardware``)."""
    if cfg.quant.name != "auto":
        return None
    options = _precisions(cfg, machine)
    chosen, why = options[-1], "nothing fits: the lowest precision; validation says what else to change"
    for option in options:
        plan = plan_memory(_with(cfg, {"quant": option}), machine)
        if plan.fits is None or plan.fits:
            chosen, why = option, "the highest precision whose memory plan fits"
            break
    cfg.quant = _quant_profile(cfg.quant, chosen)
    log.info("quant=auto -> quant=%s (%s)", chosen, why)
    return chosen
