"""Counting host synchronisations at the Python level, on any device.

On a GPU, reading a device tensor's value on the host (``bool(t)``, ``t.item()``, ``float(t)``, ``t.tolist()``,
``t.cpu()``, ``t.numpy()``, a data-dependent ``nonzero``) waits for every queued kernel: in a sampling or training loop
that stalls the GPU once per call. ``torch.cuda.set_sync_debug_mode`` sees these only on CUDA; this counter patches
the ``torch.Tensor`` methods through which Python code reaches them, so the same check runs on a CPU-only machine
(where it counts the places that *would* synchronise on a GPU). It does not see synchronisations made inside C++
kernels (boolean-mask indexing, ``torch.unique``): on CUDA, ``set_sync_debug_mode`` is the complete check.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from typing import Iterator

import torch

# Tensor methods that hand a value (or a host copy) to Python.
SYNCHRONISING_METHODS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")


@dataclass
class HostSyncRecord:
    """What :func:`count_host_syncs` saw: ``calls`` holds ``(method, "file:line")`` of each outermost call."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.calls)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncRecord]:
    """Count calls of :data:`SYNCHRONISING_METHODS` (and ``torch.cuda.synchronize``) made inside the block.

    A call made from within another counted call (``t.cpu().numpy()`` inside ``tolist``, say) counts once, as the
    outermost one. Not thread-safe: use it around single-threaded code.
    """
    record = HostSyncRecord()
    depth = [0]

    def counted(name: str, original):
        def wrapper(*args, **kwargs):
            if depth[0] == 0:
                caller = traceback.extract_stack(limit=2)[0]
                record.calls.append((name, f"{caller.filename}:{caller.lineno}"))
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    originals = {name: getattr(torch.Tensor, name) for name in SYNCHRONISING_METHODS}
    original_synchronize = torch.cuda.synchronize
    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counted(name, original))
        torch.cuda.synchronize = counted("torch.cuda.synchronize", original_synchronize)
        yield record
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.cuda.synchronize = original_synchronize
