"""Ctrl-C at a safe point: :func:`deferred_interrupt` holds SIGINT off until a block ends.

A KeyboardInterrupt raised in the middle of a training step (after the forward pass counted its
batch in BatchNorm's ``num_batches_tracked`` and running statistics, or after the optimizer moved
the weights but before the position advanced) would save a ``last.pt`` whose weights and position
disagree, and the resumed run would train that batch twice. Training steps and the end-of-epoch
bookkeeping therefore run inside :func:`deferred_interrupt`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with SIGINT recorded instead of raised; raise ``KeyboardInterrupt`` after it.

    Only where Python's own SIGINT handler is installed, in the main thread (elsewhere signals
    cannot be handled, or the process owner chose its own handler): the block then runs as is. The
    previous handler is always put back. An exception raised by the block wins over the interrupt.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
