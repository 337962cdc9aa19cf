"""Library messages that say nothing about this run, silenced at their source; the one that sometimes does.

Each filter names one message of one library. A warning whose fix is ours is fixed where we call the library
instead (training.trainer_arguments passes ``activation_checkpointing``, not its deprecated alias).
"""
from __future__ import annotations

import logging
import warnings

log = logging.getLogger("slt_hydra")

# bitsandbytes logs this at import on CPUs with AVX512-BF16, whatever the run holds: its fused 4-bit CPU kernel
# comes from the Hub through the `kernels` package. Only a 4-bit run on CPU is affected (note_cpu_4bit_kernels).
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "kernels-community"


class _DropMessage(logging.Filter):
    def __init__(self, needle: str):
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def quiet_libraries() -> None:
    """Install the filters; call before torch-side libraries are imported (idempotent)."""
    bnb = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in bnb.filters):
        bnb.addFilter(_DropMessage(BNB_KERNELS_MESSAGE))
    # PEFT 0.21 reads model.is_gradient_checkpointing, which transformers 5 renamed: not ours to fix.
    warnings.filterwarnings("ignore", category=FutureWarning, message="`is_gradient_checkpointing` is deprecated")


def note_cpu_4bit_kernels(load_in_4bit: bool, device: str, cpu_bf16: bool) -> None:
    """What the silenced bitsandbytes message would have meant, said once, where it applies."""
    if load_in_4bit and device == "cpu" and cpu_bf16:
        log.warning("quant=4bit on CPU: bitsandbytes uses its built-in 4-bit kernels. Its fused AVX512-BF16 kernel "
                    "(token-by-token generation) comes from the Hugging Face Hub through the `kernels` package "
                    "(pip install 'kernels>=0.11.1'; it downloads at first use, so not offline).")
