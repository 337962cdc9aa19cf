"""Sequence-to-sequence baselines (T5, NLLB) through the same groups, data, metrics and MLflow run as the LLMs.

``AutoModelForSeq2SeqLM`` (bitsandbytes 4/8-bit from the quant group), a PEFT LoRA adapter (task SEQ_2_SEQ_LM, from
the lora group, with Llama-style target names read as the model's own: T5's q/k/v/o, NLLB's out_proj),
transformers' Seq2SeqTrainer with the same Trainer arguments as TRL's SFTConfig (``training.trainer_arguments``),
and batched generation from encoder inputs. Results carry the LLM path's metric names, so reports and sweeps
compare both.

What the encoder reads: ``model.source_prefix`` (T5's task prefix, with {source_lang}/{target_lang} from the
dataset) + the gloss sequence; the decoder learns the reference text, ending with EOS. NLLB also takes FLORES-200
language codes (``models.language_codes``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from slt_hydra.data import Example
from slt_hydra.generation import translate_seq2seq
from slt_hydra.kinds.base import ModelKind
from slt_hydra.models import language_codes, load_seq2seq_lm, peft_config
from slt_hydra.precision import autocast as precision_autocast
from slt_hydra.training import trainer_arguments


def tokenize(examples: Sequence[Example], tokenizer, prefix: str, max_length: int):
    """A datasets.Dataset of input_ids/attention_mask (prefix + source) and labels (target + EOS)."""
    import datasets

    enc = tokenizer([prefix + e.source for e in examples], text_target=[e.target for e in examples],
                    max_length=max_length, truncation=True)
    eos = tokenizer.eos_token_id
    # T5 and NLLB append EOS to targets themselves; a tokenizer that does not would never learn to stop.
    labels = [ids if ids and ids[-1] == eos else ids + [eos] for ids in enc["labels"]]
    return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                       "labels": labels})


def _trainer_class():
    from transformers import Seq2SeqTrainer

    class Trainer(Seq2SeqTrainer):
        """Counts source + target tokens as seen, as the LLM path counts prompt + completion tokens."""

        def _track_num_input_tokens(self, inputs):
            super()._track_num_input_tokens(inputs)  # the encoder's real tokens (attention mask)
            if self.args.include_num_input_tokens_seen != "no" and "labels" in inputs:
                self.state.num_input_tokens_seen += int((inputs["labels"] != -100).sum())

    return Trainer


class Seq2SeqLM(ModelKind):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    merged_inputs = "inputs: model.config.prefix + the gloss sequence (saved in config.json)"

    def load(self, cfg, source):
        return load_seq2seq_lm(cfg, source)

    def tags(self, cfg, model):
        tags = {**super().tags(cfg, model), "source_prefix": model.config.prefix}
        codes = language_codes(cfg)
        if codes:
            tags.update(src_lang=codes[0], tgt_lang=codes[1])
        return tags

    def training_arguments(self, cfg: DictConfig, output_dir: Path):
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments(**trainer_arguments(cfg, output_dir), predict_with_generate=False)

    def trainer(self, cfg, model, tokenizer, splits, args, evaluate_dev, callbacks):
        from transformers import DataCollatorForSeq2Seq

        adapter = peft_config(cfg.lora, task_type="SEQ_2_SEQ_LM", family=cfg.model.family)
        if adapter is not None:
            from peft import get_peft_model

            model = get_peft_model(model, adapter)
            if cfg.hardware.gradient_checkpointing:  # as TRL does: checkpointed frozen inputs still need a grad path
                model.enable_input_require_grads()
        prefix = model.config.prefix or ""

        def dataset(split):
            return tokenize(splits[split], tokenizer, prefix, cfg.train.max_length)

        return _trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset("train"),
            eval_dataset=dataset("dev") if evaluate_dev else None,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    def translate(self, cfg, model, tokenizer, sources, batch_size, shots_for=None, on_batch=None):
        # k-shot prompts are chat turns: validate refuses eval.shots > 0 for this kind, so shots_for gives none
        with precision_autocast(cfg.hardware):  # bf16 where training used it on a CPU
            return translate_seq2seq(model, tokenizer, sources, cfg.generate, batch_size, on_batch)
