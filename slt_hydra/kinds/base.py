"""The interface every model kind implements (kinds/__init__.py says what a kind is)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig

from slt_hydra.data import Example
from slt_hydra.models import ModelSource

ShotPicker = Callable[[str], Sequence[Example]]


class ModelKind:
    """The interface; the implementations are ChatLLM (kinds/chat.py), Seq2SeqLM (kinds/seq2seq.py) and PoseLLM
    (kinds/pose.py)."""

    name = ""  # the run's `architecture` tag and model.architecture's value
    auto_class = ""  # the transformers class that loads a merged model of this kind
    merged_inputs = ""  # what a merged model of this kind is given (printed by slt_hydra.merge)

    def load(self, cfg: DictConfig, source: ModelSource):
        """(model, tokenizer) at the configured device, precision and quantization."""
        raise NotImplementedError

    def tags(self, cfg: DictConfig, model) -> dict[str, str]:
        """What the run is tagged with beyond the common tags."""
        return {"architecture": self.name}

    def training_arguments(self, cfg: DictConfig, output_dir: Path):
        """The Trainer's arguments object (training.trainer_arguments in this kind's arguments class)."""
        raise NotImplementedError

    def trainer(self, cfg: DictConfig, model, tokenizer, splits: dict[str, list[Example]], args,
                evaluate_dev: bool, callbacks: list):
        """The Trainer, with the lora group's adapter attached, on the train split (and dev, if evaluated)."""
        raise NotImplementedError

    def after_training(self, trainer, train_seconds: float) -> dict[str, float]:
        """Metrics of this kind's own beyond the common ones (training.train_and_measure), once trained."""
        return {}

    def translate(self, cfg: DictConfig, model, tokenizer, sources: Sequence[str], batch_size: int,
                  shots_for: ShotPicker | None = None, on_batch: Callable[[int], None] | None = None) -> list[str]:
        """One translation per source, in order (``shots_for``: k-shot demonstrations, eval-only runs)."""
        raise NotImplementedError

    def attach_adapter(self, model, adapter_dir: Path):
        """A trained adapter (a run's adapter/ folder) on the loaded base model."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir))
