"""bitsandbytes' CPU inference packing of 4-bit weights (AVX512-BF16 CPUs) must not reach training.

bitsandbytes 0.50 repacks a Linear4bit for its fused CPU kernel the first time the layer runs in eval mode without
gradients, and that kernel has no backward. A QLoRA run translates (zero-shot) and computes dev loss before and
while it trains, so without ``models.cpu_4bit_inference_packing`` its training gradients would be wrong on such CPUs.
"""
from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from slt_hydra.models import cpu_4bit_inference_packing, load_causal_lm, locate_model


def load_4bit(tiny_model, tmp_path):
    cfg = compose_config(["model=local", f"model.path={tiny_model}", "model.params_b=0.0035", "quant=4bit",
                          "hardware=cpu"], tmp_path)
    model, _ = load_causal_lm(cfg, locate_model(cfg.model, cfg.cache_dir))
    return model


def packed(model) -> list[str]:
    return [name for name, m in model.named_modules()
            if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]


def input_gradient(model, after_eval: bool) -> torch.Tensor:
    """The gradient of a loss w.r.t. the input embeddings: it flows back through every frozen 4-bit layer."""
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    if after_eval:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)  # what a zero-shot translation or a dev-loss pass does first
    model.train()
    embeds = model.get_input_embeddings()(ids).detach().float().requires_grad_(True)
    model(inputs_embeds=embeds, labels=ids).loss.backward()
    return embeds.grad


def test_a_training_job_keeps_the_4bit_gradient_after_an_eval_pass(tiny_model, tmp_path):
    reference = input_gradient(load_4bit(tiny_model, tmp_path / "a"), after_eval=False)
    model = load_4bit(tiny_model, tmp_path / "b")
    assert cpu_4bit_inference_packing(model, enabled=False) > 0  # every Linear4bit, on any CPU
    gradient = input_gradient(model, after_eval=True)
    assert packed(model) == []
    assert gradient.abs().sum() > 0
    torch.testing.assert_close(gradient, reference)
    cpu_4bit_inference_packing(model, enabled=True)  # after training: bitsandbytes' own choice again
    from bitsandbytes.nn.modules import has_avx512bf16

    assert all(m.support_avx512bf16_for_cpu == has_avx512bf16() for m in model.modules()
               if hasattr(m, "support_avx512bf16_for_cpu"))


def test_without_it_bitsandbytes_repacks_on_an_avx512_bf16_cpu(tiny_model, tmp_path):
    from bitsandbytes.nn.modules import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    model = load_4bit(tiny_model, tmp_path)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 9]]))
    assert packed(model), "bitsandbytes no longer repacks after an eval pass: cpu_4bit_inference_packing may go"
    cpu_4bit_inference_packing(model, enabled=False)  # unpacks what was packed
    assert packed(model) == []
