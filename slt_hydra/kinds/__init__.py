"""Model kinds: what differs between a decoder-only chat LLM and an encoder-decoder (and, next, a pose-conditioned
LLM). Each kind loads its model, builds its Trainer and translates (the interface: kinds/base.py); ``run.execute``
tells the rest of the story once (eval-only, zero-shot, train, save, translate, score, log). ``kind_for`` is the
one place that picks a kind.
"""
from __future__ import annotations

from omegaconf import DictConfig

from slt_hydra.kinds.base import ModelKind
from slt_hydra.kinds.chat import ChatLLM
from slt_hydra.kinds.seq2seq import Seq2SeqLM

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (ChatLLM(), Seq2SeqLM())}


def kind_for(cfg: DictConfig) -> ModelKind:
    """The kind of model this config trains: model.architecture (causal_lm | seq2seq)."""
    return KINDS[cfg.model.get("architecture", "causal_lm")]
