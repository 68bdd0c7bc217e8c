"""CPU threads: the prior's forward on every core, with the bits of one thread.

A step's NeRF side (field, renderer, backward) is thousands of small ops over a few thousand samples: a second
thread barely speeds it up, and it changes some float summation orders, so ``train.num_threads`` pins it. The
prior's UNet is the other half of a CPU step. Most of its layers give the same bits on any thread count; its GEMMs
with a handful of rows (the time and pose embeddings, the residual blocks' time projections) and its 1x1
convolutions pick kernels that sum in another order on more threads, so those run on one thread
(:func:`pin_thread_sensitive_layers`). A whole batch then gives the same bits on 1 or 2 threads, not on 3, 5 or 6:
elementwise ops split their elements over the threads, and a share that ends off the SIMD width is rounded by the
scalar tail (``tests/test_threads.py``).

The prior's ops at 32 px are too small to split well over threads anyway, so the prior splits its batch instead: it
runs it as parts of rows at once, one thread each (:func:`forward_in_parts`). Every layer but the few-row GEMMs
computes a row the same way in any batch of two rows or more; those GEMMs are batch-coupled, and the parts meet
there (:class:`RowJoin`) to run them once on the whole batch, as an unsplit forward does. The parts' outputs are the
unsplit output's rows, bit for bit, which is what lets ``prior.num_threads`` default to every core.

Work made of independent pieces runs the same way, a task per core (:func:`run_at_once`, :func:`map_at_once`): the
no-grad field queries by points (:func:`query_in_parts`), the hash grid's levels on the one-thread NeRF side
(:func:`spare_threads`). Each piece is the same ops on one thread, so the bits do not change.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

# Read when dreamnfsd first imports this module, before any run sets a count: OMP_NUM_THREADS when it is set,
# else the machine's cores (torch's own default).
STARTUP_THREADS = torch.get_num_threads()
_pinned: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models already hooked
T = TypeVar("T")
_local = threading.local()  # per thread: the counts pinned layers restore, the RowJoin of a split forward, in_task


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


class RowJoin:
    """Where the parts of a split forward meet at each batch-coupled layer: each brings its rows, one of them runs
    the layer on all the rows (on one thread, as the pinned layer does in an unsplit forward), each takes its own
    rows of the output back. Every part calls the same layers in the same order, so the meetings pair up."""

    def __init__(self, sizes: list[int]):
        self.bounds = [0, *itertools.accumulate(sizes)]
        self.barrier = threading.Barrier(len(sizes))
        self.inputs: list[Tensor | None] = [None] * len(sizes)
        self.output: Tensor | None = None

    def exchange(self, part: int, module: nn.Module, rows: Tensor) -> Tensor:
        """``module``'s output for the whole batch, rows of ``part`` only; ``rows`` is this part's input."""
        self.inputs[part] = rows
        if self.barrier.wait() == 0:  # exactly one part computes
            try:
                with torch_threads(1):
                    self.output = module.forward(torch.cat(cast(list[Tensor], self.inputs)))  # forward(): no hooks
            except BaseException:
                self.barrier.abort()
                raise
        self.barrier.wait()
        assert self.output is not None
        return self.output[self.bounds[part] : self.bounds[part + 1]]


def part_sizes(rows: int, parts: int, align: int = 1) -> list[int]:
    """Sizes of up to ``parts`` contiguous slices covering ``rows``: whole multiples of ``align``, as even as that
    allows (earlier ones larger), the last one with the remainder on top.

    A remainder never makes a slice of its own: a GEMM over one or a few rows takes another kernel, whose bits were
    seen to depend on where the allocator had put its input."""
    units = max(1, rows // align)
    sizes = [len(c) * align for c in torch.arange(units).tensor_split(max(1, min(parts, units)))]
    sizes[-1] += rows - sum(sizes)
    return sizes


def run_at_once(tasks: list[Callable[[], T]], on_error: Callable[[], None] | None = None) -> list[T]:
    """Run ``tasks`` at once, the first in this thread and each other in a Python thread of its own, every one on
    one CPU thread and in the caller's grad mode; their results in order. An error or Ctrl-C in any task calls
    ``on_error`` (to stop the others at their next meeting) and is raised here once all have ended."""
    results: list[T | None] = [None] * len(tasks)
    errors: list[BaseException] = []
    grad = torch.is_grad_enabled()
    before = torch.get_num_threads()

    def work(k: int) -> None:
        # Set, never restored inside a task: OpenMP's count is per thread, but MKL's is one for the process, and a
        # task restoring its count while another still runs would change that one's GEMMs.
        torch.set_num_threads(1)
        outer, _local.in_task = getattr(_local, "in_task", False), True  # a task starts no tasks of its own
        try:
            with torch.set_grad_enabled(grad):
                results[k] = tasks[k]()
        except BaseException as err:
            errors.append(err)
            if on_error is not None:
                on_error()
        finally:
            _local.in_task = outer

    helpers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(1, len(tasks))]
    for helper in helpers:
        helper.start()
    try:
        work(0)
    finally:
        for helper in helpers:
            helper.join()
        torch.set_num_threads(before)  # the caller's count, MKL's process-wide one included
    if errors:  # the first real one; the others' BrokenBarrierError only says a task stopped
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return cast(list[T], results)


def forward_in_parts(forward: Callable[[slice], Tensor], rows: int, parts: int, align: int = 1) -> Tensor:
    """``forward(slice(0, rows))`` computed as up to ``parts`` contiguous row slices (:func:`part_sizes`) at once
    (:func:`run_at_once`), concatenated along dim 0. Bit-identical to the unsplit call on one thread when every
    layer of the model computes a row the same way in any batch or is hooked as batch-coupled
    (:func:`pin_thread_sensitive_layers`), and when ``align`` rows keep the slices' starts on whole SIMD vectors
    (elementwise ops round a vector's scalar tail differently).

    ``forward`` maps a row slice to that slice's output, (n, ...). An error or Ctrl-C in any part stops the others
    at their next meeting and is raised here.
    """
    join = RowJoin(part_sizes(rows, parts, align))

    def part(k: int) -> Callable[[], Tensor]:
        def run() -> Tensor:
            _local.join, _local.part = join, k
            try:
                return forward(slice(join.bounds[k], join.bounds[k + 1]))
            finally:
                _local.join = None

        return run

    return torch.cat(run_at_once([part(k) for k in range(len(join.bounds) - 1)], on_error=join.barrier.abort))


def spare_threads(x: Tensor) -> int:
    """How many one-thread tasks may split independent work on ``x`` at once: :data:`STARTUP_THREADS` when ``x``
    is on the CPU, the caller runs on one thread (so each task's ops keep the caller's bits) and is not itself a
    task (:func:`run_at_once`) or a part of a split; else 1."""
    if x.device.type != "cpu" or torch.get_num_threads() != 1 or getattr(_local, "in_task", False):
        return 1
    return STARTUP_THREADS


def map_at_once(fn: Callable[[int], T], n: int, tasks: int) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, the items dealt in turn to up to ``tasks`` tasks run at once
    (:func:`run_at_once`); all in this thread when ``tasks < 2``."""
    tasks = min(tasks, n)
    if tasks < 2:
        return [fn(k) for k in range(n)]
    groups = [range(k, n, tasks) for k in range(tasks)]

    def task(group: range) -> Callable[[], list[T]]:
        return lambda: [fn(k) for k in group]

    out: list[T | None] = [None] * n
    for k, values in enumerate(run_at_once([task(g) for g in groups])):
        out[k::tasks] = values  # group k held items k, k + tasks, ...
    return cast(list[T], out)


# A no-grad field query splits into parts of whole multiples of this many points (except the last): large enough to
# keep each part's GEMMs on their large-batch kernels and its starts on whole SIMD vectors.
QUERY_PART_ROWS = 4096


def query_in_parts(fn: Callable[[Tensor], Tensor], x: Tensor, parts: int | None = None) -> Tensor:
    """``fn(x)`` for a no-grad query of a field at many points ``x`` (N, 3) on the CPU, as up to ``parts`` slices of
    :data:`QUERY_PART_ROWS`-point multiples at once, one thread each (None: :data:`STARTUP_THREADS`). A field computes
    each point on its own, so the output has the bits of ``fn(x)`` on one thread; a query with grad, on another
    device or too small to split runs as ``fn(x)``."""
    parts = STARTUP_THREADS if parts is None else parts
    parts = min(parts, x.shape[0] // QUERY_PART_ROWS)
    if parts < 2 or torch.is_grad_enabled() or x.device.type != "cpu":
        return fn(x)
    return forward_in_parts(lambda rows: fn(x[rows]), x.shape[0], parts, align=QUERY_PART_ROWS)


def _hook(module: nn.Module, when: Callable, batch_coupled: bool) -> None:
    """Hooks that run ``module`` on one thread whenever ``when(inputs)`` holds, restoring the count after it; a
    batch-coupled one also meets the other parts of a split forward (:class:`RowJoin`)."""

    def saved() -> list[int]:  # this thread's counts to restore for this module
        stacks = _local.__dict__.setdefault("saved", {})
        return stacks.setdefault(id(module), [])

    def pre(_module, inputs):
        if when(inputs):
            saved().append(torch.get_num_threads())
            torch.set_num_threads(1)

    def post(_module, inputs, output):
        counts = saved()
        if counts:
            torch.set_num_threads(counts.pop())
        join = getattr(_local, "join", None)
        if batch_coupled and join is not None and when(inputs):
            return join.exchange(_local.part, module, inputs[0])
        return None

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def pin_thread_sensitive_layers(model: nn.Module) -> int:
    """Make ``model``'s CPU output independent of the thread count and of how its batch is split: its linear layers
    fed one vector per image (2-D inputs, a few rows) run on one thread and are batch-coupled; its 1x1 convolutions
    run on one thread. Idempotent. Returns the layers hooked."""
    if model in _pinned:
        return 0
    pinned = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _hook(module, lambda inputs: inputs[0].dim() == 2, batch_coupled=True)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            _hook(module, lambda inputs: True, batch_coupled=False)
        else:
            continue
        pinned += 1
    _pinned.add(model)
    return pinned
