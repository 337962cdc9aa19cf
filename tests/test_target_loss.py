"""run.score_target_positions_only: TRL's fused LM-head loss scores only the translation's positions on CPU,
with the same loss, gradients and logged metrics as TRL's own full-vocabulary pass over every position."""
from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils

from slt_hydra.training import score_target_positions_only


def fused_model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    return model


def batch(vocab: int):
    """Two right-padded rows whose labels cover only their last few tokens, like a prompt-completion pair."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 8:] = ids[0, 8:]
    labels[1, 6:9] = ids[1, 6:9]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run(model, inputs, rows: list[int], monkeypatch):
    """The fused forward + backward; records how many positions the chunked kernel was given."""
    kernel = trl_utils._ChunkedLogProbFunction
    apply = kernel.apply

    def recording(hidden, *args):
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    model.zero_grad()
    with monkeypatch.context() as patch:
        patch.setattr(kernel, "apply", recording)
        out = model(**inputs, fused_lm_head=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_cpu_loss_scores_only_target_positions_and_changes_nothing(tiny_model, monkeypatch):
    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # restored after the test
    model = fused_model(tiny_model)
    inputs = batch(model.config.vocab_size)
    targets = int((inputs["labels"][:, 1:] != -100).sum())

    full_rows: list[int] = []
    full, full_grads = run(model, inputs, full_rows, monkeypatch)
    score_target_positions_only()
    score_target_positions_only()  # idempotent: a second job in the same process (sweeps) wraps nothing twice
    compact_rows: list[int] = []
    compact, compact_grads = run(model, inputs, compact_rows, monkeypatch)

    assert full_rows == [2 * 11]  # TRL on CPU: every shifted position of both rows, padding included
    assert compact_rows == [targets]  # ours: the labelled positions only
    assert targets < 2 * 11
    assert torch.allclose(compact.loss, full.loss, rtol=1e-6, atol=1e-7)
    mask = compact.label_mask
    assert torch.equal(mask, full.label_mask)
    assert torch.allclose(compact.entropy[mask], full.entropy[mask], rtol=1e-5, atol=1e-6)
    assert torch.equal(compact.is_top1[mask], full.is_top1[mask])
    assert set(compact_grads) == set(full_grads)
    for name, grad in full_grads.items():
        # (summation order differs: compare as vectors)
        assert (compact_grads[name] - grad).norm() <= 1e-5 * grad.norm(), name


def test_devices_with_triton_keep_their_own_test(monkeypatch):
    seen = []
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: seen.append(device.type) or device.type == "xpu")
    score_target_positions_only()
    assert trl_utils._use_triton(torch.device("cpu")) is True
    assert trl_utils._use_triton(torch.device("xpu")) is True
    assert trl_utils._use_triton(torch.device("meta")) is False
    assert seen == ["xpu", "meta"]  # TRL's own test still decides off the CPU
