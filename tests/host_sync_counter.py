"""Count the calls that make the host wait for an accelerator, on any machine (a CPU run counts what a GPU run would wait on).

A value read from a device tensor (``bool(t)``, ``t.item()``, ``t.tolist()``, ``float(t)``, ``int(t)``, ``t.__index__()``,
``t.cpu()``, ``t.numpy()``) or an explicit ``torch.cuda.synchronize()`` blocks the host until the device has finished
all queued work. Hot paths (a model call, an optimizer step) must not do any of them; validation once per pipeline call
or data set may. The counter patches these entry points for the duration of a ``with`` block and records every call::

    from host_sync_counter import count_host_syncs

    with count_host_syncs() as syncs:
        model(x, sigma)
    assert syncs.count == 0, syncs.calls

``syncs.calls`` holds one :class:`HostSync` per call (``name`` such as ``"Tensor.item"`` and ``location``, the first
caller outside torch as ``"path:line in function"``); ``syncs.count`` is their number; ``syncs.calls_from(path_part)``
keeps those whose location contains ``path_part``. Calls are counted whatever the tensor's device, since on a CPU-only
machine every tensor lives on the host: a count of zero is the strong statement.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

# Tensor methods that read device memory on the host (each one waits for the queued device work to finish).
SYNCING_TENSOR_METHODS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy")
_TORCH_DIRECTORY = os.path.dirname(torch.__file__)


@dataclass(frozen=True)
class HostSync:
    """One synchronising call: what was called and where (the first frame outside torch)."""

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


def _caller_outside_torch() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIRECTORY):
        frame = frame.f_back
    if frame is None:
        return "<torch>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _recording(original: Callable, name: str, counter: HostSyncCounter, active: list[bool]) -> Callable:
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        # A synchronising call made inside another one (e.g. numpy() inside tolist()) is the same wait: count it once.
        if active[0]:
            return original(*args, **kwargs)
        active[0] = True
        try:
            counter.calls.append(HostSync(name, _caller_outside_torch()))
            return original(*args, **kwargs)
        finally:
            active[0] = False

    return wrapper


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Record every host synchronisation (see the module docstring) made inside the ``with`` block."""
    counter, active = HostSyncCounter(), [False]
    originals: list[tuple[object, str, Callable]] = [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in SYNCING_TENSOR_METHODS]
    if hasattr(torch, "cuda") and hasattr(torch.cuda, "synchronize"):
        originals.append((torch.cuda, "synchronize", torch.cuda.synchronize))
    try:
        for owner, name, original in originals:
            label = f"Tensor.{name}" if owner is torch.Tensor else f"torch.cuda.{name}"
            setattr(owner, name, _recording(original, label, counter, active))
        yield counter
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
