"""What-if for the training benchmark: an SFTTrainer whose loss sends only the target positions through the LM head.

TRL 1.16 replaces the LM head by a chunked log-prob kernel. On CUDA/XPU (Triton) it scores only the positions
whose label is not -100; elsewhere (``_use_triton`` is False, so on every CPU) it scores *every* position,
prompt and padding included, over the whole 49k vocabulary, forward and backward, plus entropy and top-1
accuracy. Our prompts are ~80 % of each sequence, so most of that work is thrown away. This subclass runs the
backbone, takes the hidden states at the target positions only, and computes the same loss (sum of the targets'
NLL / ``num_items_in_batch``) and the same logged metrics (entropy, mean token accuracy over the targets).

It is NOT what `python -m slt_hydra` runs: the benchmark reports it as a what-if row (``ours_target_head``) to
show what a change outside ``sft_config`` would buy. Anything it does not cover falls back to TRL's own loss.
"""
from __future__ import annotations

from trl import SFTTrainer


class TargetHeadSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch
        import torch.nn.functional as F

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        text_config = base.config.get_text_config()
        plain = (not return_outputs and self.args.loss_type == "nll" and self.label_smoother is None
                 and self.compute_loss_func is None and not self.aux_loss_enabled
                 and "labels" in inputs and inputs["labels"].device.type == "cpu"
                 and getattr(text_config, "final_logit_softcapping", None) is None
                 and getattr(text_config, "logit_scale", None) in (None, 1.0))
        if not plain:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        kwargs["use_cache"] = False
        hidden = base.base_model(**kwargs).last_hidden_state  # LoRA layers are injected in place: adapters run
        targets = labels[:, 1:]
        mask = targets != -100
        logits = base.get_output_embeddings()(hidden[:, :-1][mask]).float()  # [targets, vocab]: small
        chosen = targets[mask]
        nll = F.cross_entropy(logits, chosen, reduction="sum")
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = nll / torch.as_tensor(count).clamp(min=1)
        with torch.no_grad():  # TRL's per-step metrics, on the same (target) tokens
            log_p = logits.log_softmax(-1)
            n = max(int(mask.sum()), 1)
            self._metrics[mode]["entropy"].append(float(-(log_p.exp() * log_p).sum(-1).sum()) / n)
            self._metrics[mode]["mean_token_accuracy"].append(float((logits.argmax(-1) == chosen).sum()) / n)
        if mode == "train":
            real = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["position_ids"].size(1)
            self._total_train_tokens += int(real)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
