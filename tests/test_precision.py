"""hardware.precision: the CPU's choice between fp32, bf16 autocast and bf16 weights (slt_hydra/precision.py).

The decision logic is tested on given flags and rates, the calibration on this CPU, the cache by counting how often
the calibration runs, the override through Hydra, and quality by training the tiny model in fp32 and bf16 autocast.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from slt_hydra import precision
from slt_hydra.config import resolve_hardware
from slt_hydra.machine import cpu_flags, has_native_bf16, light_machine
from slt_hydra.training import trainer_arguments
from tests.conftest import run_app, tiny_args
from tests.test_pipeline import all_runs

NO_BF16 = replace(light_machine(), cuda=False, gpu_name=None, gpu_memory_gb=None, cpu_bf16=False)
WITH_BF16 = replace(NO_BF16, cpu_bf16=True)


def rates(fp32: float, autocast: float, bf16: float) -> dict[str, float]:
    return {"float32": fp32, "bf16_autocast": autocast, "bfloat16": bf16}


class CountingCalibration:
    """Stands in for the timing (not for a model): given rates, and how often it was asked."""

    def __init__(self, gflops: dict[str, float]):
        self.gflops, self.calls = gflops, 0

    def __call__(self, rows, k, n, threads=None):
        self.calls += 1
        return dict(self.gflops)


def test_without_native_bf16_it_is_fp32_and_nothing_is_measured(tmp_path):
    calibration = CountingCalibration(rates(100, 300, 400))
    choice = precision.choose(False, (64, 64, 64), 2, tmp_path, measure_fn=calibration)
    assert choice.precision == "float32" and "AVX512-BF16/AMX" in choice.reason
    assert calibration.calls == 0 and choice.gflops == {}
    assert not (tmp_path / precision.CACHE_FILE).exists()


@pytest.mark.parametrize("gflops, expected", [
    (rates(100, 330, 340), "bfloat16"),  # AMX-like: autocast 3.3x, bf16 weights as fast: no casts, half the memory
    (rates(100, 330, 320), "bf16_autocast"),  # bf16 weights measured slower than autocast
    (rates(100, 200, 400), "bfloat16"),  # bf16 weights a further 2x
    (rates(100, 110, 200), "bfloat16"),  # autocast within the margin, bf16 weights well past it
    (rates(100, 40, 45), "float32"),  # bf16 slower: the flags alone do not decide
    (rates(100, 110, 112), "float32"),  # within the margin: not worth the rounding
])
def test_with_native_bf16_the_measured_rates_decide(gflops, expected):
    chosen, reason = precision.decide(True, gflops)
    assert chosen == expected
    assert all(name in reason for name in precision.PRECISIONS)  # the reason quotes every rate


def test_quantized_weights_choose_between_fp32_and_autocast_only():
    quantized = precision.PRECISIONS[:2]
    assert precision.decide(True, rates(100, 330, 900), quantized)[0] == "bf16_autocast"
    assert precision.decide(True, rates(100, 105, 900), quantized)[0] == "float32"


def test_the_choice_is_kept_per_machine_and_shape(tmp_path):
    calibration = CountingCalibration(rates(100, 300, 290))
    first = precision.choose(True, (64, 64, 128), 2, tmp_path, measure_fn=calibration)
    again = precision.choose(True, (64, 64, 128), 2, tmp_path, measure_fn=calibration)
    assert calibration.calls == 1
    assert (first.precision, first.cached) == ("bf16_autocast", False)
    assert (again.precision, again.cached, again.gflops) == ("bf16_autocast", True, first.gflops)
    precision.choose(True, (64, 64, 256), 2, tmp_path, measure_fn=calibration)  # another model's shape
    precision.choose(True, (64, 64, 128), 1, tmp_path, measure_fn=calibration)  # another thread count
    assert calibration.calls == 3
    cache = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    assert len(cache) == 3 and all(precision.cpu_model_name() in key for key in cache)


def test_an_unreadable_cache_is_measured_again(tmp_path):
    (tmp_path / precision.CACHE_FILE).write_text("{not json")
    calibration = CountingCalibration(rates(100, 50, 60))
    choice = precision.choose(True, (64, 64, 64), 2, tmp_path, measure_fn=calibration)
    assert calibration.calls == 1 and choice.precision == "float32"
    assert json.loads((tmp_path / precision.CACHE_FILE).read_text())  # rewritten whole


def test_the_calibration_measures_every_precision_on_this_cpu():
    measured = precision.measure(96, 64, 128, threads=1, seconds=0.02)
    assert set(measured) == set(precision.PRECISIONS)
    assert all(rate > 0 for rate in measured.values())


def test_the_contenders_take_turns_after_one_warm_up_each():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("float32", "bf16_autocast", "bfloat16")}
    times = precision.take_turns(steps, rounds=4, seconds=0.0)
    assert calls == ["float32", "bf16_autocast", "bfloat16"] * 5  # the warm-ups, then four rounds in turn
    assert {name: len(measured) for name, measured in times.items()} == dict.fromkeys(steps, 4)
    assert all(seconds >= 0 for measured in times.values() for seconds in measured)


def seed_cache(cfg, gflops):
    """What an earlier calibration on this machine left: the run reads it instead of measuring."""
    train_batch = cfg.train.per_device_train_batch_size or cfg.hardware.per_device_train_batch_size
    shape = precision.calibration_shape(cfg.model, train_batch)
    key = precision.machine_key(shape, cfg.hardware.torch_threads or len(os.sched_getaffinity(0)))
    path = Path(cfg.cache_dir) / precision.CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: {"gflops": gflops}}))


def test_hardware_auto_applies_the_choice_to_weights_and_trainer(make_cfg, tmp_path):
    cfg = make_cfg("hardware=auto", f"cache_dir={tmp_path / 'cache'}")
    seed_cache(cfg, rates(100, 150, 400))
    choice = resolve_hardware(cfg, WITH_BF16, overrides=[])
    assert (choice.precision, choice.cached) == ("bfloat16", True)
    assert (cfg.hardware.name, cfg.hardware.precision, cfg.hardware.dtype) == ("cpu", "bfloat16", "bfloat16")
    assert cfg.hardware.train_attention == "auto"  # measured when training starts (tests/test_train_attention.py)
    assert trainer_arguments(cfg, tmp_path)["bf16"] is True

    cfg = make_cfg("hardware=auto", f"cache_dir={tmp_path / 'cache'}")
    seed_cache(cfg, rates(100, 300, 290))
    resolve_hardware(cfg, WITH_BF16, overrides=[])
    assert (cfg.hardware.precision, cfg.hardware.dtype) == ("bf16_autocast", "float32")  # fp32 weights
    assert trainer_arguments(cfg, tmp_path)["bf16"] is True

    cfg = make_cfg("hardware=auto", "quant=8bit", f"cache_dir={tmp_path / 'cache'}")  # quantized: no bf16 weights
    seed_cache(cfg, rates(100, 150, 400))
    assert resolve_hardware(cfg, WITH_BF16, overrides=[]).precision == "bf16_autocast"
    assert cfg.hardware.dtype == "float32"

    cfg = make_cfg("hardware=auto", f"cache_dir={tmp_path / 'empty'}")
    choice = resolve_hardware(cfg, NO_BF16, overrides=[])
    assert (choice.precision, cfg.hardware.dtype) == ("float32", "float32")
    assert trainer_arguments(cfg, tmp_path)["bf16"] is False


def test_an_explicit_precision_or_profile_is_not_measured(make_cfg, tmp_path):
    cfg = make_cfg("hardware=auto", "hardware.precision=float32", f"cache_dir={tmp_path}")
    assert resolve_hardware(cfg, WITH_BF16, overrides=["hardware.precision=float32"]) is None
    assert cfg.hardware.precision == "float32"
    cfg = make_cfg("hardware=cpu", f"cache_dir={tmp_path}")  # the cpu profile fixes fp32: reproducible tests
    assert resolve_hardware(cfg, WITH_BF16) is None and cfg.hardware.precision == "float32"
    assert cfg.hardware.train_attention == "sdpa"  # and the model's own attention kernel
    cfg = make_cfg("hardware=cpu", "hardware.dtype=bfloat16", f"cache_dir={tmp_path}")  # the older knob still works
    resolve_hardware(cfg, WITH_BF16)
    assert (cfg.hardware.precision, cfg.hardware.dtype) == ("bfloat16", "bfloat16")
    assert not (tmp_path / precision.CACHE_FILE).exists()


def test_bf16_weights_are_refused_where_bf16_is_emulated(make_cfg):
    from slt_hydra import validate

    cfg = make_cfg("hardware=cpu", "hardware.precision=bfloat16")
    resolve_hardware(cfg, NO_BF16)
    assert any("without native bf16" in p for p in validate.check(cfg, NO_BF16))
    cfg = make_cfg("hardware=cpu", "hardware.precision=bf16_autocast")
    resolve_hardware(cfg, NO_BF16)
    assert not validate.check(cfg, NO_BF16)  # asked for by name: allowed, with a warning where it is emulated
    assert any("emulated" in r for r in validate.remarks(cfg)) == (not has_native_bf16(cpu_flags()))


def trained_in(precisions: tuple[str, ...], tiny_model, tmp_path) -> dict[str, dict[str, float]]:
    """The tiny model trained in each precision, same seed, data and steps: each run's MLflow metrics."""
    results = {}
    for name in precisions:
        folder = tmp_path / name
        folder.mkdir()
        args = tiny_args(tiny_model, f"hardware.precision={name}", "train.max_steps=8", "train.warmup_steps=1",
                         "train.eval_strategy=steps", "train.eval_steps=8", "dataset.max_train_samples=64",
                         "dataset.max_eval_samples=16", "train.seed=3", f"hydra.run.dir={folder / 'run'}")
        result = run_app(args, folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = all_runs(folder)
        assert run.data.tags["cpu_precision"] == name
        results[name] = run.data.metrics
    return results


def assert_as_good_as_fp32(fp32: dict[str, float], bf16: dict[str, float]) -> None:
    """The held-out loss within 2% and test BLEU-4 within 1 of fp32's."""
    assert fp32["dev_loss"] < fp32["zeroshot_dev_loss"]  # it learned something to compare
    assert abs(bf16["dev_loss"] - fp32["dev_loss"]) <= 0.02 * fp32["dev_loss"]
    assert abs(bf16["test_bleu4"] - fp32["test_bleu4"]) <= 1.0


def test_bf16_autocast_trains_and_translates_as_well_as_fp32(tiny_model, tmp_path):
    results = trained_in(("float32", "bf16_autocast"), tiny_model, tmp_path)
    assert_as_good_as_fp32(results["float32"], results["bf16_autocast"])


@pytest.mark.skipif(not has_native_bf16(cpu_flags()),
                    reason="bf16 weights are refused on a CPU without AVX512-BF16/AMX (this one)")
def test_bf16_weights_train_and_translate_as_well_as_fp32(tiny_model, tmp_path):
    results = trained_in(("float32", "bfloat16"), tiny_model, tmp_path)
    assert_as_good_as_fp32(results["float32"], results["bfloat16"])


def test_qlora_runs_under_bf16_autocast(tiny_model, tmp_path):
    """What hardware=auto picks for quant=4bit on a CPU with fast bf16: NF4 weights, fp32 compute dtype, autocast."""
    result = run_app(tiny_args(tiny_model, "quant=4bit", "hardware.precision=bf16_autocast",
                               f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = all_runs(tmp_path)
    assert (run.data.tags["cpu_precision"], run.data.tags["precision"]) == ("bf16_autocast", "4bit")
    assert run.data.metrics["train_tokens"] > 0 and "test_bleu4" in run.data.metrics
