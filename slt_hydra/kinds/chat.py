"""Decoder-only chat LLMs: prompts built with the model's chat template, TRL's SFTTrainer on prompt-completion
conversations (the loss on the translation only), batched chat generation."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from slt_hydra.data import to_prompt_completion
from slt_hydra.generation import translate_chat
from slt_hydra.kinds.base import ModelKind
from slt_hydra.models import load_causal_lm, peft_config
from slt_hydra.precision import autocast as precision_autocast
from slt_hydra.training import score_target_positions_only, sft_config


class ChatLLM(ModelKind):
    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    merged_inputs = "prompts: tokenizer.apply_chat_template(messages, add_generation_prompt=True)"

    def load(self, cfg, source):
        return load_causal_lm(cfg, source)

    def training_arguments(self, cfg: DictConfig, output_dir: Path):
        return sft_config(cfg, output_dir)

    def trainer(self, cfg, model, tokenizer, splits, args, evaluate_dev, callbacks):
        from trl import SFTTrainer

        score_target_positions_only()
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=to_prompt_completion(splits["train"], cfg.dataset),
            eval_dataset=to_prompt_completion(splits["dev"], cfg.dataset) if evaluate_dev else None,
            processing_class=tokenizer,
            peft_config=peft_config(cfg.lora),
            callbacks=callbacks,
        )

    def translate(self, cfg, model, tokenizer, sources, batch_size, shots_for=None, on_batch=None):
        with precision_autocast(cfg.hardware):  # bf16 where training used it on a CPU
            return translate_chat(model, tokenizer, sources, cfg.dataset, cfg.generate, batch_size, shots_for,
                                  on_batch)
