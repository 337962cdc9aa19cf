"""Typed schema of every config group.

The YAML files under ``conf/`` extend these dataclasses (each group's YAML names its
schema in its defaults list), so a misspelt key or a wrong type fails at composition
with Hydra's own message. Rules that involve more than one group live in
``validate.py``, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ArchConfig:
    """Architecture numbers from the model's config.json: the planner (``slt_hydra/plan.py``) counts
    parameters, LoRA sizes and activations from them, with no download."""

    num_layers: int = MISSING  # num_hidden_layers
    hidden_size: int = MISSING
    intermediate_size: int = MISSING  # MLP width (per expert for MoE)
    num_attention_heads: int = MISSING
    num_key_value_heads: Optional[int] = None  # null = num_attention_heads (no GQA)
    head_dim: Optional[int] = None  # null = hidden_size / num_attention_heads (Gemma: 256)
    vocab_size: int = MISSING
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    max_position_embeddings: Optional[int] = None
    num_experts: Optional[int] = None  # MoE: experts per layer (Mixtral: 8); null = dense MLP
    experts_per_token: Optional[int] = None  # MoE: experts each token is routed to (Mixtral: 2)
    mlp: str = "gated"  # gated: gate/up/down, 3 matrices (SwiGLU/GeGLU) | plain: fc1/fc2, 2 matrices (Phi-2)
    attention_bias: bool = False  # biases on the q/k/v projections (Qwen2, Phi-2)
    o_bias: bool = False  # bias on the attention output projection (Phi-2's dense)
    mlp_bias: bool = False  # biases on the MLP matrices (Phi-2's fc1/fc2)
    lm_head_bias: bool = False  # bias on the output head (Phi-2)
    norm: str = "rmsnorm"  # rmsnorm (a weight) | layernorm (weight + bias, Phi-2)
    norms_per_layer: int = 2  # Gemma-2: 4 (pre/post attention and MLP); Phi-2: 1 (parallel attention + MLP)
    fused_qkv: bool = False  # one qkv_proj Linear instead of q/k/v_proj (Phi-3)
    fused_gate_up: bool = False  # one gate_up_proj Linear instead of gate/up_proj (Phi-3)
    decoder_layers: Optional[int] = None  # encoder-decoder (T5, NLLB): decoder layers; num_layers = encoder layers
    relative_attention_buckets: Optional[int] = None  # T5: relative position buckets (a buckets x heads table/stack)


@dataclass
class RecommendedConfig:
    """The guides' LoRA settings for a model of this size, as data (apply with lora.r=... etc.)."""

    lora_r: int = 16
    lora_alpha: int = 32
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # or "all-linear"
    learning_rate: float = 2e-4


@dataclass
class ModelConfig:
    name: str = MISSING  # config name, used in tags and run names
    hub_id: Optional[str] = None  # Hugging Face Hub id; loaded from the local cache only when offline
    path: Optional[str] = None  # a local directory with config + weights; wins over hub_id
    gguf: Optional[str] = None  # "module:file.gguf" shipped in a Python package (the embedded default)
    family: str = "llama"  # architecture family: tags, and later the LoRA target names
    params_b: Optional[float] = None  # parameter count in billions (memory check, tags); null = unknown
    gated: bool = False  # the Hub asks for an accepted licence and an HF_TOKEN
    chat_template: bool = True  # the tokenizer ships a chat template (else a plain prompt is used)
    revision: Optional[str] = None  # Hub revision (commit, tag or branch)
    trust_remote_code: bool = False
    template_family: Optional[str] = None  # chat format: chatml | llama3 | llama2 | mistral | gemma | phi3 | none
    reasoning: bool = False  # a reasoning model (long thinking before answering): warned about, not refused
    arch: Optional[ArchConfig] = None  # config.json numbers for the memory planner; null = coarse estimate
    architecture: str = "causal_lm"  # causal_lm (SFTTrainer, chat prompts) | seq2seq (T5, NLLB: Seq2SeqTrainer)
    source_prefix: Optional[str] = None  # seq2seq: text put before each source ({source_lang}, {target_lang} filled in)
    src_lang: Optional[str] = None  # seq2seq with language codes (NLLB): source code; null = tgt_lang (seq2seq.py)
    tgt_lang: Optional[str] = None  # seq2seq with language codes (NLLB): target code; null = from dataset.target_lang
    recommended: Optional[RecommendedConfig] = None  # the guides' LoRA rank/alpha/targets and learning rate


@dataclass
class QuantConfig:
    name: str = MISSING
    load_in_4bit: bool = False  # bitsandbytes NF4/FP4 weights (QLoRA)
    load_in_8bit: bool = False  # bitsandbytes LLM.int8 weights
    weights_dtype: Optional[str] = None  # float32 | float16 | bfloat16; null = the hardware's dtype
    bnb_4bit_quant_type: str = "nf4"  # nf4 (QLoRA paper) or fp4
    bnb_4bit_use_double_quant: bool = True  # quantize the block scales too (~0.4 bit/param saved)


@dataclass
class LoraConfig:
    enabled: bool = True  # false = full fine-tuning (not allowed on quantized weights)
    r: int = 16  # adapter rank: capacity and size of the adapter
    alpha: int = 32  # scaling numerator: effective scale alpha/r (alpha/sqrt(r) with rslora)
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # or "all-linear"
    bias: str = "none"  # none | all | lora_only
    use_dora: bool = False  # weight-decomposed LoRA (DoRA)
    use_rslora: bool = False  # rank-stabilised scaling alpha/sqrt(r)


@dataclass
class HardwareConfig:
    name: str = MISSING  # cpu | gpu_16gb | ... | auto (resolved at run time)
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "float32"  # compute dtype for weights and activations
    memory_gb: Optional[float] = None  # memory budget; null = detect (RAM on cpu, device memory on cuda)
    optim: str = "adamw_torch"  # Trainer optimizer name (paged_adamw_8bit needs CUDA)
    gradient_checkpointing: bool = False  # trade ~30% compute for much less activation memory
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    per_device_eval_batch_size: int = 32  # batch for the dev loss (and for translation, unless the next is set)
    generate_batch_size: Optional[int] = None  # batch for translation; null = per_device_eval_batch_size
    torch_threads: Optional[int] = None  # CPU threads; null = torch default (all cores)
    num_processes: int = 1  # data-parallel processes per node, one per GPU; > 1: started with torchrun (distributed.py)
    num_nodes: int = 1  # nodes (started by the cluster, one task per GPU); the planner divides by processes x nodes
    strategy: str = "ddp"  # ddp (a full copy per process) | fsdp | zero2 | zero3 (DeepSpeed): what is sharded
    deepspeed_config: Optional[str] = None  # zero2/zero3: a DeepSpeed JSON; null = conf/deepspeed/<strategy>.json


@dataclass
class DatasetConfig:
    name: str = MISSING
    format: str = "jsonl"  # jsonl | csv | tsv | parallel | hub
    path: Optional[str] = None  # directory that holds the split files
    splits: Dict[str, Any] = field(default_factory=dict)  # split -> file (parallel: {source: F, target: F})
    source_field: str = "source"  # column / key holding the gloss
    target_field: str = "target"  # column / key holding the spoken-language text
    delimiter: Optional[str] = None  # csv/tsv delimiter; null = "," for csv and tab for tsv
    source_lang: str = "ASL gloss"
    target_lang: str = "English"
    direction: str = "gloss2text"  # gloss2text | text2gloss (swaps source and target)
    on_bad_rows: str = "error"  # error | drop (dropped rows are counted and logged)
    on_leak: Optional[str] = None  # error | drop | keep: a train pair also in dev/test; null = as on_bad_rows
    max_train_samples: Optional[int] = None  # cap for quick runs; null = all
    max_eval_samples: Optional[int] = None  # cap on dev and test; null = all
    system_prompt: Optional[str] = None  # system message; null = none
    prompt: str = "Translate from {source_lang} to {target_lang}:\n{source}"
    tokenize: str = "13a"  # sacrebleu tokenizer for scoring: 13a | zh | intl | none | ...
    lowercase: bool = False  # lowercase hypotheses and references before scoring
    hub_id: Optional[str] = None  # format=hub: Hugging Face Hub dataset id (OWNER/NAME); downloaded only when online
    hub_config: Optional[str] = None  # format=hub: the subset (load_dataset's second argument); null = the default
    hub_revision: Optional[str] = None  # format=hub: commit, tag or branch; null = the main branch


@dataclass
class TrainConfig:
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"  # linear | cosine | constant | constant_with_warmup | ...
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256  # tokens per example (prompt + completion); longer ones are truncated
    gradient_accumulation_steps: Optional[int] = None  # null = the hardware profile's
    per_device_train_batch_size: Optional[int] = None  # null = the hardware profile's
    train_sampling_strategy: str = "random"  # random | group_by_length (similar lengths together: less padding)
    logging_steps: int = 5
    eval_strategy: str = "epoch"  # no | steps | epoch: when dev loss is computed
    eval_steps: Optional[int] = None
    save_strategy: str = "epoch"  # no | steps | epoch: when checkpoints are written
    save_steps: Optional[int] = None
    save_total_limit: Optional[int] = 2  # checkpoints kept on disk (the best one is never deleted)
    load_best_model_at_end: bool = True  # keep the checkpoint with the lowest dev loss
    early_stopping_patience: Optional[int] = None  # evaluations without dev-loss improvement before stopping
    seed: int = 42
    resume: str = "no"  # no | auto: continue from output_dir's newest checkpoint-N/ and its MLflow run


@dataclass
class GenerateConfig:
    name: str = MISSING
    max_new_tokens: int = 64
    num_beams: int = 1  # > 1 = beam search
    do_sample: bool = False  # true = sampling with temperature / top_p
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    batch_size: Optional[int] = None  # null = the hardware profile's eval batch size


@dataclass
class EvalConfig:
    zero_shot: bool = True  # translate the test split with the untrained model first (before/after)
    splits: List[str] = field(default_factory=lambda: ["dev", "test"])  # splits translated after training
    objective: Any = "dev_bleu4"  # metric returned to sweepers; a list of names = several (Optuna multi-objective)
    only: bool = False  # true: no training; score the base model (or eval.adapter) on eval.splits
    adapter: Optional[str] = None  # a trained LoRA adapter directory to score (with eval.only=true)
    shots: int = 0  # k-shot prompts in eval.only runs: k train pairs as demonstration turns
    shot_selection: str = "random"  # random (seeded per source) | similar (most gloss tokens in common)


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment_name: str = "slt_hydra"
    run_name: Optional[str] = None  # null = built from the model/quant/lora choices
    log_adapter: bool = True  # upload the LoRA adapter as an artifact


@dataclass
class SweepConfig:
    name: str = MISSING  # a --multirun's name: its directory multirun/NAME and parent run; ??? = a timestamp
    resume: bool = True  # a named sweep run again reuses its parent and skips the jobs that already finished


@dataclass
class SltConfig:
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    lora: LoraConfig = MISSING
    hardware: HardwareConfig = MISSING
    dataset: DatasetConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlflow: MlflowConfig = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)
    cache_dir: str = MISSING  # where converted models (the embedded GGUF) are cached
    output_dir: str = MISSING  # this job's directory (Hydra's run/sweep dir)


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can extend it (``defaults: [slt_schema, ...]``)."""
    ConfigStore.instance().store(name="slt_schema", node=SltConfig)


def translation_batch_size(cfg) -> int:
    """Sentences per generate() call: generate.batch_size, else the hardware profile's generate_batch_size, else
    its per_device_eval_batch_size (run configs saved before generate_batch_size existed lack it)."""
    return int(cfg.generate.get("batch_size") or cfg.hardware.get("generate_batch_size")
               or cfg.hardware.per_device_eval_batch_size)
