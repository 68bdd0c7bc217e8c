"""CPU threads: the prior's forward on every core, with the same bits whatever the count.

A step's NeRF side (field, renderer, backward) is thousands of small ops over a few thousand samples: a second
thread barely speeds it up, and it changes some float summation orders, so ``train.num_threads`` pins it. The
prior's UNet is the other half of a CPU step, and its large convolutions and attention split well over threads
without changing a bit. Only its GEMMs with a handful of rows (the time and pose embeddings, the residual blocks'
time projections) and its 1x1 convolutions pick kernels that sum in another order on more threads; those few
layers run on one thread (:func:`pin_thread_sensitive_layers`), so a prior call gives the same bits on 1 thread
or on all of them (``tests/test_threads.py``). ``prior.num_threads`` is therefore free to default to every
thread torch would use.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

# Read when dreamnfsd first imports this module, before any run sets a count: OMP_NUM_THREADS when it is set,
# else the machine's cores (torch's own default).
STARTUP_THREADS = torch.get_num_threads()
_pinned: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models already hooked


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` CPU threads (``n <= 0``: leave the count as it is), then restore the count."""
    before = torch.get_num_threads()
    if n > 0 and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _one_thread_for(module: nn.Module, when) -> None:
    """Hooks that run ``module`` on one thread whenever ``when(inputs)`` holds, restoring the count after it."""
    saved: list[int] = []

    def pre(_module, inputs):
        if when(inputs):
            saved.append(torch.get_num_threads())
            torch.set_num_threads(1)

    def post(_module, _inputs, _output):
        if saved:
            torch.set_num_threads(saved.pop())

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def pin_thread_sensitive_layers(model: nn.Module) -> int:
    """Make ``model``'s CPU output independent of the thread count: its linear layers fed one vector per image
    (2-D inputs, a few rows) and its 1x1 convolutions run on one thread. Idempotent. Returns the layers pinned."""
    if model in _pinned:
        return 0
    pinned = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _one_thread_for(module, lambda inputs: inputs[0].dim() == 2)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            _one_thread_for(module, lambda inputs: True)
        else:
            continue
        pinned += 1
    _pinned.add(model)
    return pinned
