"""Wall time and peak memory of a training stage, for the comparison tables (recorded in the checkpoints)."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory in MiB since :meth:`reset`: CUDA allocations on a GPU; the process's peak resident set on a CPU
    (Linux resets it through ``/proc/self/clear_refs``; elsewhere it is the peak since the process started)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
