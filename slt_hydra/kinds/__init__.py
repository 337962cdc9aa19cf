"""Model kinds: what differs between a decoder-only chat LLM, an encoder-decoder and a pose-conditioned LLM. Each
kind loads its model, builds its Trainer and translates (the interface: kinds/base.py); ``run.execute`` tells the
rest of the story once (eval-only, zero-shot, train, save, translate, score, log). ``kind_for`` is the one place
that picks a kind.
"""
from __future__ import annotations

from omegaconf import DictConfig

from slt_hydra.kinds.base import ModelKind
from slt_hydra.kinds.chat import ChatLLM
from slt_hydra.kinds.pose import PoseLLM
from slt_hydra.kinds.seq2seq import Seq2SeqLM
from slt_hydra.pose import PoseCorpus

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (ChatLLM(), Seq2SeqLM())}


def kind_for(cfg: DictConfig, poses: PoseCorpus | None = None) -> ModelKind:
    """The kind of model this config trains: model.architecture (causal_lm | seq2seq), or a chat LLM reading
    poses when dataset.input=pose (``poses``: the corpus read by slt_hydra/pose.py)."""
    if cfg.dataset.get("input", "gloss") == "pose":
        return PoseLLM(poses)
    return KINDS[cfg.model.get("architecture", "causal_lm")]
