"""Which precision a CPU trains and translates in: ``hardware.precision``, decided by measurement when ``auto``.

- ``float32``: weights and arithmetic in fp32.
- ``bf16_autocast``: fp32 weights; matmuls in bf16 under ``torch.autocast`` (the Trainer's ``bf16=True``, TRL's own
  default), and translation under the same autocast.
- ``bfloat16``: base weights held in bf16 (half the memory); the LoRA weights and their optimizer state stay fp32
  (PEFT keeps adapters in fp32), matmuls under bf16 autocast.

A CPU without native bf16 instructions (AVX512-BF16 or AMX) emulates bf16, many times slower than fp32
(docs/benchmarks_epyc_nobf16.md): there it is fp32, with nothing measured. With them, a short calibration times the
model's own widest projection (hidden -> intermediate, one train batch of rows), forward and input-gradient backward
as in LoRA training, in each precision. bf16 is chosen over fp32 only when it measures ``MARGIN`` faster; bf16
weights over bf16 autocast when they measure at least as fast (autocast rounds the weights to bf16 for every matmul
anyway; holding them so saves the casts and half their memory). The answer is kept per machine (CPU model, its bf16
flags, torch version, threads, shape) in ``<cache_dir>/cpu_precision.json``, so the next run on this machine
reads it instead of measuring.

Training's attention kernel (``hardware.train_attention=auto``) is chosen the same way, on a CPU: torch's fused
``sdpa`` kernel or transformers' ``eager`` attention (two matmuls and a softmax), whichever runs the attention's
forward and backward faster at the train batch's shape. In bf16, torch's CPU flash-attention backward has a large
fixed cost that short sign-language sentences never amortise (docs/setup.md), so eager often wins there.

torch is imported only to measure, so the planner and the fast checks stay torch-free on a cache hit.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slt_hydra.machine import BF16_FLAGS, cpu_flags, cpu_model_name
from slt_hydra.schema import ATTENTION_KERNELS
from slt_hydra.schema import CPU_PRECISIONS as PRECISIONS  # safest first

MARGIN = 1.15  # bf16 must measure this much faster than fp32 (timing noise, rounding); eager attention than sdpa
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
    bf16 = [name for name in PRECISIONS[1:] if name in candidates]
    if not bf16 or max(gflops[name] for name in bf16) < MARGIN * gflops["float32"]:
        return "float32", f"bf16 measured less than {MARGIN}x faster than fp32 here (GFLOP/s: {rates})"
    if "bfloat16" in bf16 and ("bf16_autocast" not in bf16 or gflops["bfloat16"] >= gflops["bf16_autocast"]):
        return "bfloat16", (f"bf16 measured at least {MARGIN}x faster than fp32, bf16 weights at least as fast as "
                            f"autocast (GFLOP/s: {rates})")
    return "bf16_autocast", (f"bf16 autocast measured at least {MARGIN}x faster than fp32, and faster than bf16 "
                             f"weights (GFLOP/s: {rates})")


def measure(rows: int, k: int, n: int, threads: int | None = None, seconds: float = 0.3) -> dict[str, float]:
    """GFLOP/s of y = x W^T (W: n x k, frozen) forward and dL/dx backward, per precision, on this CPU, with
    ``threads`` torch threads (None: leave torch's setting alone, as the run will). The precisions take turns, one
    repetition each per round, for ``seconds`` in all (at least 5 rounds), so a change in the machine's load weighs
    on all of them alike; the median repetition of each, so neither another process's bursts nor a lucky one
    decide."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    flops = 4 * rows * k * n  # two matmuls of 2*rows*k*n: the forward and the input gradient
    generator = torch.Generator().manual_seed(0)
    steps = {}
    for name in PRECISIONS:
        dtype = torch.bfloat16 if name == "bfloat16" else torch.float32
        weight = (torch.randn(n, k, generator=generator) * 0.02).to(dtype)
        x = torch.randn(rows, k, generator=generator).to(dtype).requires_grad_(True)
        steps[name] = functools.partial(_linear_step, x, weight, name == "bf16_autocast")
    times = take_turns(steps, rounds=5, seconds=seconds)
    return {name: flops / statistics.median(times[name]) / 1e9 for name in PRECISIONS}


def take_turns(steps: dict[str, Callable[[], object]], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Each step's times: one warm-up call each (kernel selection, first allocations), then rounds of one call of
    each in turn, for at least ``rounds`` rounds and ``seconds`` in all."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    started = time.perf_counter()
    while len(times[next(iter(steps))]) < rounds or time.perf_counter() - started < seconds:
        for name, step in steps.items():
            begin = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - begin)
    return times


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


def machine_key(shape: tuple[int, ...], threads: int) -> str:
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
    write_cache(path, cache)
    return PrecisionChoice(*decide(True, gflops, candidates), gflops=gflops)


def write_cache(path: Path, cache: dict) -> None:
    """Written whole, then renamed: parallel sweep jobs never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(cache, indent=1))
        partial.replace(path)
    except OSError:  # a read-only cache: measured again next time
        pass


@dataclass(frozen=True)
class AttentionChoice:
    kernel: str  # sdpa | eager
    reason: str
    milliseconds: dict[str, float] = field(default_factory=dict)  # one forward + backward per kernel, as measured
    cached: bool = False


def measure_attention(batch: int, heads: int, kv_heads: int, length: int, head_dim: int, bf16: bool,
                      threads: int | None = None, seconds: float = 0.1) -> dict[str, float]:
    """Milliseconds of one attention forward and backward per kernel, as a training step runs it: a right-padded
    batch (a boolean causal mask for sdpa, an additive one for eager), grouped key/value heads repeated to the query
    heads, eager's softmax in fp32. The kernels take turns for ``seconds`` in all (at least 3 rounds); the fastest
    of each one's repetitions, so another process's bursts count least."""
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    generator = torch.Generator().manual_seed(0)

    def tensor(n_heads):
        return torch.randn(batch, n_heads, length, head_dim, generator=generator).to(dtype).requires_grad_(True)

    query, key, value = tensor(heads), tensor(kv_heads), tensor(kv_heads)
    keep = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length)
    additive = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    scale = head_dim ** -0.5

    def repeat(states):  # transformers' repeat_kv
        groups = heads // kv_heads
        return states[:, :, None].expand(batch, kv_heads, groups, length, head_dim).reshape(batch, heads, length,
                                                                                            head_dim)

    def sdpa():
        return F.scaled_dot_product_attention(query, repeat(key), repeat(value), attn_mask=keep, scale=scale)

    def eager():
        scores = query @ repeat(key).transpose(2, 3) * scale + additive
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype) @ repeat(value)

    def step(attention):
        return lambda: attention().sum().backward()

    times = take_turns({"sdpa": step(sdpa), "eager": step(eager)}, rounds=3, seconds=seconds)
    return {name: 1e3 * min(measured) for name, measured in times.items()}


def decide_attention(milliseconds: dict[str, float]) -> tuple[str, str]:
    """sdpa (the model's default) unless eager measured ``MARGIN`` faster."""
    times = ", ".join(f"{name} {milliseconds[name]:.2f}" for name in ATTENTION_KERNELS)
    if milliseconds["eager"] * MARGIN <= milliseconds["sdpa"]:
        return "eager", f"eager attention measured at least {MARGIN}x faster than sdpa (ms per layer: {times})"
    return "sdpa", f"eager attention measured less than {MARGIN}x faster than sdpa (ms per layer: {times})"


def choose_attention(shape: tuple[int, int, int, int, int], bf16: bool, threads: int | None,
                     cache_dir: str | Path,
                     measure_fn: Callable[..., dict[str, float]] = measure_attention) -> AttentionChoice:
    """hardware.train_attention=auto on a CPU: sdpa or eager for training, at ``shape`` (batch, heads, key/value
    heads, length, head dim) in bf16 or fp32; kept in the precision cache per machine and shape."""
    key = f"attention in {'bf16' if bf16 else 'fp32'} | " + machine_key(shape, threads or len(os.sched_getaffinity(0)))
    path = Path(cache_dir).expanduser() / CACHE_FILE
    cache = read_cache(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and set(ATTENTION_KERNELS) <= set(entry.get("milliseconds", {})):
        times = {name: float(entry["milliseconds"][name]) for name in ATTENTION_KERNELS}
        return AttentionChoice(*decide_attention(times), milliseconds=times, cached=True)
    times = measure_fn(*shape, bf16=bf16, threads=threads)
    cache[key] = {"milliseconds": times, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_cache(path, cache)
    return AttentionChoice(*decide_attention(times), milliseconds=times)


def autocast(hardware) -> contextlib.AbstractContextManager:
    """The context translation runs in: bf16 autocast where training used it on a CPU, else nothing."""
    if hardware.device == "cpu" and hardware.get("precision") in ("bf16_autocast", "bfloat16"):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
