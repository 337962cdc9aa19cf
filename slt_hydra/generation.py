"""Batched translation: greedy by default, beam or sampling on request (the generate group).

``translate_chat`` prompts a decoder-only LLM with its chat template; ``translate_seq2seq`` feeds an
encoder-decoder (T5, NLLB) its prefix + the source. Which one a run uses is the model kind's choice
(slt_hydra/kinds). Both sort the sources by length so each batch pads little and return one string per source,
in order.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

from omegaconf import DictConfig

from slt_hydra.data import Example, build_messages


def translate_chat(model, tokenizer, sources: Sequence[str], dataset_cfg: DictConfig, generate_cfg: DictConfig,
                   batch_size: int, shots_for: Callable[[str], Sequence[Example]] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Translate ``sources`` in batches; returns one string per source, in order.

    Prompts are left-padded (decoder-only models continue from the right edge) and sorted by
    length in tokens so each batch pads little; the KV cache is on (generate's default). With one beam, the
    prompts are prefilled in groups of neighbouring rows and the batch's shared first tokens computed once
    (``prefill``); greedy decoding also lets finished rows leave the batch (``generate_dropping_finished``); a
    LoRA adapter on fp32 weights is merged into them while it translates (``merged_lora``). The outputs are those
    of one plain generate call per sentence (tests/test_translate_prefix.py). ``shots_for`` gives each source its
    k-shot demonstration pairs (evaluation-only runs); ``on_batch`` is told how many sentences each finished batch
    held (a progress bar).
    """
    import torch

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
        with merged_lora(model):
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                with torch.inference_mode():
                    if generate_cfg.num_beams == 1:  # beam search would need the shared cache expanded per beam
                        enc = prefill(model, enc, tokenizer.pad_token_id, chunk_rows=PREFILL_CHUNK_ROWS)
                    if generate_cfg.num_beams == 1 and not generate_cfg.do_sample and not several_processes():
                        new_tokens = generate_dropping_finished(model, enc, kwargs,
                                                                stop_token_ids(model, tokenizer))
                    else:
                        new_tokens = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
                for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    outputs[i] = text.strip()
                if on_batch:
                    on_batch(len(batch))
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


def generate_dropping_finished(model, enc: dict, kwargs: dict, stop_ids: list[int], every: int = 1):
    """Greedy ``generate`` in rounds of ``every`` new tokens; after each round the rows that produced a stop token
    leave the batch, their KV-cache rows with them (rounds of 1 token measured fastest on CPU: a generate call
    costs less than the positions a longer round runs past a row's end). In one generate call every finished row
    runs on until the batch's longest translation ends (what that costs: docs/benchmarks.md). Each round continues
    from the cache (only the last token is new to it) with the whole sequence as input_ids, so greedy decoding
    gives the same tokens as one call. Returns the new tokens, pad-filled after each row's stop token."""
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


@contextmanager
def merged_lora(model):
    """A LoRA adapter merged into its base weights while the model translates, unmerged after (PEFT's
    ``merge_adapter``/``unmerge_adapter``): each adapted projection becomes one matmul instead of three plus a
    scale and an add, which on CPU cost more than their arithmetic (docs/benchmarks_epyc_nobf16.md). Only over fp32
    ``nn.Linear`` weights in one process: unmerging restores fp32 weights to within rounding (~1e-7 relative),
    bf16/fp16 ones it would not; bitsandbytes' 4/8-bit ones PEFT re-quantizes; FSDP/ZeRO hold shards."""
    import torch

    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
    mergeable = bool(layers) and hasattr(model, "merge_adapter") and not several_processes() and all(
        type(m.get_base_layer()) is torch.nn.Linear and m.get_base_layer().weight.dtype == torch.float32
        and not m.merged for m in layers)
    if not mergeable:
        yield
        return
    device = layers[0].get_base_layer().weight.device.type
    with torch.no_grad(), torch.autocast(device, enabled=False):  # B @ A in fp32, under a bf16 autocast too
        model.merge_adapter()
    try:
        yield
    finally:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            model.unmerge_adapter()


def several_processes() -> bool:
    """FSDP/ZeRO-3 ranks translate in step (every forward gathers the shards): one generate call per batch, whose
    synced_gpus keeps them together, rather than rounds each rank would end on its own."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def contiguous_input(module, args):
    """A forward pre-hook for the LM head. In prefill, generate keeps only each row's last hidden state for the
    head; that slice of a batch is not contiguous, and torch then runs the head as a batched matmul against the
    weight broadcast to every row, several times slower than one plain matmul (measured on the EPYC of
    docs/benchmarks_epyc_nobf16.md)."""
    return (args[0].contiguous(), *args[1:])


PREFILL_CHUNK_ROWS = 32  # rows per prefill forward: a batch sorted by length pads little within 32 neighbours


def prefill(model, enc, pad_token_id: int, share_prefix: bool = True,
            chunk_rows: int | None = PREFILL_CHUNK_ROWS) -> dict:
    """Fill the KV cache for every prompt token but each row's last, so generate starts decoding at once.

    - The batch's common first tokens (the system turn of a chat prompt) are run once and their cache shared
      (``share_prefix``).
    - The rest is run in groups of ``chunk_rows`` neighbouring rows, each padded only to its own longest row:
      a whole batch of 128 sorted prompts pads ~20 % in one forward, groups of 32 pad ~5 %. The groups' caches
      are then joined with zero keys/values in the padding, which the attention mask hides.

    The rows are laid out as [prefix][padding][rest], the batch's width, so the new tokens start at the same
    column; positions come from the attention mask, so the outputs do not change (tests/test_translate_prefix.py).
    Prefill is most of a short translation's compute on CPU (docs/benchmarks.md). Models whose cache is not one
    plain growing layer per block (sliding windows, recurrent state) get only the shared prefix, or nothing."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    ids, mask = enc["input_ids"], enc["attention_mask"]
    count, width = ids.shape
    rows = [ids[i, width - int(n):] for i, n in enumerate(mask.sum(1))]  # left padded: tokens at the right
    if count < 2 or width < 2:
        return dict(enc)
    length = shared_length(rows) if share_prefix else 0
    plain_layers = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    if not plain_layers:
        chunk_rows = None
    if not length and chunk_rows is None:
        return dict(enc)
    laid_out = {
        "input_ids": torch.stack([torch.cat([r[:length], r.new_full((width - len(r),), pad_token_id), r[length:]])
                                  for r in rows]),
        "attention_mask": torch.stack([torch.cat([mask.new_ones(length), mask.new_zeros(width - len(r)),
                                                  mask.new_ones(len(r) - length)]) for r in rows]),
    }
    prefix_cache = None
    if length:
        prefix = rows[0][:length].unsqueeze(0)
        prefix_cache = DynamicCache(config=model.config)
        model(input_ids=prefix, attention_mask=torch.ones_like(prefix), past_key_values=prefix_cache, use_cache=True,
              logits_to_keep=1)  # only the cache is wanted: skip the LM head over the prefix
    if chunk_rows is None:  # generate prefills the rest of every row in one forward
        prefix_cache.batch_repeat_interleave(count)
        return {**laid_out, "past_key_values": prefix_cache}

    groups = []  # (cache of [prefix][own padding][rest but the last token], own width after the prefix)
    for start in range(0, count, chunk_rows):
        tails = [r[length:-1] for r in rows[start:start + chunk_rows]]
        own = max(max(len(t) for t in tails), 0 if length else 1)  # no prefix: >= 1 column, to have a cache
        cache = DynamicCache(config=model.config)
        if prefix_cache is not None:
            for i, layer in enumerate(prefix_cache.layers):
                cache.update(layer.keys.expand(len(tails), -1, -1, -1), layer.values.expand(len(tails), -1, -1, -1), i)
        if own:
            tail_mask = torch.stack([torch.cat([mask.new_zeros(own - len(t)), mask.new_ones(len(t))]) for t in tails])
            full_mask = torch.cat([mask.new_ones(len(tails), length), tail_mask], 1)
            positions = (full_mask.long().cumsum(1) - 1).masked_fill(full_mask == 0, 0)[:, length:]
            model(input_ids=torch.stack([torch.cat([t.new_full((own - len(t),), pad_token_id), t]) for t in tails]),
                  attention_mask=full_mask, position_ids=positions, past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
        groups.append((cache, own))
    joined = DynamicCache(config=model.config)
    cached = width - 1 - length  # columns after the prefix that the cache must cover: all but the last
    for i in range(len(groups[0][0].layers)):
        keys, values = [], []
        for cache, own in groups:
            for kept, states in ((keys, cache.layers[i].keys), (values, cache.layers[i].values)):
                gap = states.new_zeros(*states.shape[:2], cached - own, states.shape[3])
                kept.append(torch.cat([states[:, :, :length], gap, states[:, :, length:]], 2))
        joined.update(torch.cat(keys), torch.cat(values), i)
    return {**laid_out, "past_key_values": joined}


def shared_length(rows) -> int:
    """How many first tokens all rows share, leaving each row >= 1 of its own (generate needs one); 0 below 4."""
    import torch

    shortest = min(len(r) for r in rows)
    same = torch.stack([r[:shortest] for r in rows]).eq(rows[0][:shortest]).all(0)
    length = min(int(same.long().cumprod(0).sum()), shortest - 1)
    return length if length >= 4 else 0


def translate_seq2seq(model, tokenizer, sources: Sequence[str], generate_cfg: DictConfig, batch_size: int,
                      on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Translate ``sources`` in batches (prefix from model.config.prefix), one string per source, in order.

    Sorted by length so each batch pads little; encoder inputs are right-padded (the attention mask covers it)."""
    import torch

    prefix = getattr(model.config, "prefix", None) or ""
    texts = [prefix + s for s in sources]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    kwargs = generation_kwargs(generate_cfg)
    try:
        with merged_lora(model):
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True).to(device)
                with torch.inference_mode():
                    generated = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                               **kwargs)
                for i, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                    outputs[i] = text.strip()
                if on_batch:
                    on_batch(len(batch))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs
