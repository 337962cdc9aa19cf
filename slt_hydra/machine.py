"""What this machine has and what this process used: CUDA, memory, native bf16, the Hub's reachability, peak memory.

``detect_machine`` asks torch (a run's checks); ``light_machine`` reads /proc and nvidia-smi instead, for the
planner's one-second answer. Both are read once per job and passed to validate.check.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    cuda: bool  # a CUDA device is visible
    gpu_name: str | None
    gpu_memory_gb: float | None  # first GPU's total memory
    gpu_bf16: bool  # the GPU computes bf16 natively (Ampere and newer)
    cpu_bf16: bool  # the CPU has AVX512-BF16 or AMX (else bf16 is emulated, very slowly)
    ram_gb: float

    def memory_gb(self, device: str) -> float:
        return (self.gpu_memory_gb or 0.0) if device == "cuda" else self.ram_gb


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})  # /proc/cpuinfo flags of native bf16 arithmetic


def has_native_bf16(flags: set[str]) -> bool:
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def detect_machine() -> Machine:
    import torch

    cuda = torch.cuda.is_available()
    name = memory = None
    gpu_bf16 = False
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name, memory = props.name, props.total_memory / 2**30
        gpu_bf16 = torch.cuda.is_bf16_supported()
    return Machine(cuda=cuda, gpu_name=name, gpu_memory_gb=memory, gpu_bf16=gpu_bf16,
                   cpu_bf16=has_native_bf16(cpu_flags()), ram_gb=ram_gb())


def light_machine() -> Machine:
    """What this machine has, without importing torch: RAM, CPU flags, and the first GPU via nvidia-smi."""
    name = memory = None
    bf16 = False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    smi = shutil.which("nvidia-smi")
    if smi and visible not in ("", "-1"):
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            if out:
                gpu_name, mib, cap = [part.strip() for part in out[0].split(",")]
                name, memory, bf16 = gpu_name, float(mib) / 1024, float(cap) >= 8.0
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return Machine(cuda=name is not None, gpu_name=name, gpu_memory_gb=memory, gpu_bf16=bf16,
                   cpu_bf16=has_native_bf16(cpu_flags()), ram_gb=ram_gb())


def auto_hardware_profile(machine: Machine) -> str:
    """The hardware profile `hardware=auto` stands for on this machine."""
    if not machine.cuda:
        return "cpu"
    memory = machine.gpu_memory_gb or 0.0
    if memory < 20:
        return "gpu_16gb"
    if memory < 40:
        return "gpu_24gb"
    return "gpu_80gb"


def hub_is_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def reset_peak_memory(device: str) -> None:
    """Per-job peaks even when jobs share a process (Linux: writing 5 to clear_refs resets VmHWM)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gb(device: str) -> float:
    """This process's peak since the last reset: GPU memory allocated by torch on CUDA, else resident RAM."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
