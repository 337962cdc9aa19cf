"""The model zoo and the memory planner: parameter counts from the arch numbers, the plan CLI, quant=auto."""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from conftest import CONF, ROOT, compose_config
from slt_hydra import memory, validate
from slt_hydra.config import resolve_hardware, weights_kind
from slt_hydra.machine import Machine

MODELS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
CPU = Machine(cuda=False, gpu_name=None, gpu_memory_gb=None, gpu_bf16=False, cpu_bf16=False, ram_gb=24.0)
GPU = Machine(cuda=True, gpu_name="A100", gpu_memory_gb=80.0, gpu_bf16=True, cpu_bf16=False, ram_gb=200.0)
TEMPLATES = {"chatml", "llama3", "llama2", "mistral", "gemma", "phi3", "none"}


def composed(*overrides: str, machine: Machine = CPU):
    cfg = compose_config(list(overrides))
    resolve_hardware(cfg, machine)
    return cfg


@pytest.mark.parametrize("model", MODELS)
def test_parameter_count_matches_the_published_size(model):
    cfg = compose_config([f"model={model}"])
    arch = memory.Arch.from_cfg(cfg.model)
    if arch is None:
        assert model == "local", f"model={model} needs arch numbers (only model=local may go without)"
        pytest.skip("model=local has no arch numbers")
    computed = memory.count_params(arch).total / 1e9
    assert computed == pytest.approx(cfg.model.params_b, rel=0.02), (computed, cfg.model.params_b)


@pytest.mark.parametrize("model", [m for m in MODELS if m != "local"])
def test_every_model_carries_its_metadata(model):
    cfg = compose_config([f"model={model}"])
    m = cfg.model
    assert m.hub_id and m.template_family in TEMPLATES and m.recommended is not None
    family = m.hub_id.split("/")[0]
    assert m.gated == (family in ("meta-llama", "google", "mistralai")), "Llama, Gemma and Mistral repos are gated"
    rec, size = m.recommended, m.params_b
    # The guides' rule by size, as data.
    if size >= 30:
        assert (rec.lora_r, rec.lora_alpha, rec.learning_rate) == (64, 128, 5e-5)
    elif size >= 12:
        assert (rec.lora_r, rec.lora_alpha, rec.learning_rate) == (32, 64, 1e-4)
        assert len(rec.target_modules) > 2, "14B class: attention + MLP"
    elif size >= 6:
        assert (rec.lora_r, rec.lora_alpha) == (16, 32) and rec.learning_rate in (1e-4, 2e-4)
    else:
        assert rec.lora_r in (8, 16) and rec.learning_rate == 3e-4
    # The recommended targets exist in the model (Phi-2's dense, Phi-3's fused qkv_proj/gate_up_proj).
    matched, missing = memory.lora_targets(memory.Arch.from_cfg(m), list(rec.target_modules))
    assert matched and not missing


def test_counts_match_known_exact_figures():
    llama2 = memory.Arch.from_cfg(compose_config(["model=llama2_7b"]).model)
    assert memory.count_params(llama2).total == 6_738_415_616  # Llama-2-7b-hf
    small = compose_config(["model=llama2_7b", "lora=small"])  # r8 on q_proj, v_proj: PEFT's README example
    assert memory.lora_param_count(llama2, small.lora) == 4_194_304
    smol = memory.Arch.from_cfg(compose_config([]).model)
    assert memory.count_params(smol).total == 134_515_008  # numel of the embedded SmolLM2-135M, measured
    qwen = compose_config(["model=qwen2.5_7b_instruct"])
    assert memory.lora_param_count(memory.Arch.from_cfg(qwen.model), qwen.lora) == 10_092_544  # r16 q,k,v,o


def test_nf4_bytes_per_parameter_of_a_big_model():
    cfg = composed("model=qwen2.5_72b", "quant=4bit", "hardware=gpu_80gb")
    plan = memory.plan_memory(cfg)
    quantized, rest = plan.rows[0], plan.rows[1]
    linear_params = float(quantized.what.split("(")[1].split("B)")[0]) * 1e9
    assert 0.5 < quantized.bytes / linear_params < 0.6  # 0.5 + 8-bit absmax per 64 + fp32 per 256 blocks
    assert 0.5 < (quantized.bytes + rest.bytes) / plan.params < 0.6  # embeddings/lm_head stay 16-bit
    no_dq = memory.plan_memory(composed("model=qwen2.5_72b", "quant=4bit", "hardware=gpu_80gb",
                                         "quant.bnb_4bit_use_double_quant=false"))
    assert no_dq.rows[0].bytes / linear_params == pytest.approx(0.5 + 4 / 64, rel=1e-3)


def test_fp32_weights_match_the_measured_footprint():
    # SmolLM2-135M loaded in fp32 on CPU: model.get_memory_footprint() = 538,060,288 bytes (docs/memory.md).
    plan = memory.plan_memory(composed("hardware=cpu"))
    assert plan.rows[0].bytes == pytest.approx(538_060_288, rel=1e-5)


def test_memory_grows_with_batch_and_shrinks_with_checkpointing():
    base = ["model=qwen2.5_7b_instruct", "quant=4bit", "hardware=gpu_24gb"]
    total = lambda *extra: memory.plan_memory(composed(*base, *extra)).total_gb  # noqa: E731
    assert total("hardware.per_device_train_batch_size=16") > total("hardware.per_device_train_batch_size=2")
    assert total("hardware.gradient_checkpointing=false") > total("hardware.gradient_checkpointing=true")
    assert total("lora=large") > total("lora=small")


@pytest.mark.parametrize("overrides", [[], ["pose.hidden=64", "pose.layers=0", "pose.downsample=2", "pose.dims=3",
                                              "pose.parts=[body,face,left_hand,right_hand]"]])
def test_the_planner_counts_the_pose_encoder_as_built(overrides):
    from slt_hydra.pose import planned_feature_dim
    from slt_hydra.pose_model import build_encoder, encoder_settings

    cfg = composed("dataset=demo_pose", *overrides)
    width = planned_feature_dim(cfg.pose)
    built = build_encoder(encoder_settings(cfg.pose, width, 576, "holistic"))
    assert memory.pose_encoder_param_count(cfg.pose, width, 576) == sum(p.numel() for p in built.parameters())
    gloss, pose = memory.plan_memory(composed()), memory.plan_memory(cfg)  # SmolLM2-135M, hidden 576
    (row,) = [r for r in pose.rows if r.what.startswith("pose encoder")]
    assert row.bytes == 4 * memory.pose_encoder_param_count(cfg.pose, width, 576)
    assert pose.total_gb > gloss.total_gb and not any(r.what.startswith("pose encoder") for r in gloss.rows)


def run_plan(*overrides: str, cwd) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slt_hydra.plan", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    return done, time.perf_counter() - started


def test_plan_cli_says_it_fits(tmp_path):
    done, seconds = run_plan("model=qwen2.5_7b_instruct", "quant=4bit", "hardware=gpu_16gb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for row in ("weights: quantized Linear layers", "LoRA adapter", "optimizer state", "activations", "runtime",
                "TOTAL"):
        assert row in done.stdout
    assert "verdict: fits" in done.stdout
    assert seconds < 5, f"the planner took {seconds:.1f}s"
    assert not list(tmp_path.iterdir()), "the planner wrote files (no output directory expected)"


def test_plan_cli_says_it_does_not_fit_and_what_to_change(tmp_path):
    done, _ = run_plan("model=qwen2.5_72b", "quant=none", "hardware=gpu_24gb", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "verdict: does not fit" in done.stdout
    assert "what to change" in done.stdout and "quant=8bit" in done.stdout  # 24 GB+: the guides' 8-bit
    assert "smaller model" in done.stdout  # 72B fits nowhere in 24 GB
    bad, _ = run_plan("model=no_such_model", cwd=tmp_path)
    assert bad.returncode == 2 and "no_such_model" in bad.stderr


def test_plan_says_the_attention_kernel_is_timed_when_training_starts_on_a_cpu(tmp_path):
    auto, _ = run_plan("hardware=cpu", "hardware.train_attention=auto", cwd=tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert "hardware.train_attention=auto: sdpa or eager" in auto.stdout
    fixed, _ = run_plan("hardware=cpu", cwd=tmp_path)  # the cpu profile fixes sdpa: nothing to say
    assert fixed.returncode == 0 and "train_attention" not in fixed.stdout


def test_plan_imports_neither_torch_nor_transformers(tmp_path):
    code = ("import sys; from slt_hydra.plan import main; rc = main(['model=qwen2.5_7b_instruct', 'quant=auto', "
            "'hardware=gpu_24gb']); heavy = {'torch', 'transformers'} & set(sys.modules); "
            "print('HEAVY', sorted(heavy)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


@pytest.mark.parametrize("model,hardware,expected", [
    # As memory grows: 4-bit, 8-bit, then 16-bit (a 14B at the profiles' batch sizes and 256 tokens).
    ("qwen2.5_14b", "gpu_16gb", "4bit"),
    ("qwen2.5_14b", "gpu_24gb", "8bit"),
    ("qwen2.5_14b", "gpu_80gb", "bf16"),
    # A 7B at 256 tokens: 8-bit already fits 16 GB and bf16 fits 24 GB (the guides' tree is more cautious);
    # 4-bit when the budget is tighter.
    ("qwen2.5_7b_instruct", "gpu_16gb hardware.memory_gb=8", "4bit"),
    ("qwen2.5_7b_instruct", "gpu_16gb", "8bit"),
    ("qwen2.5_7b_instruct", "gpu_24gb", "bf16"),
    ("qwen2.5_7b_instruct", "gpu_80gb", "bf16"),
    ("smollm2_135m_instruct", "cpu", "none"),  # fp32 on CPU
])
def test_quant_auto_picks_the_highest_precision_that_fits(model, hardware, expected):
    cfg = composed(f"model={model}", "quant=auto", *f"hardware={hardware}".split())
    assert memory.resolve_auto_quant(cfg, CPU) == expected
    assert cfg.quant.name == expected
    machine = CPU if cfg.hardware.device == "cpu" else GPU
    assert memory.plan_memory(cfg, machine).fits
    assert validate.check(cfg, machine) == []



def test_quant_auto_is_resolved_by_prepare(monkeypatch):
    import slt_hydra.run as run

    monkeypatch.setattr(run, "detect_machine", lambda: CPU)
    cfg = compose_config(["quant=auto", "hardware=cpu"])
    run.prepare(cfg)  # data and the embedded model's files only: no model is loaded
    assert cfg.quant.name == "none" and weights_kind(cfg) == "float32"


def test_a_reasoning_model_is_warned_about_not_refused(caplog):
    cfg = composed("model=qwq_32b_preview", "quant=4bit", "hardware=gpu_80gb", "hardware.gradient_checkpointing=true",
                   machine=GPU)
    with caplog.at_level(logging.WARNING, logger="slt_hydra"):
        found = validate.check(cfg, GPU)
    assert not any("reasoning" in p for p in found), found
    assert any(r.levelno == logging.WARNING and "reasoning model" in r.getMessage() for r in caplog.records)
    assert any("reasoning model" in w for w in validate.warnings(cfg))
    assert not validate.warnings(composed("model=qwen2.5_32b", "quant=4bit", "hardware=gpu_80gb", machine=GPU))


def test_plan_cli_prints_the_reasoning_warning(tmp_path):
    done, _ = run_plan("model=qwq_32b_preview", "quant=4bit", "hardware=gpu_80gb",
                       "hardware.gradient_checkpointing=true", cwd=tmp_path)
    assert "WARNING" in done.stdout and "reasoning model" in done.stdout


def test_lora_targets_that_match_nothing_are_named():
    notes = memory.plan_notes(composed("model=phi3_mini_4k_instruct"))  # lora=default: q/k/v/o_proj
    assert any("q_proj" in n and "qkv_proj" in n for n in notes), notes
    assert not memory.plan_notes(composed("model=phi3_mini_4k_instruct", "lora.target_modules=[qkv_proj,o_proj]"))


def test_moe_experts_stay_unquantized_under_bitsandbytes():
    # transformers 5 fuses Mixtral's experts into 3-D tensors, which bitsandbytes does not quantize.
    plan = memory.plan_memory(composed("model=mixtral_8x7b", "quant=4bit", "hardware=gpu_80gb"))
    experts = 32 * 8 * 3 * 4096 * 14336
    assert plan.rows[1].bytes > experts * 2  # the rest, in bf16, includes every expert
    assert any("experts" in n for n in plan.warnings)


def test_validate_refuses_only_what_cannot_fit_and_warns_about_the_worst_case(caplog):
    # 7B 4-bit on a 24 GB CPU, fp32, batch 16: ~50 GB with every sequence at 256 tokens, ~9 GB before the first one.
    cfg = composed("model=qwen2.5_7b_instruct", "quant=4bit")
    plan = memory.plan_memory(cfg, CPU)
    assert plan.floor_gb < 21.6 < plan.total_gb
    with caplog.at_level(logging.WARNING, logger="slt_hydra"):
        assert validate.check(cfg, CPU) == []
    assert any("may run out of memory" in r.getMessage() and "gradient_checkpointing=true" in r.getMessage()
               for r in caplog.records)
    # 7B in fp32 cannot fit 24 GB whatever the length: refused, with the planner's fix.
    found = validate.check(composed("model=qwen2.5_7b_instruct", "quant=none"), CPU)
    assert len(found) == 1 and "before its first token" in found[0] and "quant=8bit" in found[0], found


def test_coarse_estimate_without_arch_is_kept():
    cfg = composed("model=local", "model.path=/nowhere", "model.params_b=0.5", "hardware=cpu")
    assert memory.Arch.from_cfg(cfg.model) is None
    assert memory.estimate_memory_gb(cfg) == pytest.approx((0.5e9 * 4 + 0.5e9 * 0.01 * 16) * 1.2 / 2**30 + 1.0)
    unknown = composed("model=local", "model.path=/nowhere", "hardware=cpu")
    assert memory.estimate_memory_gb(unknown) is None and memory.plan_memory(unknown, CPU).fits is None
