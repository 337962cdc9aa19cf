"""Which precision a CPU trains and translates in: ``hardware.precision``, decided by measurement when ``auto``.

- ``float32``: weights and arithmetic in fp32.
- ``bf16_autocast``: fp32 weights; matmuls in bf16 under ``torch.autocast`` (the Trainer's ``bf16=True``, TRL's own
  default), and translation under the same autocast.
- ``bfloat16``: base weights held in bf16 (half the memory); the LoRA weights and their optimizer state stay fp32
  (PEFT keeps adapters in fp32), matmuls under bf16 autocast.

A CPU without native bf16 instructions (AVX512-BF16 or AMX) emulates bf16, many times slower than fp32
(docs/benchmarks.md): there it is fp32, with nothing measured. With them, a short calibration times the model's own
widest projection (hidden -> intermediate, one train batch of rows), forward and input-gradient backward as in LoRA
training, in each precision. A bf16 precision is chosen only when it beats the safer one by ``MARGIN``. The answer is
kept per machine (CPU model, its bf16 flags, torch version, threads, shape) in ``<cache_dir>/cpu_precision.json``,
so the next run on this machine reads it instead of measuring.

torch is imported only to measure, so the planner and the fast checks stay torch-free on a cache hit.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slt_hydra.machine import BF16_FLAGS, cpu_flags, cpu_model_name
from slt_hydra.schema import CPU_PRECISIONS as PRECISIONS  # safest first

MARGIN = 1.15  # a bf16 precision must measure this much faster than the safer one (timing noise, cast overhead)
CACHE_FILE = "cpu_precision.json"
FALLBACK_SHAPE = (576, 1536)  # SmolLM2-135M's hidden -> intermediate, for models without an arch block
ROWS_PER_EXAMPLE = 48  # tokens of a short gloss sentence and its translation in the chat template


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str
    gflops: dict[str, float] = field(default_factory=dict)  # measured rates; empty when nothing was measured
    cached: bool = False  # read from the cache, not measured in this process


def decide(native_bf16: bool, gflops: dict[str, float] | None,
           candidates: tuple[str, ...] = PRECISIONS) -> tuple[str, str]:
    """The precision and why, from the CPU's bf16 support and the measured rates (GFLOP/s per precision), among
    ``candidates`` (quantized base weights leave no bf16 weights to choose)."""
    if not native_bf16:
        return "float32", "no AVX512-BF16/AMX on this CPU: bf16 would be emulated, so fp32 (nothing measured)"
    rates = ", ".join(f"{name} {gflops[name]:.0f}" for name in PRECISIONS)
    best = "float32"
    for candidate in (name for name in PRECISIONS[1:] if name in candidates):
        if gflops[candidate] >= MARGIN * gflops[best]:
            best = candidate
    if best == "float32":
        return best, f"bf16 measured less than {MARGIN}x faster than fp32 here (GFLOP/s: {rates})"
    return best, f"{best} measured fastest by at least {MARGIN}x (GFLOP/s: {rates})"


def measure(rows: int, k: int, n: int, threads: int | None = None, seconds: float = 0.2) -> dict[str, float]:
    """GFLOP/s of y = x W^T (W: n x k, frozen) forward and dL/dx backward, per precision, on this CPU, with
    ``threads`` torch threads (None: leave torch's setting alone, as the run will)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    flops = 4 * rows * k * n  # two matmuls of 2*rows*k*n: the forward and the input gradient
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for name in PRECISIONS:
        dtype = torch.bfloat16 if name == "bfloat16" else torch.float32
        weight = (torch.randn(n, k, generator=generator) * 0.02).to(dtype)
        x = torch.randn(rows, k, generator=generator).to(dtype).requires_grad_(True)
        autocast_on = name == "bf16_autocast"
        _linear_step(x, weight, autocast_on)  # warm-up: kernel selection, first allocations
        steps, start = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - start < seconds:
            _linear_step(x, weight, autocast_on)
            steps += 1
        rates[name] = flops * steps / (time.perf_counter() - start) / 1e9
    return rates


def _linear_step(x, weight, autocast_on: bool) -> None:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast_on else contextlib.nullcontext():
        y = torch.nn.functional.linear(x, weight)
    y.sum().backward()
    x.grad = None


def calibration_shape(model_cfg, train_batch: int) -> tuple[int, int, int]:
    """Rows, hidden, intermediate: the model's widest projection over one train batch."""
    arch = model_cfg.get("arch") if hasattr(model_cfg, "get") else None
    k, n = (int(arch.hidden_size), int(arch.intermediate_size)) if arch else FALLBACK_SHAPE
    return max(1, train_batch) * ROWS_PER_EXAMPLE, k, n


def machine_key(shape: tuple[int, int, int], threads: int) -> str:
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    flags = ",".join(sorted(cpu_flags() & BF16_FLAGS)) or "no-bf16"
    return f"{cpu_model_name()} | {flags} | torch {torch_version} | {threads} threads | {'x'.join(map(str, shape))}"


def read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}


def choose(native_bf16: bool, shape: tuple[int, int, int], threads: int | None, cache_dir: str | Path,
           measure_fn: Callable[..., dict[str, float]] = measure,
           candidates: tuple[str, ...] = PRECISIONS) -> PrecisionChoice:
    """hardware.precision=auto on a CPU: the decision, from the cache when this machine and shape were measured."""
    if not native_bf16:
        return PrecisionChoice(*decide(False, None))
    key = machine_key(shape, threads or len(os.sched_getaffinity(0)))  # (None: torch's default for this machine)
    path = Path(cache_dir).expanduser() / CACHE_FILE
    cache = read_cache(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and set(PRECISIONS) <= set(entry.get("gflops", {})):
        gflops = {name: float(entry["gflops"][name]) for name in PRECISIONS}
        return PrecisionChoice(*decide(True, gflops, candidates), gflops=gflops, cached=True)
    gflops = measure_fn(*shape, threads=threads)
    cache[key] = {"gflops": gflops, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:  # written whole, then renamed: parallel sweep jobs never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(cache, indent=1))
        partial.replace(path)
    except OSError:  # a read-only cache: measured again next time
        pass
    return PrecisionChoice(*decide(True, gflops, candidates), gflops=gflops)


def autocast(hardware) -> contextlib.AbstractContextManager:
    """The context translation runs in: bf16 autocast where training used it on a CPU, else nothing."""
    if hardware.device == "cpu" and hardware.get("precision") in ("bf16_autocast", "bfloat16"):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
