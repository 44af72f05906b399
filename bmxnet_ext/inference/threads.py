"""Calling Gluon networks from several threads on MXNet 1.9.1.

MXNet 1.9.1 deadlocks when several Python threads push operators at once: threads calling one
hybridized block (even a float one with no ``bmx_*`` operator), or each its own non-hybridized
network, end up waiting in ``WaitForVar`` for an operator the engine never runs. The cure is to
push one call's operators at a time, under one process-wide lock:

- :func:`push_lock` is that lock as a context manager, for code that calls its own networks::

      with bmxnet_ext.push_lock():
          y = net(x)          # pushes the operators; the engine computes them later
      y.asnumpy()             # waiting for the result happens outside the lock

- :class:`ThreadSafeBlock` wraps a block so that every call takes the lock;
  :func:`~bmxnet_ext.convert_to_xnor` and :func:`~bmxnet_ext.load_xnor` return networks
  wrapped in it.

With MXNet's default threaded engine a push only queues work, so calls still compute
concurrently. Under ``MXNET_ENGINE_TYPE=NaiveEngine`` pushing an operator *is* running it: the
lock then serializes whole forward passes, and threads add no throughput (each call still runs
its own operators multi-threaded where they are).
"""
import contextlib
import threading

from mxnet.gluon import HybridBlock

__all__ = ["push_lock", "ThreadSafeBlock"]

# Reentrant: a guarded network may call another guarded network.
_PUSH_LOCK = threading.RLock()


@contextlib.contextmanager
def push_lock():
    """Holds the process-wide lock under which guarded networks push their operators."""
    with _PUSH_LOCK:
        yield


class ThreadSafeBlock(HybridBlock):
    """``block`` behind :func:`push_lock`: several threads may call it at once.

    It computes exactly what ``block`` computes, hybridizes and exports like it (the exported
    graph and parameter names are ``block``'s own), and passes attribute reads through to it
    (``wrapped.features`` is ``block.features``). The wrapped block is ``wrapped.block``.
    """

    def __init__(self, block):
        super().__init__(prefix=block.prefix, params=None)
        self.block = block

    def forward(self, x, *args):
        with _PUSH_LOCK:
            return super().forward(x, *args)

    def hybrid_forward(self, F, x, *args):
        return self.block(x, *args)

    def __getattr__(self, name):
        # Only reached for names this wrapper lacks; private names are not passed through, so
        # Gluon's own bookkeeping never reads the wrapped block's by mistake.
        block = self.__dict__.get("_children", {}).get("block")
        if block is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(block, name)

    def __repr__(self):
        return f"{type(self).__name__}(\n  {repr(self.block)}\n)"
