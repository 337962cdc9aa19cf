"""Pose keypoints -> chat LLM (gloss-free translation): the chat kind with a pose encoder whose outputs are soft
tokens in the prompt (slt_hydra/pose_model.py says how). The poses were read and checked before loading
(slt_hydra/pose.py); the kind is built around them (``kind_for(cfg, poses)``).

Trained: the encoder and projector fully (PEFT's ``modules_to_save``, so they are saved in the adapter), the LLM
through the lora group's adapter (LoRA, or QLoRA with quant=4bit/8bit). The adapter folder also holds
pose_encoder.json: the encoder's settings, which eval.only and a resumed run build it from again.
"""
from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig

from slt_hydra.errors import SetupError
from slt_hydra.generation import generation_kwargs, merged_lora
from slt_hydra.kinds.chat import ChatLLM
from slt_hydra.models import peft_config
from slt_hydra.pose import PoseCorpus
from slt_hydra.pose_model import (
    PromptParts,
    attach_encoder,
    encoder_settings,
    load_encoder_settings,
    soft_tokens,
    trainer_class,
    training_collator,
    translate_poses,
)
from slt_hydra.precision import autocast as precision_autocast
from slt_hydra.training import score_target_positions_only, sft_config


class PoseLLM(ChatLLM):
    name = "pose_causal_lm"
    merged_inputs = ("the chat prompt's embeddings with the pose encoder's outputs at the {source} place, as "
                     "inputs_embeds; the encoder: slt_hydra.pose_model.load_merged_encoder(OUT_DIR) (docs/pose.md)")

    def __init__(self, corpus: PoseCorpus | None = None):
        self.corpus = corpus
        self.settings: dict | None = None

    def load(self, cfg, source):
        model, tokenizer = super().load(cfg, source)
        if self.corpus is not None:
            self.settings = encoder_settings(cfg.pose, self.corpus.feature_dim, model.config.hidden_size,
                                             self.corpus.layout)
            attach_encoder(model, self.settings)
        return model, tokenizer

    def tags(self, cfg, model):
        settings = self.settings or {}
        return {**super().tags(cfg, model), "input": "pose", "pose_layout": str(settings.get("read_layout")),
                "pose_parts": ",".join(cfg.pose.parts), "pose_feature_dim": str(settings.get("feature_dim")),
                "pose_encoder_params": str(sum(p.numel() for p in model.pose_encoder.parameters()))
                if hasattr(model, "pose_encoder") else "none"}

    def training_arguments(self, cfg: DictConfig, output_dir: Path):
        # our collator builds input_ids/labels around the soft tokens; TRL must keep the pose_id column for it
        return sft_config(cfg, output_dir, dataset_kwargs={"skip_prepare_dataset": True},
                          remove_unused_columns=False)

    def trainer(self, cfg, model, tokenizer, splits, args, evaluate_dev, callbacks):
        import datasets

        score_target_positions_only()
        parts = PromptParts(tokenizer, cfg.dataset)
        downsample = cfg.pose.downsample

        def dataset(split):
            rows = {"pose_id": [], "completion_ids": [], "length": []}
            for example in splits[split]:
                ids = parts.completion_ids(example.target)
                prompt = len(parts.prefix) + soft_tokens(self.corpus.frames(example.source), downsample) \
                    + len(parts.suffix)
                if prompt >= cfg.train.max_length:
                    raise SetupError(f"{example.origin}: its prompt is {prompt} tokens with the soft tokens "
                                     f"(train.max_length={cfg.train.max_length}), leaving none for the translation; "
                                     "raise train.max_length or pose.downsample, or lower pose.max_frames")
                rows["pose_id"].append(example.source)
                rows["completion_ids"].append(ids)
                rows["length"].append(prompt + len(ids))  # for train_sampling_strategy=group_by_length
            return datasets.Dataset.from_dict(rows)

        adapter = copy.deepcopy(peft_config(cfg.lora))
        adapter.modules_to_save = list(adapter.modules_to_save or []) + ["pose_encoder"]
        trainer = trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset("train"),
            eval_dataset=dataset("dev") if evaluate_dev else None,
            data_collator=training_collator(parts, self.corpus, downsample, cfg.train.max_length,
                                            tokenizer.pad_token_id),
            processing_class=tokenizer,
            peft_config=adapter,
            callbacks=callbacks,
        )
        trainer.pose_settings = self.settings
        return trainer

    def after_training(self, trainer, train_seconds: float) -> dict[str, float]:
        frames = trainer.frames_seen
        if trainer.accelerator.num_processes > 1:  # every rank calls this: the frames all of them read
            import torch

            count = torch.tensor([frames], device=trainer.accelerator.device)
            frames = int(trainer.accelerator.reduce(count, reduction="sum").item())
        return {"train_frames": frames, "train_frames_per_second": frames / train_seconds if train_seconds else 0.0}

    def translate(self, cfg, model, tokenizer, sources, batch_size, shots_for=None, on_batch=None):
        parts = PromptParts(tokenizer, cfg.dataset)
        kwargs = generation_kwargs(cfg.generate, pad_token_id=tokenizer.pad_token_id)
        with precision_autocast(cfg.hardware), merged_lora(model):  # LoRA folded into fp32 weights (generation.py)
            # the encoder's own downsampling: a reloaded adapter's (pose_encoder.json), whatever pose.* says now
            downsample = (self.settings or {}).get("downsample", cfg.pose.downsample)
            return translate_poses(model, parts, [self.corpus.features[s] for s in sources], downsample,
                                   kwargs, batch_size, on_batch)

    def attach_adapter(self, model, adapter_dir: Path):
        """The saved encoder's settings first (a fresh encoder of that shape), then the adapter, which holds the
        encoder's trained weights (modules_to_save) along with the LoRA matrices."""
        settings = load_encoder_settings(adapter_dir)
        if self.corpus is not None and settings["feature_dim"] != self.corpus.feature_dim:
            raise SetupError(f"{adapter_dir} was trained on {settings['feature_dim']} values per frame "
                             f"({settings['read_layout']}, parts {settings['parts']}, dims {settings['dims']}); "
                             f"this corpus gives {self.corpus.feature_dim}: set pose.parts/pose.dims as it was")
        self.settings = settings
        attach_encoder(model, settings)
        return super().attach_adapter(model, adapter_dir)
