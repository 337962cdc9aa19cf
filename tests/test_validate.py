"""The cross-group rules: each invalid combination is refused with a message naming the fix."""
from __future__ import annotations

import pytest

from slt_hydra import memory, validate
from slt_hydra.config import resolve_hardware
from slt_hydra.machine import Machine, auto_hardware_profile

CPU_NO_BF16 = Machine(cuda=False, gpu_name=None, gpu_memory_gb=None, gpu_bf16=False, cpu_bf16=False, ram_gb=24.0)
CPU_BF16 = Machine(cuda=False, gpu_name=None, gpu_memory_gb=None, gpu_bf16=False, cpu_bf16=True, ram_gb=24.0)
T4 = Machine(cuda=True, gpu_name="Tesla T4", gpu_memory_gb=15.0, gpu_bf16=False, cpu_bf16=False, ram_gb=24.0)
A100 = Machine(cuda=True, gpu_name="A100-SXM4-80GB", gpu_memory_gb=79.3, gpu_bf16=True, cpu_bf16=False, ram_gb=200.0)


def problems(make_cfg, machine, *overrides):
    cfg = make_cfg(*overrides)
    resolve_hardware(cfg, machine)
    return validate.check(cfg, machine)


@pytest.mark.parametrize("machine,overrides,needle", [
    (CPU_NO_BF16, ["quant=bf16", "hardware=cpu"], "without native bf16"),
    (CPU_NO_BF16, ["quant=bf16"], "without native bf16"),  # hardware=auto resolves to cpu first
    (CPU_NO_BF16, ["quant=fp16", "hardware=cpu"], "fp16 on CPU"),
    (CPU_NO_BF16, ["quant=4bit", "lora=none"], "quantized base weights cannot be trained"),
    (CPU_NO_BF16, ["quant=8bit", "lora=none"], "lora=default"),
    (CPU_NO_BF16, ["hardware=gpu_24gb"], "needs a CUDA GPU"),
    (CPU_NO_BF16, ["hardware=cpu", "hardware.optim=paged_adamw_8bit"], "needs CUDA"),
    (T4, ["hardware=gpu_24gb"], "has no bf16"),
    (CPU_NO_BF16, ["train.eval_strategy=no"], "load_best_model_at_end"),
    (CPU_NO_BF16, ["train.save_strategy=no"], "train.save_strategy=epoch"),
    (CPU_NO_BF16, ["train.early_stopping_patience=2", "train.load_best_model_at_end=false"], "early_stopping"),
    (CPU_NO_BF16, ["train.eval_strategy=steps", "train.save_strategy=steps"], "train.eval_steps=N"),
    (CPU_NO_BF16, ["generate=sample", "generate.temperature=0"], "temperature > 0"),
    (CPU_NO_BF16, ["eval.objective=test_bleu5"], "eval.objective"),
    (CPU_NO_BF16, ["eval.objective=test_bleu4", "eval.splits=[dev]"], "eval.objective"),
    (CPU_NO_BF16, ["+hf_token=hf_abcdefghijklmnopqrstuvwxyz"], "looks like a secret"),
    (CPU_NO_BF16, ["model=qwen2.5_7b_instruct", "quant=none"], "needs about"),  # 7.6B fp32 LoRA > 24 GB RAM
    (T4, ["model=qwen2.5_7b_instruct", "quant=fp16"], "quant=4bit"),  # 16 GB is not enough for 16-bit 7B
])
def test_refused_with_the_fix(make_cfg, machine, overrides, needle):
    found = problems(make_cfg, machine, *overrides)
    assert any(needle in p for p in found), found


@pytest.mark.parametrize("machine,overrides", [
    (CPU_NO_BF16, []),
    (CPU_NO_BF16, ["quant=4bit"]),
    (CPU_NO_BF16, ["quant=8bit", "lora=large"]),
    (CPU_NO_BF16, ["lora=none"]),
    (CPU_NO_BF16, ["model=qwen2.5_7b_instruct", "quant=4bit"]),  # fits in 24 GB: the cache check decides
    (CPU_BF16, ["quant=bf16", "hardware=cpu"]),  # a CPU with AMX/AVX512-BF16 may use bf16
    (T4, ["model=qwen2.5_7b_instruct", "quant=4bit", "hardware=gpu_16gb"]),
    (A100, ["model=qwen2.5_7b_instruct", "quant=bf16"]),
    (CPU_NO_BF16, ["generate=beam"]),
    (CPU_NO_BF16, ["train.max_steps=3", "train.eval_strategy=no", "train.save_strategy=no",
                   "train.load_best_model_at_end=false"]),
])
def test_valid_combinations_pass(make_cfg, machine, overrides):
    assert problems(make_cfg, machine, *overrides) == []


def test_all_problems_are_reported_at_once(make_cfg):
    found = problems(make_cfg, CPU_NO_BF16, "quant=fp16", "lora=none", "generate=sample", "generate.temperature=0")
    assert len(found) == 2, found  # fp16-on-CPU and the temperature, both in one go
    assert any("fp16" in p for p in found) and any("temperature" in p for p in found)


@pytest.mark.parametrize("machine,profile", [(CPU_NO_BF16, "cpu"), (T4, "gpu_16gb"), (A100, "gpu_80gb"),
                                             (Machine(True, "RTX 4090", 23.6, True, False, 64.0), "gpu_24gb")])
def test_hardware_auto_picks_the_profile(make_cfg, machine, profile):
    assert auto_hardware_profile(machine) == profile
    cfg = make_cfg()
    resolve_hardware(cfg, machine)
    assert cfg.hardware.name == profile and cfg.hardware.device in ("cpu", "cuda")


def test_memory_estimate_orders_precisions(make_cfg):
    # The guides' conditions (batch 4, 512 tokens, gradient checkpointing): the planner counts activations too,
    # so gpu_80gb's own batch 16 without checkpointing would be a different (much larger) figure.
    guides = ["hardware.per_device_train_batch_size=4", "hardware.per_device_eval_batch_size=4",
              "hardware.gradient_checkpointing=true", "train.max_length=512"]
    sizes = {q: memory.estimate_memory_gb(make_cfg("model=qwen2.5_7b_instruct", "hardware=gpu_80gb", f"quant={q}",
                                                     *guides))
             for q in ("4bit", "8bit", "bf16", "none")}
    assert sizes["4bit"] < sizes["8bit"] < sizes["bf16"] == sizes["none"]  # gpu_80gb computes in bf16
    assert 4 < sizes["4bit"] < 10 and 14 < sizes["bf16"] < 25  # the guides: ~10 GB for 4-bit 7B + LoRA


def test_hardware_overrides_survive_auto_resolution(make_cfg):
    cfg = make_cfg("hardware.gradient_checkpointing=true", "hardware.per_device_train_batch_size=2")
    resolve_hardware(cfg, T4, overrides=["hardware.gradient_checkpointing=true",
                                         "hardware.per_device_train_batch_size=2"])
    assert cfg.hardware.name == "gpu_16gb" and cfg.hardware.optim == "paged_adamw_8bit"  # from the profile
    assert cfg.hardware.per_device_train_batch_size == 2 and cfg.hardware.gradient_checkpointing  # still yours
