"""Batched translation with the model's chat template: greedy by default, beam or sampling on request."""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig

from slt_hydra.data import build_messages


def translate(model, tokenizer, sources: Sequence[str], dataset_cfg: DictConfig, generate_cfg: DictConfig,
              batch_size: int) -> list[str]:
    """Translate ``sources`` in batches; returns one string per source, in order.

    Prompts are left-padded (decoder-only models continue from the right edge) and sorted by
    length so each batch pads little; the KV cache is on (generate's default).
    """
    import torch

    prompts = [
        tokenizer.apply_chat_template(build_messages(src, dataset_cfg), add_generation_prompt=True, tokenize=False)
        for src in sources
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            kwargs = dict(max_new_tokens=generate_cfg.max_new_tokens, num_beams=generate_cfg.num_beams,
                          do_sample=generate_cfg.do_sample, repetition_penalty=generate_cfg.repetition_penalty,
                          pad_token_id=tokenizer.pad_token_id)
            if generate_cfg.do_sample:
                kwargs.update(temperature=generate_cfg.temperature, top_p=generate_cfg.top_p)
            else:  # silence the model's own sampling defaults under greedy/beam decoding
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                generated = model.generate(**enc, **kwargs)
            new_tokens = generated[:, enc["input_ids"].shape[1]:]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = text.strip()
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs
