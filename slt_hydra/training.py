"""The Trainer around the model: its arguments from the train and hardware groups, resuming, and one training
pass measured (dev loss before and after, real tokens per second). Shared by every model kind (slt_hydra/kinds).
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from slt_hydra import distributed, precision, tracking
from slt_hydra.metrics import perplexity

log = logging.getLogger("slt_hydra")


def trainer_arguments(cfg: DictConfig, output_dir: Path) -> dict:
    """The Trainer arguments from the train and hardware groups, shared by TRL's SFTConfig (chat LLMs) and
    Seq2SeqTrainingArguments (T5, NLLB). Everything precision-related is explicit: SFTConfig's own defaults
    (bf16=True, gradient_checkpointing=True) are a trap on a CPU that emulates bf16
    (docs/benchmarks_epyc_nobf16.md)."""
    hw, train = cfg.hardware, cfg.train
    on_cuda = hw.device == "cuda"
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        lr_scheduler_type=train.lr_scheduler_type,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        per_device_train_batch_size=train.per_device_train_batch_size or hw.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps or hw.gradient_accumulation_steps,
        per_device_eval_batch_size=hw.per_device_eval_batch_size,
        train_sampling_strategy=train.train_sampling_strategy,
        logging_steps=train.logging_steps,
        eval_strategy=train.eval_strategy,
        eval_steps=train.eval_steps,
        save_strategy=train.save_strategy,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=train.load_best_model_at_end,
        metric_for_best_model="eval_loss" if train.load_best_model_at_end else None,
        seed=train.seed,
        data_seed=train.seed,
        # CPU: bf16 autocast where hardware.precision chose it (slt_hydra/precision.py); CUDA: with bf16 weights
        bf16=hw.dtype == "bfloat16" if on_cuda else hw.get("precision") in ("bf16_autocast", "bfloat16"),
        fp16=on_cuda and hw.dtype == "float16",
        use_cpu=not on_cuda,
        optim=hw.optim,
        activation_checkpointing=hw.gradient_checkpointing,  # (its old name, gradient_checkpointing, is deprecated)
        include_num_input_tokens_seen="non_padding",  # real tokens, for tokens/s
        report_to=[],  # none by name: run.execute adds mlflow_callback() (logging synchronously into our open run)
        run_name=None,
        save_only_model=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **distributed.trainer_kwargs(cfg),  # several processes: gloo/nccl, FSDP or DeepSpeed (distributed.py)
    )


def mlflow_callback():
    """transformers' MLflow callback (training args and model config as params, the loss curve as metrics, into the
    open run), logging synchronously. Its default, MLflow's asynchronous logging, has a thread that waits up to 1 s on
    its queue, and ending the run waits that out: 0.5 s per job on average, against ~10 ms a write for the dozen
    writes a default job's training makes. Written when logged, nothing waits in a queue for a kill -9 to lose."""
    from transformers.integrations import MLflowCallback

    class SynchronousMLflowCallback(MLflowCallback):
        # setup() sets it from MLflow's version (True since 2.8) and logs the params with it at once: kept False
        _async_log = property(lambda self: False, lambda self, value: None)

    return SynchronousMLflowCallback()


def sft_config(cfg: DictConfig, output_dir: Path, **extra):
    """TRL's SFTConfig: the Trainer arguments plus the longest tokenized example (and a kind's ``extra``)."""
    from trl import SFTConfig

    return SFTConfig(max_length=cfg.train.max_length, **trainer_arguments(cfg, output_dir), **extra)


def score_target_positions_only() -> None:
    """Make TRL's fused LM-head loss score only the positions that carry a label (the translation) on CPU too.

    TRL 1.16 does so on CUDA/XPU, but elsewhere it sends every position (prompt and padding included) through the
    49k-word vocabulary and back, for a loss that ignores all but the target tokens; the reason it gives (tile
    shapes recompiling on every batch, on Neuron) does not hold for eager CPU kernels, where it was a large share
    of a training step (docs/benchmarks.md). The compact path is TRL's own: same loss, entropy and token
    accuracy, computed on the target rows only. Its device test is looked up at call time in trl.trainer.utils;
    without it (another TRL), nothing changes."""
    import trl.trainer.utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "compact_on_cpu", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact.compact_on_cpu = True
    trl_utils._use_triton = compact


def typical_length(dataset) -> int | None:
    """The train examples' mean length in tokens (soft tokens included for pose input), rounded up to a multiple
    of 8 so that similar corpora share a cached measurement; None where the dataset does not tell."""
    columns = getattr(dataset, "column_names", None) or ()
    if "length" in columns:  # the pose kind counts prompt, soft tokens and translation itself
        lengths = list(dataset["length"])
    elif "input_ids" in columns:  # TRL tokenized the chat examples
        lengths = [len(ids) for ids in dataset["input_ids"]]
    else:
        return None
    return 8 * math.ceil(sum(lengths) / len(lengths) / 8) if lengths else None


def choose_train_attention(cfg: DictConfig, model, trainer) -> precision.AttentionChoice | None:
    """hardware.train_attention as training will use it: sdpa or eager by name, or (auto, on a CPU) the faster of
    the two measured at this run's batch, heads and typical length; None to keep what the model loaded with (a GPU,
    an encoder-decoder, a model with neither kernel)."""
    asked = cfg.hardware.get("train_attention", "auto")
    loaded = getattr(model.config, "_attn_implementation", None)
    if asked != "auto":
        return precision.AttentionChoice(asked, f"hardware.train_attention={asked}")
    config = model.config
    if (cfg.hardware.device != "cpu" or config.is_encoder_decoder or loaded not in precision.ATTENTION_KERNELS
            or not getattr(config, "num_attention_heads", None)):
        return None
    length = typical_length(trainer.train_dataset)
    if length is None:
        return None
    heads = config.num_attention_heads
    shape = (trainer.args.per_device_train_batch_size, heads, getattr(config, "num_key_value_heads", None) or heads,
             length, getattr(config, "head_dim", None) or config.hidden_size // heads)
    bf16 = cfg.hardware.get("precision") in ("bf16_autocast", "bfloat16")
    return precision.choose_attention(shape, bf16, cfg.hardware.torch_threads, cfg.cache_dir)


@contextlib.contextmanager
def training_kernels(cfg: DictConfig, model, trainer):
    """Training (and its dev-loss passes) with hardware.train_attention's kernel, the batch's shared first tokens
    run once (``shared_prefix``), and, under autocast, without PEFT's casts of each adapter's input to the adapter's
    fp32 (autocast casts every matmul's inputs anyway, so the values are the same: two copies of every adapter input
    fewer per step). Afterwards the model runs as loaded, for translation (generation has its own shared prefix; a
    forward pass, where sdpa is as fast or faster). Yields the attention choice (None: as loaded)."""
    from peft.helpers import disable_input_dtype_casting

    loaded = getattr(model.config, "_attn_implementation", None)
    choice = choose_train_attention(cfg, model, trainer)
    switch = choice is not None and choice.kernel != loaded
    if switch:
        model.set_attn_implementation(choice.kernel)
    try:
        # (FSDP/ZeRO-3 gather each block's weights around its forward: one forward per block and step, untouched)
        with (disable_input_dtype_casting(trainer.model, active=bool(trainer.args.bf16 or trainer.args.fp16)),
              shared_prefix(model) if not distributed.sharded(cfg.hardware) else contextlib.nullcontext()):
            yield choice
    finally:
        if switch:
            model.set_attn_implementation(loaded)


def shared_prefix_length(input_ids, inputs_embeds, attention_mask) -> int:
    """How many first positions every row of the batch shares (same token or embedding, none of them padding),
    leaving each row one of its own; 0 below 4 or for a single row."""
    rows, width = attention_mask.shape
    if rows < 2 or width < 5:
        return 0
    if input_ids is not None:
        same = input_ids.eq(input_ids[:1]).all(0)
    else:
        same = inputs_embeds.eq(inputs_embeds[:1]).all(-1).all(0)
    same &= attention_mask.bool().all(0)
    length = min(int(same.long().cumprod(0).sum()), int(attention_mask.sum(1).min()) - 1)
    return length if length >= 4 else 0


@contextlib.contextmanager
def shared_prefix(model):
    """While training, the decoder runs the first tokens every row of a batch shares (the chat prompt's system turn:
    16 of the demo's ~43 tokens per example) once, and the rest of every row against their keys and values,
    expanded to the batch. The same attention, positions and gradients (the prefix's keys and values collect every
    row's), as tests/test_train_attention.py checks; a third fewer positions through the decoder on the demo.

    Only for a decoder whose cache is one plain growing layer per block and that drops nothing at random (dropout
    would share its masks across the rows), without activation checkpointing, and only for the calls training makes
    (no cache, no positions of their own); every other call, generation's too, runs as before."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    usable = (decoder is not None and not model.config.is_encoder_decoder
              and not getattr(decoder, "gradient_checkpointing", False)
              and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in decoder.modules())
              and not getattr(decoder.config, "attention_dropout", 0.0))
    if usable:
        usable = all(type(layer) is DynamicLayer for layer in DynamicCache(config=decoder.config).layers)
    if not usable:
        yield
        return
    forward, own_attribute = decoder.forward, decoder.__dict__.get("forward")

    def forward_sharing(*args, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        own = (args or attention_mask is None or kwargs.get("use_cache") or kwargs.get("return_dict") is False
               or any(kwargs.get(key) is not None for key in ("past_key_values", "position_ids", "cache_position"))
               or any(kwargs.get(key) for key in ("output_attentions", "output_hidden_states", "output_router_logits"))
               or any(torch.is_tensor(value) for value in kwargs.values()))  # (per-position inputs we do not split)
        length = 0 if own else shared_prefix_length(input_ids, inputs_embeds, attention_mask)
        if not length:
            return forward(*args, input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           **kwargs)
        for key in ("use_cache", "past_key_values", "position_ids", "cache_position"):  # (None or False here)
            kwargs.pop(key, None)
        head = {"input_ids": input_ids[:1, :length]} if input_ids is not None \
            else {"inputs_embeds": inputs_embeds[:1, :length]}
        cache = DynamicCache(config=decoder.config)
        prefix = forward(**head, attention_mask=attention_mask[:1, :length], past_key_values=cache, use_cache=True,
                         **kwargs)
        rows = attention_mask.shape[0]
        shared = DynamicCache(config=decoder.config)
        for index, layer in enumerate(cache.layers):
            shared.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
        tail = {"input_ids": input_ids[:, length:]} if input_ids is not None \
            else {"inputs_embeds": inputs_embeds[:, length:]}
        rest = forward(**tail, attention_mask=attention_mask, past_key_values=shared, use_cache=True, **kwargs)
        hidden = prefix.last_hidden_state.expand(rows, -1, -1)
        return type(rest)(last_hidden_state=torch.cat([hidden, rest.last_hidden_state], dim=1))

    decoder.forward = forward_sharing
    try:
        yield
    finally:
        if own_attribute is None:
            del decoder.forward  # the class's own again
        else:
            decoder.forward = own_attribute


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """With train.resume=auto, the newest checkpoint-N/ in output_dir, if the active run wrote it.

    Claims output_dir for the active run either way, so a later resume knows whose checkpoints these are."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        return None
    mine = tracking.claim_output_dir(output_dir, active.info.run_id, cfg.mlflow.tracking_uri)
    if cfg.train.resume != "auto":
        return None
    # The newest complete one: the Trainer writes trainer_state.json last, so a kill mid-save leaves none.
    complete = [path for path in output_dir.glob("checkpoint-*")
                if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()]
    checkpoint = str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None
    if checkpoint and not mine:
        log.warning("train.resume=auto: %s is another run's checkpoint, not resumed; training from the start",
                    checkpoint)
        return None
    if checkpoint is None:
        log.info("train.resume=auto: no checkpoint-N/ in %s yet, training from the start", output_dir)
    return checkpoint


def truncation_counts(trainer, n_examples: int, max_length: int) -> dict[str, int]:
    """Train examples cut at train.max_length, and those the cut left without a target token (the trainer drops
    them: they carry no loss), counted after the trainer tokenized the split."""
    dataset = trainer.train_dataset
    if dataset is None or "input_ids" not in (dataset.column_names or ()):
        return {}
    at_limit = sum(1 for ids in dataset["input_ids"] if len(ids) >= max_length)
    counts = {"train_truncated": at_limit, "train_dropped_no_target": n_examples - len(dataset)}
    if any(counts.values()):
        log.warning("train.max_length=%d: %d of %d train examples were cut at it and %d left without a target "
                    "token (dropped); raise train.max_length to keep them whole", max_length, at_limit, n_examples,
                    counts["train_dropped_no_target"])
    return counts


def train_and_measure(trainer, evaluate_dev: bool, checkpoint: str | None, done_before: dict, log_metrics) -> None:
    """Dev loss before training (unless a resumed run has it), training (from checkpoint, if resuming), its
    throughput in real tokens, and dev loss after."""
    import mlflow

    if evaluate_dev and "zeroshot_dev_loss" not in done_before:  # fresh LoRA adapters are a no-op: the base model
        loss = trainer.evaluate()["eval_loss"]
        log_metrics({"zeroshot_dev_loss": loss, "zeroshot_dev_perplexity": perplexity(loss)})
    if checkpoint:
        log.info("train.resume=auto: continuing from %s", checkpoint)
        mlflow.set_tag("resumed_from", Path(checkpoint).name)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = result.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    log_metrics({
        "train_seconds": train_seconds,
        "train_tokens": tokens,
        "train_tokens_per_second": tokens / train_seconds if train_seconds else 0.0,
        "train_loss_final": result.training_loss,
    })
    if evaluate_dev:  # with load_best_model_at_end, this is the best checkpoint's
        loss = trainer.evaluate()["eval_loss"]
        log_metrics({"dev_loss": loss, "dev_perplexity": perplexity(loss)})
