"""Typed schema of every config group.

``conf/config.yaml`` extends these dataclasses, so a misspelt key or a wrong type fails at composition with
Hydra's own message. A default here is what an option file that leaves the key out gets; where a group's default
option sets a key too, the two agree (tests/test_configs.py checks it).

The types say what a key holds; ``ALLOWED`` (at the end) says which values of it make sense: a range or a set of
choices for every numeric or enumerated setting, checked by ``out_of_range`` before anything is loaded
(tests/test_knobs.py fails on a setting without one). Rules that involve more than one group live in
``validate.py``, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class ArchConfig:
    """Architecture numbers from the model's config.json: the planner (``slt_hydra/memory.py``) counts
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
    src_lang: Optional[str] = None  # seq2seq with language codes (NLLB): source code; null = tgt_lang
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
    dropout: float = 0.0  # dropout on the adapter input (lora=default: why 0)
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # or "all-linear"
    bias: str = "none"  # none | all | lora_only
    use_dora: bool = False  # weight-decomposed LoRA (DoRA)
    use_rslora: bool = False  # rank-stabilised scaling alpha/sqrt(r)


@dataclass
class HardwareConfig:
    name: str = MISSING  # cpu | gpu_16gb | ... | auto (resolved at run time)
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "float32"  # compute dtype for weights and activations
    precision: str = "float32"  # CPU: float32 | bf16_autocast | bfloat16 | auto (measured; slt_hydra/precision.py)
    train_attention: str = "auto"  # training's attention kernel: sdpa | eager | auto (CPU: measured; else the model's)
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
    tokenized: bool = False  # the corpus comes tokenized ("word ."): sacreBLEU's detokenize warning is off
    hub_id: Optional[str] = None  # format=hub: Hugging Face Hub dataset id (OWNER/NAME); downloaded only when online
    hub_config: Optional[str] = None  # format=hub: the subset (load_dataset's second argument); null = the default
    hub_revision: Optional[str] = None  # format=hub: commit, tag or branch; null = the main branch
    input: str = "gloss"  # gloss: source_field holds text | pose: it names each example's pose file (slt_hydra/pose.py)
    pose_dir: Optional[str] = None  # input=pose: the folder of pose files, relative to path; null = path itself
    pose_format: str = "pose"  # input=pose: pose (.pose files) | npy | npz | openpose_json (a folder per example)


@dataclass
class PoseConfig:
    """What a pose-input run reads (slt_hydra/pose.py) and the encoder that turns it into soft tokens
    (slt_hydra/pose_model.py). Used only with dataset.input=pose."""

    layout: str = "auto"  # auto (from the .pose header; arrays: from the point count) | holistic | openpose
    parts: List[str] = field(default_factory=lambda: ["body", "left_hand", "right_hand"])  # and/or face
    dims: int = 2  # coordinates kept per point: 2 (XY) | 3 (XYZ)
    normalize: str = "shoulders"  # shoulders (centred, shoulder width 1: pose-format's normalize) | none
    max_frames: int = 512  # longer sequences: on_long
    on_long: str = "truncate"  # truncate (counted) | error
    on_nonfinite: str = "drop"  # frames holding NaN/inf: drop (counted) | error
    fps: float = 24.0  # openpose_json / arrays carry no frame rate: recorded in the Pose only
    hidden: int = 256  # the encoder's width
    layers: int = 2  # transformer layers over the downsampled frames
    heads: int = 4  # attention heads (hidden must be a multiple)
    downsample: int = 4  # frames per soft token (a strided convolution): fewer soft tokens, shorter sequences
    dropout: float = 0.1


@dataclass
class TrainConfig:
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 1e-3  # LoRA on small models wants a high rate (the guides: ~2e-4 for 7B)
    warmup_steps: int = 5
    lr_scheduler_type: str = "linear"  # linear | cosine | constant | constant_with_warmup | ...
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256  # tokens per example (prompt + completion); longer ones are truncated
    gradient_accumulation_steps: Optional[int] = None  # null = the hardware profile's
    per_device_train_batch_size: Optional[int] = None  # null = the hardware profile's
    train_sampling_strategy: str = "group_by_length"  # random | group_by_length (similar lengths: less padding)
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
    batch_size: Optional[int] = None  # per generate(); null = hardware.generate_batch_size, else its eval batch


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
    pose: PoseConfig = field(default_factory=PoseConfig)
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


# --------------------------------------------------------------------------- the values each setting may take


@dataclass(frozen=True)
class Allowed:
    """The values one setting may take: a number in a range, or one of a set of choices; null where ``null``."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # low itself is not allowed (learning_rate > 0)
    high_open: bool = False  # high itself is not allowed (dropout < 1)
    integer: bool = False
    choices: tuple = ()
    also: tuple = ()  # values outside the range that mean something (train.max_steps=-1: train by epochs)
    null: bool = False  # null is allowed (it means "the default", "none" or "all": see the key's comment)

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.null
        if value in self.also:
            return True
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
            return False
        if self.integer and not float(value).is_integer():
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            kind = "an integer" if self.integer else "a number"
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
            text = f"{kind} {' and '.join(bounds)}".strip()
        extras = [str(v) for v in self.also] + (["null"] if self.null else [])
        return text + (f" (or {', '.join(extras)})" if extras else "")


def at_least(low: float, **kw: Any) -> Allowed:
    return Allowed(low=low, integer=True, **kw)


def above(low: float, **kw: Any) -> Allowed:
    return Allowed(low=low, low_open=True, **kw)


def one_of(*choices: Any, null: bool = False) -> Allowed:
    return Allowed(choices=choices, null=null)


# transformers' names (its SchedulerType and OptimizerNames, and TrainingArguments' sampler choices), written out
# because transformers imports torch; tests/test_knobs.py checks them against the installed transformers.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
              "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad",
              "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
              "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
              "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit",
              "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise",
              "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw", "schedule_free_radam",
              "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw")
TRAIN_SAMPLERS = ("random", "sequential", "group_by_length", "batch_rebalance")
BLEU_TOKENIZERS = ("none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab", "spm", "flores101", "flores200",
                   "spBLEU-1K")  # sacrebleu's
DATASET_FORMATS = ("jsonl", "csv", "tsv", "parallel", "hub")
POSE_FORMATS = ("pose", "npy", "npz", "openpose_json")  # slt_hydra/pose.py reads each
POSE_PARTS = ("body", "face", "left_hand", "right_hand")
DTYPES = ("float32", "float16", "bfloat16")
CPU_PRECISIONS = ("float32", "bf16_autocast", "bfloat16")  # slt_hydra/precision.py, safest first
ATTENTION_KERNELS = ("sdpa", "eager")  # transformers' attn_implementation names; the model's default first
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
SPLITS = ("train", "dev", "test")

ARCH_COUNTS = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
               "norms_per_layer")
ARCH_OPTIONAL_COUNTS = ("num_key_value_heads", "head_dim", "max_position_embeddings", "num_experts",
                        "experts_per_token", "decoder_layers", "relative_attention_buckets")

ALLOWED: Dict[str, Allowed] = {
    # model
    "model.params_b": above(0, null=True),
    "model.template_family": one_of("chatml", "llama3", "llama2", "mistral", "gemma", "phi3", "none", null=True),
    "model.architecture": one_of("causal_lm", "seq2seq"),
    **{f"model.arch.{key}": at_least(1) for key in ARCH_COUNTS},
    **{f"model.arch.{key}": at_least(1, null=True) for key in ARCH_OPTIONAL_COUNTS},
    "model.arch.mlp": one_of("gated", "plain"),
    "model.arch.norm": one_of("rmsnorm", "layernorm"),
    "model.recommended.lora_r": at_least(1),
    "model.recommended.lora_alpha": above(0),
    "model.recommended.learning_rate": above(0),
    # quant
    "quant.weights_dtype": one_of(*DTYPES, null=True),
    "quant.bnb_4bit_quant_type": one_of("nf4", "fp4"),
    # lora
    "lora.r": at_least(1),
    "lora.alpha": above(0),
    "lora.dropout": Allowed(low=0, high=1, high_open=True),
    "lora.bias": one_of("none", "all", "lora_only"),
    # hardware
    "hardware.device": one_of("cpu", "cuda", "auto"),
    "hardware.dtype": one_of(*DTYPES),
    "hardware.precision": one_of("auto", *CPU_PRECISIONS),
    "hardware.train_attention": one_of("auto", *ATTENTION_KERNELS),
    "hardware.memory_gb": above(0, null=True),
    "hardware.optim": one_of(*OPTIMIZERS),
    "hardware.per_device_train_batch_size": at_least(1),
    "hardware.gradient_accumulation_steps": at_least(1),
    "hardware.per_device_eval_batch_size": at_least(1),
    "hardware.generate_batch_size": at_least(1, null=True),
    "hardware.torch_threads": at_least(1, null=True),
    "hardware.num_processes": at_least(1),
    "hardware.num_nodes": at_least(1),
    "hardware.strategy": one_of(*STRATEGIES),
    # dataset
    "dataset.format": one_of(*DATASET_FORMATS),
    "dataset.direction": one_of("gloss2text", "text2gloss"),
    "dataset.on_bad_rows": one_of("error", "drop"),
    "dataset.on_leak": one_of("error", "drop", "keep", null=True),
    "dataset.max_train_samples": at_least(1, null=True),
    "dataset.max_eval_samples": at_least(1, null=True),
    "dataset.tokenize": one_of(*BLEU_TOKENIZERS),
    "dataset.input": one_of("gloss", "pose"),
    "dataset.pose_format": one_of(*POSE_FORMATS),
    # pose (hidden % heads: validate.py)
    "pose.layout": one_of("auto", "holistic", "openpose"),
    "pose.parts": one_of(*POSE_PARTS),  # each entry
    "pose.dims": one_of(2, 3),
    "pose.normalize": one_of("shoulders", "none"),
    "pose.max_frames": at_least(1),
    "pose.on_long": one_of("truncate", "error"),
    "pose.on_nonfinite": one_of("drop", "error"),
    "pose.fps": above(0),
    "pose.hidden": at_least(8),
    "pose.layers": at_least(0),
    "pose.heads": at_least(1),
    "pose.downsample": at_least(1),
    "pose.dropout": Allowed(low=0, high=1, high_open=True),
    # train
    "train.num_train_epochs": Allowed(low=0),  # 0 with max_steps > 0 (validate: something must be trained)
    "train.max_steps": at_least(1, also=(-1,)),
    "train.learning_rate": above(0),
    "train.warmup_steps": at_least(0),
    "train.lr_scheduler_type": one_of(*LR_SCHEDULERS),
    "train.weight_decay": Allowed(low=0),
    "train.max_grad_norm": Allowed(low=0),  # 0: no clipping
    "train.max_length": at_least(2),  # a prompt token and a target token, at the very least
    "train.gradient_accumulation_steps": at_least(1, null=True),
    "train.per_device_train_batch_size": at_least(1, null=True),
    "train.train_sampling_strategy": one_of(*TRAIN_SAMPLERS),
    "train.logging_steps": at_least(1),
    "train.eval_strategy": one_of("no", "steps", "epoch"),
    "train.eval_steps": at_least(1, null=True),
    "train.save_strategy": one_of("no", "steps", "epoch"),
    "train.save_steps": at_least(1, null=True),
    "train.save_total_limit": at_least(1, null=True),  # null: keep every checkpoint
    "train.early_stopping_patience": at_least(1, null=True),
    "train.seed": at_least(0),
    "train.resume": one_of("no", "auto"),
    # generate
    "generate.max_new_tokens": at_least(1),
    "generate.num_beams": at_least(1),
    "generate.temperature": Allowed(low=0),  # > 0 with do_sample=true: validate.py
    "generate.top_p": Allowed(low=0, high=1, low_open=True),
    "generate.repetition_penalty": above(0),
    "generate.batch_size": at_least(1, null=True),
    # eval (eval.objective: validate.py, it depends on eval.splits)
    "eval.splits": one_of(*SPLITS),  # each entry
    "eval.shots": at_least(0),
    "eval.shot_selection": one_of("random", "similar"),
}


def _values(cfg: DictConfig, key: str) -> Iterator[Any]:
    """The value at key, or each entry when it holds a list (eval.splits); nothing when the key is absent."""
    value = OmegaConf.select(cfg, key, default=MISSING, throw_on_missing=False)
    if value is MISSING:
        return
    if OmegaConf.is_list(value) or isinstance(value, list):
        yield from value
    else:
        yield value


def out_of_range(cfg: DictConfig) -> List[str]:
    """One line per setting whose value is outside what ALLOWED says, naming the setting and the allowed values."""
    problems = []
    for key, allowed in ALLOWED.items():
        for value in _values(cfg, key):
            if not allowed.admits(value):
                problems.append(f"{key}={value!r} is not allowed: use {allowed.describe()}.")
    return problems
