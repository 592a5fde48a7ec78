"""Count the operations that make the host wait for the device, on a machine without one.

On a GPU, reading a tensor's value on the host (``bool(t)``, ``t.item()``, ``t.tolist()``, ``float(t)``,
``int(t)``, ``t.__index__()``, ``t.cpu()``, ``t.numpy()``) or ``torch.cuda.synchronize()`` blocks until the queued
kernels have run. On the CPU these calls cost nothing, so the tests count the calls themselves: every tensor would
live on the device in a GPU run, with one exception, the optimizers' step counters, which PyTorch keeps on the host
by design (``state["step"]`` of a non-capturable, non-fused optimizer), so reading them inside ``torch.optim`` is not
a device synchronisation.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass, field
from typing import Iterator

import torch

TENSOR_METHODS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy")
# Frames in these files are on the host by design (see the module docstring).
HOST_BY_DESIGN = ("torch/optim/",)


@dataclass
class HostSyncCounter:
    """``count``: synchronising calls seen; ``calls``: ``(operation, innermost caller outside torch)`` for each."""

    count: int = 0
    calls: list[tuple[str, str]] = field(default_factory=list)

    def record(self, operation: str) -> None:
        stack = traceback.extract_stack(sys._getframe(2))
        caller = stack[-1].filename.replace("\\", "/") if stack else ""
        if any(part in caller for part in HOST_BY_DESIGN):
            return
        outside_torch = next((f for f in reversed(stack) if "/torch/" not in f.filename.replace("\\", "/")), stack[-1])
        self.count += 1
        self.calls.append((operation, f"{outside_torch.filename}:{outside_torch.lineno} {outside_torch.name}"))


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Within the block, count every call of :data:`TENSOR_METHODS` (and ``torch.cuda.synchronize``)."""
    counter = HostSyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in TENSOR_METHODS}

    def wrap(name: str, original):
        def counted(self, *args, **kwargs):
            counter.record(name)
            return original(self, *args, **kwargs)

        return counted

    synchronize = torch.cuda.synchronize

    def counted_synchronize(*args, **kwargs):
        counter.record("torch.cuda.synchronize")
        return synchronize(*args, **kwargs)

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        torch.cuda.synchronize = counted_synchronize
        yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.cuda.synchronize = synchronize
