"""Sequence-to-sequence baselines (T5, NLLB) through the same groups, data, metrics and MLflow run as the LLMs.

``model.architecture=seq2seq`` sends ``run.execute`` here after the common tags: ``AutoModelForSeq2SeqLM``
(bitsandbytes 4/8-bit from the quant group), a PEFT LoRA adapter (task SEQ_2_SEQ_LM, from the lora group, with
Llama-style target names read as the model's own: T5's q/k/v/o, NLLB's out_proj), transformers' Seq2SeqTrainer
with the same Trainer arguments as TRL's SFTConfig (``run.trainer_arguments``), and batched generation from
encoder inputs (``translate``). Results carry the LLM path's metric names, so reports and sweeps compare both.

What the encoder reads: ``model.source_prefix`` (T5's task prefix, with {source_lang}/{target_lang} from the
dataset) + the gloss sequence; the decoder learns the reference text, ending with EOS. NLLB also takes FLORES-200
language codes (``language_codes``): glosses have no code of their own, and they are written with the words of
the spoken language (DGS glosses in German, ASL glosses in English), so both sides get the spoken language's code
unless ``model.src_lang``/``model.tgt_lang`` say otherwise.

No torch import at module level: ``validate`` reads ``language_codes`` before anything heavy is loaded.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from slt_hydra.data import Example, _langs
from slt_hydra.schema import translation_batch_size

log = logging.getLogger("slt_hydra")

# FLORES-200 codes of the spoken languages of sign-language corpora, keyed by dataset.target_lang.
LANG_CODES = {
    "English": "eng_Latn", "German": "deu_Latn", "Chinese": "zho_Hans", "French": "fra_Latn", "Spanish": "spa_Latn",
    "Italian": "ita_Latn", "Greek": "ell_Grek", "Turkish": "tur_Latn", "Dutch": "nld_Latn", "Polish": "pol_Latn",
    "Russian": "rus_Cyrl", "Portuguese": "por_Latn", "Arabic": "arb_Arab", "Hindi": "hin_Deva", "Japanese": "jpn_Jpan",
    "Korean": "kor_Hang",
}
CODED_FAMILIES = ("nllb",)  # tokenizers that take src_lang/tgt_lang and a forced first target token


def is_seq2seq(cfg: DictConfig) -> bool:
    return cfg.model.get("architecture", "causal_lm") == "seq2seq"


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
    source_lang, target_lang = _langs(cfg.dataset)
    return prefix.format(source_lang=source_lang, target_lang=target_lang)


def load_model_and_tokenizer(cfg: DictConfig, source):
    """Tokenizer + AutoModelForSeq2SeqLM at the configured precision/quantization (as models.load_model_and_tokenizer).

    The prefix goes into model.config.prefix (transformers' place for it, saved with the model) and NLLB's target
    code into generation_config.forced_bos_token_id, so ``translate`` and a merged model need nothing else."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from slt_hydra.errors import SetupError
    from slt_hydra.models import quantization_config, torch_dtype

    if source.kind == "gguf":
        raise SetupError(f"model={cfg.model.name}: the embedded GGUF is a decoder-only model; model.architecture="
                         "seq2seq needs an encoder-decoder (model=t5_base, model=nllb_200_distilled_600m, or "
                         "model=local model.path=DIR).")
    common = dict(revision=cfg.model.revision if source.kind == "hub" else None,
                  trust_remote_code=cfg.model.trust_remote_code, local_files_only=source.local)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **common)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    codes = language_codes(cfg)
    if codes:
        tokenizer.src_lang, tokenizer.tgt_lang = codes

    kwargs = dict(dtype=torch_dtype(cfg.quant.weights_dtype or cfg.hardware.dtype), **common)
    quantization = quantization_config(cfg.quant, cfg.hardware.dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if cfg.hardware.device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForSeq2SeqLM.from_pretrained(source.location, **kwargs)
    model.config.prefix = source_prefix(cfg)
    if codes:
        model.generation_config.forced_bos_token_id = tokenizer.convert_tokens_to_ids(codes[1])
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


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


def translate(model, tokenizer, sources: Sequence[str], generate_cfg: DictConfig, batch_size: int) -> list[str]:
    """Translate ``sources`` in batches (prefix from model.config.prefix), one string per source, in order.

    Sorted by length so each batch pads little; encoder inputs are right-padded (the attention mask covers it)."""
    import torch

    from slt_hydra.translate import generation_kwargs

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
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True).to(device)
            with torch.inference_mode():
                generated = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
            for i, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i] = text.strip()
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs


def _trainer_class():
    from transformers import Seq2SeqTrainer

    class Trainer(Seq2SeqTrainer):
        """Counts source + target tokens as seen, as the LLM path counts prompt + completion tokens."""

        def _track_num_input_tokens(self, inputs):
            super()._track_num_input_tokens(inputs)  # the encoder's real tokens (attention mask)
            if self.args.include_num_input_tokens_seen != "no" and "labels" in inputs:
                self.state.num_input_tokens_seen += int((inputs["labels"] != -100).sum())

    return Trainer


def execute(cfg: DictConfig, prepared, output_dir: Path, started: float, checkpoint: str | None = None,
            done_before: dict | None = None):
    """The seq2seq run inside run.execute's MLflow run: load, zero-shot, train, translate, score, save.

    ``checkpoint``/``done_before``: a resumed run's checkpoint and the metrics it logged before (run.execute)."""
    import json

    import mlflow
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainingArguments

    from slt_hydra.models import peft_config
    from slt_hydra.run import (objective_value, peak_memory_gb, score_translations, train_and_measure,
                               trainer_arguments, write_predictions)

    t = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg, prepared.source)
    mlflow.log_metric("model_load_seconds", time.perf_counter() - t)
    mlflow.set_tags({"architecture": "seq2seq", "param_count": str(sum(p.numel() for p in model.parameters())),
                     "source_prefix": model.config.prefix})
    codes = language_codes(cfg)
    if codes:
        mlflow.set_tags({"src_lang": codes[0], "tgt_lang": codes[1]})
    mlflow.log_metric("model_memory_gb", model.get_memory_footprint() / 2**30)
    log.info("loaded %s (%s, seq2seq) in %.1fs", cfg.model.name, prepared.source.location, time.perf_counter() - t)

    splits = prepared.splits
    batch_size = translation_batch_size(cfg)
    logged: dict[str, float] = {}

    def log_metrics(values: dict[str, float]) -> None:
        logged.update(values)
        mlflow.log_metrics(values)

    def translate_and_score(generator, split: str, prefix: str) -> list[str]:
        t0 = time.perf_counter()
        examples = splits[split]
        hypotheses = translate(generator, tokenizer, [e.source for e in examples], cfg.generate, batch_size)
        score_translations(cfg, examples, hypotheses, time.perf_counter() - t0, prefix + split, log_metrics)
        return hypotheses

    def score_splits(generator, zero_shot: list[str] | None = None) -> None:
        for split in cfg.eval.splits:
            hypotheses = translate_and_score(generator, split, "")
            path = output_dir / f"predictions_{split}.csv"
            write_predictions(path, splits[split], hypotheses, zero_shot if split == "test" else None)
            mlflow.log_artifact(str(path), "predictions")
            if split == "test":
                mlflow.log_table({"source": [e.source for e in splits[split]],
                                  "reference": [e.target for e in splits[split]],
                                  "hypothesis": hypotheses, **({"zero_shot": zero_shot} if zero_shot else {})},
                                 artifact_file="predictions/test_table.json")

    def finish():
        wall = time.perf_counter() - started
        log_metrics({"wall_seconds": wall, "peak_memory_gb": peak_memory_gb(cfg.hardware.device)})
        objective = objective_value(cfg, logged)
        log.info("done in %.0fs; %s = %s; outputs in %s", wall, cfg.eval.objective, objective, output_dir)
        return objective

    if cfg.eval.only:  # the base model, or a saved adapter (k-shot prompts are refused by validate)
        mlflow.set_tags({"mode": "eval_only", "shots": "0", "adapter": str(cfg.eval.adapter)})
        generator = model
        if cfg.eval.adapter:
            from peft import PeftModel

            generator = PeftModel.from_pretrained(model, str(Path(cfg.eval.adapter).expanduser()))
        score_splits(generator)
        return finish()
    mlflow.set_tag("mode", "train")

    done_before = done_before or {}
    zero_shot, zero_shot_file = None, output_dir / "zeroshot_test.json"
    if cfg.eval.zero_shot and "zeroshot_test_bleu4" in done_before and zero_shot_file.is_file():
        zero_shot = json.loads(zero_shot_file.read_text())  # resumed: scored before the interruption
    elif cfg.eval.zero_shot:
        zero_shot = translate_and_score(model, "test", "zeroshot_")
        zero_shot_file.write_text(json.dumps(zero_shot, ensure_ascii=False))

    adapter = peft_config(cfg.lora, task_type="SEQ_2_SEQ_LM", family=cfg.model.family)
    if adapter is not None:
        from peft import get_peft_model

        model = get_peft_model(model, adapter)
        if cfg.hardware.gradient_checkpointing:  # as TRL does: checkpointed frozen inputs still need a grad path
            model.enable_input_require_grads()
    evaluate_dev = cfg.train.eval_strategy != "no"
    prefix = model.config.prefix or ""
    dataset = lambda split: tokenize(splits[split], tokenizer, prefix, cfg.train.max_length)  # noqa: E731
    callbacks = []
    if cfg.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = _trainer_class()(
        model=model,
        args=Seq2SeqTrainingArguments(**trainer_arguments(cfg, output_dir), predict_with_generate=False),
        train_dataset=dataset("train"),
        eval_dataset=dataset("dev") if evaluate_dev else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    mlflow.set_tag("trainable_params", str(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)))
    train_and_measure(trainer, evaluate_dev, checkpoint, done_before, log_metrics)

    score_splits(trainer.model, zero_shot)

    adapter_dir = output_dir / ("adapter" if cfg.lora.enabled else "model")
    trainer.save_model(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    if cfg.mlflow.log_adapter and cfg.lora.enabled:
        mlflow.log_artifacts(str(adapter_dir), "adapter")
    return finish()
