"""What this machine can do: CUDA, memory, native bf16. Read once per job, passed to validate.check."""
from __future__ import annotations

import os
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


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _ram_gb() -> float:
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
    flags = _cpu_flags()
    return Machine(
        cuda=cuda,
        gpu_name=name,
        gpu_memory_gb=memory,
        gpu_bf16=gpu_bf16,
        cpu_bf16=bool(flags & {"avx512_bf16", "amx_bf16"}),
        ram_gb=_ram_gb(),
    )


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
