"""The pose encoder and how its output enters a chat LLM as soft tokens (gloss-free translation).

Per frame, a linear embedding of the keypoints; a strided convolution that merges ``pose.downsample`` frames into
one step; ``pose.layers`` transformer layers with learned positions; a projector (two linear layers, as LLaVA's)
to the LLM's hidden size. The chat prompt is the gloss path's (``data.build_messages``) with a placeholder where
``{source}`` goes; the placeholder becomes ``ceil(frames / downsample)`` positions whose input embeddings are the
encoder's outputs, passed to the LLM as ``inputs_embeds``.

Training uses TRL's SFTTrainer with its own collator, as TRL's vision-language path does, with two differences:
transformers has no model class that takes keypoints (a VLM's processor and ``pixel_values``), so the encoder is
a submodule of the LLM (``pose_encoder``) that PEFT trains fully and saves in the adapter (``modules_to_save``),
and the trainer computes ``inputs_embeds`` before TRL's loss (``compute_loss``), so TRL's fused loss on the
translation tokens, its metrics and its PEFT/QLoRA handling stay as they are. The encoder is attached after the
LLM is loaded, so bitsandbytes never quantizes it.

torch is imported inside functions (it is not needed to check a config); the classes are built once on first use.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from slt_hydra.data import build_messages
from slt_hydra.errors import SetupError

PLACEHOLDER = "<|pose|>"  # stands for the soft tokens in the rendered prompt; never tokenized
ENCODER_FILE = "pose_encoder.json"  # beside the adapter: what the encoder was built with and reads
ENCODER_WEIGHTS = "pose_encoder.safetensors"  # beside a merged model (slt_hydra.merge): the trained encoder


def soft_tokens(frames: int, downsample: int) -> int:
    return math.ceil(frames / downsample)


def encoder_settings(pose_cfg: Any, feature_dim: int, out_dim: int, layout: str) -> Dict[str, Any]:
    """What building the encoder needs, saved as pose_encoder.json beside the adapter."""
    keys = ("hidden", "layers", "heads", "downsample", "dropout", "max_frames", "parts", "dims", "normalize", "layout")
    settings = {key: (list(pose_cfg[key]) if key == "parts" else pose_cfg[key]) for key in keys}
    return {**settings, "feature_dim": feature_dim, "out_dim": out_dim, "read_layout": layout}


@functools.cache
def encoder_class():
    import torch
    from torch import nn

    class PoseEncoder(nn.Module):
        def __init__(self, feature_dim: int, out_dim: int, hidden: int = 256, layers: int = 2, heads: int = 4,
                     downsample: int = 4, dropout: float = 0.1, max_frames: int = 512, **_):
            super().__init__()
            self.downsample = downsample
            self.frame = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.LayerNorm(hidden))
            self.merge = nn.Conv1d(hidden, hidden, kernel_size=downsample, stride=downsample)
            self.positions = nn.Embedding(soft_tokens(max_frames, downsample), hidden)
            nn.init.normal_(self.positions.weight, std=0.02)  # N(0, 1) by default: it would drown the keypoints
            layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
            self.project = nn.Sequential(nn.Linear(hidden, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

        def forward(self, frames, frame_mask):
            """frames (batch, F, feature_dim) with F a multiple of downsample, frame_mask (batch, F) ->
            (batch, F / downsample, out_dim) and the mask of the steps that hold frames."""
            # in the weights' dtype: fp32 as attached, bf16 once TRL casts a QLoRA run's trainable parameters
            x = self.frame(frames.to(self.merge.weight.dtype)) * frame_mask.unsqueeze(-1)
            x = self.merge(x.transpose(1, 2)).transpose(1, 2)
            steps = frame_mask.view(frame_mask.shape[0], -1, self.downsample).any(-1)
            x = x + self.positions(torch.arange(x.shape[1], device=x.device))
            if self.layers is not None:
                x = self.layers(x, src_key_padding_mask=~steps)
            return self.project(x), steps

    return PoseEncoder


def build_encoder(settings: Dict[str, Any]):
    return encoder_class()(**settings)


def attach_encoder(model, settings: Dict[str, Any]):
    """A fresh encoder as ``model.pose_encoder`` (fp32, on the model's device); PEFT's modules_to_save trains it."""
    import torch

    device = next(model.parameters()).device
    model.pose_encoder = build_encoder(settings).to(device=device, dtype=torch.float32)
    return model.pose_encoder


def pose_encoder_of(model):
    """The encoder inside an LLM, a PeftModel (its trained copy: PEFT's wrapper dispatches) or a wrapped model."""
    while not hasattr(model, "pose_encoder"):
        for attr in ("module", "base_model", "model"):  # DDP/accelerate, PeftModel, LoraModel
            if hasattr(model, attr) and getattr(model, attr) is not model:
                model = getattr(model, attr)
                break
        else:
            raise AttributeError("this model has no pose_encoder: it was not built for pose input")
    return model.pose_encoder


# --------------------------------------------------------------------------- prompts and batches


class PromptParts:
    """The chat prompt around the soft tokens, tokenized once: prefix ids, suffix ids, and a target's ids."""

    def __init__(self, tokenizer, dataset_cfg):
        self.tokenizer = tokenizer
        self.messages = build_messages(PLACEHOLDER, dataset_cfg)
        prompt = tokenizer.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=False)
        if prompt.count(PLACEHOLDER) != 1:
            raise ValueError(f"dataset.prompt must hold {{source}} once: it is where the signing goes ({prompt!r})")
        self.prompt_text = prompt
        before, after = prompt.split(PLACEHOLDER)
        self.prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
        self.suffix = tokenizer(after, add_special_tokens=False)["input_ids"]

    def completion_ids(self, target: str) -> List[int]:
        """The assistant turn as the chat template ends it (e.g. "...<|im_end|>"), as TRL's prompt-completion."""
        full = self.tokenizer.apply_chat_template(self.messages + [{"role": "assistant", "content": target}],
                                                  tokenize=False)
        completion = full[len(self.prompt_text):] if full.startswith(self.prompt_text) else target
        return self.tokenizer(completion, add_special_tokens=False)["input_ids"]


def pose_batch(poses: Sequence[Any], downsample: int):
    """Frames padded to the batch's longest (a multiple of downsample): (batch, F, dim) and its mask."""
    import torch

    longest = max(len(p) for p in poses)
    longest = soft_tokens(longest, downsample) * downsample
    frames = torch.zeros(len(poses), longest, poses[0].shape[1])
    mask = torch.zeros(len(poses), longest, dtype=torch.bool)
    for i, pose in enumerate(poses):
        frames[i, :len(pose)] = torch.from_numpy(pose)
        mask[i, :len(pose)] = True
    return frames, mask


def training_collator(parts: PromptParts, corpus, downsample: int, max_length: int, pad_id: int) -> Callable:
    """Rows {pose_id, completion_ids} -> input_ids (soft positions hold pad_id, overwritten), attention_mask,
    labels (-100 over the prompt and the soft tokens), soft_mask, pose_frames, frame_mask. Right-padded."""
    import torch

    def collate(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        sequences, labels, soft = [], [], []
        for row in rows:
            n = soft_tokens(corpus.frames(row["pose_id"]), downsample)
            prompt = parts.prefix + [pad_id] * n + parts.suffix
            ids = (prompt + list(row["completion_ids"]))[:max_length]
            sequences.append(ids)
            labels.append(([-100] * len(prompt) + list(row["completion_ids"]))[:max_length])
            soft.append([False] * len(parts.prefix) + [True] * n + [False] * (len(ids) - len(parts.prefix) - n))
        width = max(len(ids) for ids in sequences)
        batch = {
            "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in sequences]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
            "soft_mask": torch.tensor([s[:width] + [False] * (width - len(s)) for s in soft]),
        }
        batch["pose_frames"], batch["frame_mask"] = pose_batch([corpus.features[r["pose_id"]] for r in rows],
                                                               downsample)
        return batch

    return collate


def embed_with_poses(model, inputs: Dict[str, Any]) -> Dict[str, Any]:
    """The batch with ``inputs_embeds`` (token embeddings, the encoder's outputs at the soft positions) in place of
    input_ids and the pose tensors."""
    inputs = dict(inputs)
    soft_mask, frames, frame_mask = inputs.pop("soft_mask"), inputs.pop("pose_frames"), inputs.pop("frame_mask")
    embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
    encoded, steps = pose_encoder_of(model)(frames, frame_mask)
    # the soft positions, in order, are the encoder's steps that hold frames (the collator counted them alike)
    embeds = embeds.masked_scatter(soft_mask.unsqueeze(-1), encoded[steps].to(embeds.dtype))
    inputs["inputs_embeds"] = embeds
    return inputs


@functools.cache
def trainer_class():
    from trl import SFTTrainer

    class PoseSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer, with the pose encoder's output put into the prompt before its loss, and the frames it
        read counted (train_frames_per_second)."""

        frames_seen = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.frames_seen += int(inputs["frame_mask"].sum())
            # the embeddings from the model inside DDP's wrapper (which has no get_input_embeddings); the LLM's
            # forward still goes through the wrapper, whose backward hooks average every gradient, the encoder's too
            embedded = embed_with_poses(self.accelerator.unwrap_model(model), inputs)
            return super().compute_loss(model, embedded, return_outputs, num_items_in_batch)

        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)  # the adapter, the encoder's weights in it (modules_to_save)
            save_encoder_settings(Path(output_dir or self.args.output_dir), self.pose_settings)

    return PoseSFTTrainer


# --------------------------------------------------------------------------- translation


def translate_poses(model, parts: PromptParts, poses: Sequence[Any], downsample: int, generate_kwargs: dict,
                    batch_size: int, on_batch: Callable[[int], None] | None = None) -> List[str]:
    """One translation per pose, in order: left-padded prompt embeddings with the soft tokens, batched by length,
    ``generate(inputs_embeds=...)`` (which returns only the new tokens)."""
    import torch

    tokenizer = parts.tokenizer
    order = sorted(range(len(poses)), key=lambda i: len(poses[i]))
    outputs = [""] * len(poses)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    encoder = pose_encoder_of(model)
    with torch.inference_mode():  # the chat turn around the soft tokens, the same in every prompt: embedded once
        prefix = embed(torch.tensor(parts.prefix, device=device))
        suffix = embed(torch.tensor(parts.suffix, device=device))
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            frames, frame_mask = pose_batch([poses[i] for i in batch], downsample)
            with torch.inference_mode():
                encoded, steps = encoder(frames.to(device), frame_mask.to(device))
                rows = [torch.cat([prefix, row[keep].to(embed.weight.dtype), suffix])
                        for row, keep in zip(encoded, steps)]
                width = max(len(r) for r in rows)
                embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=rows[0].dtype, device=device)
                mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
                for i, r in enumerate(rows):  # left padding: generation continues from the right edge
                    embeds[i, width - len(r):] = r
                    mask[i, width - len(r):] = 1
                new_tokens = model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = text.strip()
            if on_batch:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    return outputs


def save_encoder_settings(directory: Path, settings: Dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ENCODER_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def load_encoder_settings(directory: Path) -> Dict[str, Any]:
    path = Path(directory) / ENCODER_FILE
    if not path.is_file():
        raise SetupError(f"{path} is missing: {directory} was not saved by a pose-input run (dataset.input=pose); "
                         "point eval.adapter at the adapter/ folder of one")
    return json.loads(path.read_text())


def save_merged_encoder(encoder, directory: Path, settings: Dict[str, Any]) -> None:
    """The trained encoder beside a merged model: its weights (safetensors) and its settings."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights = {key: value.contiguous() for key, value in encoder.state_dict().items()}
    save_file(weights, str(directory / ENCODER_WEIGHTS))
    save_encoder_settings(directory, settings)


def load_merged_encoder(directory: Path):
    """The pose encoder saved beside a merged model by slt_hydra.merge, ready to use (eval mode, its dtype)."""
    from safetensors.torch import load_file

    path = Path(directory) / ENCODER_WEIGHTS
    if not path.is_file():
        raise SetupError(f"{path} is missing: {directory} is not a merged pose model (python -m slt_hydra.merge on a "
                         "pose run writes it)")
    weights = load_file(str(path))
    encoder = build_encoder(load_encoder_settings(directory)).to(next(iter(weights.values())).dtype)
    encoder.load_state_dict(weights)
    return encoder.eval()
