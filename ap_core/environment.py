"""Where a trial runs: its device, CPU threads and numeric mode, resolved and checked before any data moves."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch

from ap_core.config import TrialConfig
from ap_core.errors import ConfigError
from ap_core.training import resolve_device

# Below this many parameters one CPU thread trains fastest (cpu_threads 0 = auto): more threads only add
# synchronisation, and several trials sharing a machine each spinning up every core slow down sharply.
SMALL_MODEL_PARAMS = 1_000_000


@dataclass(frozen=True)
class Environment:
    """The resolved device, and whether training runs in bf16 autocast (CUDA with `amp`)."""

    device: torch.device
    use_amp: bool
    cpu_threads: int  # 0: decided by the model's size (`settle_threads`)

    def settle_threads(self, params: int) -> None:
        """cpu_threads 0 on a CPU: one thread for a model under SMALL_MODEL_PARAMS, else torch's default."""
        if self.device.type == "cpu" and not self.cpu_threads and params < SMALL_MODEL_PARAMS:
            torch.set_num_threads(1)


def check_compile_toolchain(torch_compile: str, device: torch.device) -> None:
    """Refuse `torch_compile` on a CPU without the C++ compiler its backend builds with (it would fail mid-trial)."""
    compilers = (os.environ.get("CXX") or "g++", "clang++")
    if torch_compile != "off" and device.type == "cpu" and not any(shutil.which(c) for c in compilers):
        raise ConfigError(
            f"torch_compile {torch_compile!r} on a CPU needs a C++ compiler (g++, clang++ or $CXX); "
            "install one or use torch_compile off"
        )


def prepare_environment(config: TrialConfig) -> Environment:
    """Resolve `config`'s device and threads on this machine; a ConfigError for what it cannot honour."""
    device = resolve_device(config.runtime.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {config.runtime.device!r}: this machine has no CUDA GPU; use --device cpu or auto")
    if config.runtime.cpu_threads > (os.cpu_count() or 1):
        raise ConfigError(f"cpu_threads {config.runtime.cpu_threads} is more than this machine's {os.cpu_count()} CPUs")
    check_compile_toolchain(config.runtime.torch_compile, device)
    if config.runtime.cpu_threads:
        # Tiny models on a shared CPU slow down sharply when several trials each spin up all cores.
        torch.set_num_threads(config.runtime.cpu_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Environment(device, config.training.amp and device.type == "cuda", config.runtime.cpu_threads)
