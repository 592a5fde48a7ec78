"""Counting host synchronisations at the Python level, on any machine (a CPU run counts what a GPU run would wait on).

On a GPU, reading a device tensor's value on the host (``bool(t)``, ``t.item()``, ``float(t)``, ``int(t)``,
``t.__index__()``, ``t.tolist()``, ``t.cpu()``, ``t.numpy()``, a data-dependent ``t.nonzero()``) or calling
``torch.cuda.synchronize()`` blocks the host until every queued kernel has run: in a sampling or training loop that
stalls the GPU once per call. ``torch.cuda.set_sync_debug_mode`` sees these only on CUDA; this counter patches the
entry points through which Python code reaches them, so the same check runs on a CPU-only machine, where every tensor
lives on the host and a count of zero is the strong statement. It does not see synchronisations made inside C++
kernels (boolean-mask indexing, ``torch.unique``): on CUDA, ``set_sync_debug_mode`` is the complete check.

One exception is made: reads inside ``torch/optim`` are not counted, because PyTorch keeps a non-fused, non-capturable
optimizer's step counter (``state["step"]``) on the host by design, so reading it does not wait for the device.

Used by the tests and by ``benchmarks/scheduler_overhead.py``::

    with count_host_syncs() as syncs:
        model(x, sigma)
    assert syncs.count == 0, syncs.calls
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

# Tensor methods that hand a value (or a host copy) of device memory to Python.
SYNCHRONISING_METHODS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")
_TORCH_DIRECTORY = os.path.dirname(torch.__file__)
# Code whose host reads are of host tensors by design (see the module docstring).
_HOST_BY_DESIGN = (os.path.join(_TORCH_DIRECTORY, "optim") + os.sep,)


@dataclass(frozen=True)
class HostSync:
    """One synchronising call: what was called (``"Tensor.item"``) and where (the first caller outside torch)."""

    name: str
    location: str


@dataclass
class HostSyncCounter:
    """The synchronising calls recorded inside a :func:`count_host_syncs` block."""

    calls: list[HostSync] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.calls)

    def calls_from(self, path_part: str) -> list[HostSync]:
        """The recorded calls made from files whose path contains ``path_part``."""
        return [call for call in self.calls if path_part in call.location]


def _caller_outside_torch(frame) -> str:
    while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIRECTORY):
        frame = frame.f_back
    if frame is None:
        return "<torch>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _recording(original: Callable, name: str, counter: HostSyncCounter, active: list[bool]) -> Callable:
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        # A synchronising call made inside another one (numpy() inside tolist(), say) is the same wait: count it once.
        if active[0]:
            return original(*args, **kwargs)
        active[0] = True
        try:
            caller = sys._getframe(1)
            if not caller.f_code.co_filename.startswith(_HOST_BY_DESIGN):
                counter.calls.append(HostSync(name, _caller_outside_torch(caller)))
            return original(*args, **kwargs)
        finally:
            active[0] = False

    return wrapper


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Record every host synchronisation (see the module docstring) made inside the ``with`` block.

    Not thread-safe: use it around single-threaded code.
    """
    counter, active = HostSyncCounter(), [False]
    patched: list[tuple[object, str, Callable]] = [
        (torch.Tensor, name, getattr(torch.Tensor, name)) for name in SYNCHRONISING_METHODS
    ]
    patched.append((torch.cuda, "synchronize", torch.cuda.synchronize))
    try:
        for owner, name, original in patched:
            label = f"Tensor.{name}" if owner is torch.Tensor else f"torch.cuda.{name}"
            setattr(owner, name, _recording(original, label, counter, active))
        yield counter
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
