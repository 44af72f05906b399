"""Inside a training process: kvstores, and keeping workers in lock step.

Synchronous data parallelism over MXNet's parameter server (``dist_sync``,
``dist_device_sync``) needs every worker to take the same steps: :meth:`WorkerSync.step` all-reduces each step's loss
and "I still have data" flag, so a NaN on one worker stops all of them and an epoch ends for all
when the first shard runs out; :meth:`WorkerSync.average_aux_states` makes BatchNorm's running
statistics (which no gradient synchronizes) equal across devices and workers. The processes are
started by :mod:`bmxnet_ext.launcher`.
"""
import os

import mxnet as mx
from mxnet import nd

__all__ = ["KVSTORES", "create_kvstore", "is_distributed", "WorkerSync"]

KVSTORES = ("local", "device", "dist_sync", "dist_device_sync")

# Keys of the synchronization arrays, above any parameter index of a gluon.Trainer (which uses
# 0..n-1) and small enough for ps-lite's server hashing (key * 9973 must fit an int32).
_STEP_KEY = 100_000


def is_distributed(kvstore):
    """Whether ``kvstore`` (a name or a KVStore) is one of the parameter-server kvstores."""
    name = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
    return name.startswith("dist")


def create_kvstore(name):
    """The ``kvstore`` argument for :class:`gluon.Trainer`: the name itself for single-machine
    stores (the Trainer creates them, or none for a single device), a created
    ``mx.kv.KVStore`` for distributed ones (the training loop needs its rank and size).

    Distributed stores need the ``DMLC_*`` environment of a process started by
    :mod:`bmxnet_ext.launcher`; without it this raises instead of waiting for a scheduler.
    """
    if name not in KVSTORES:
        raise ValueError(f"unknown kvstore {name!r}; expected one of {', '.join(KVSTORES)}")
    if not is_distributed(name):
        return name
    missing = [var for var in ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT",
                               "DMLC_NUM_SERVER", "DMLC_NUM_WORKER") if var not in os.environ]
    if missing:
        raise RuntimeError(f"kvstore {name!r} needs the parameter-server environment "
                           f"({', '.join(missing)} unset): start the workers with "
                           "examples/imagenet/launch.py (bmxnet_ext.launcher)")
    return mx.kv.create(name)


class WorkerSync:
    """Keeps the workers of a distributed kvstore in lock step; a no-op across workers for
    ``kvstore=None`` or a single-machine kvstore.

    Every worker must make the same calls in the same order (the kvstore's ``init`` and
    ``push``/``pull`` are collective).
    """

    def __init__(self, kvstore=None):
        self.kvstore = kvstore if kvstore is not None and is_distributed(kvstore) else None
        self.num_workers = self.kvstore.num_workers if self.kvstore else 1
        self.rank = self.kvstore.rank if self.kvstore else 0
        self._initialized = set()

    def _allreduce(self, key, value):
        if key not in self._initialized:
            self.kvstore.init(key, nd.zeros(value.shape))
            self._initialized.add(key)
        self.kvstore.push(key, value)
        self.kvstore.pull(key, out=value)
        return value

    def step(self, loss_sum, samples, has_data):
        """``(loss sum, samples, every worker has data)`` of this step over all workers."""
        if not self.kvstore:
            return loss_sum, samples, has_data
        value = self._allreduce(_STEP_KEY, nd.array([loss_sum, samples, float(has_data)]))
        total_loss, total_samples, with_data = value.asnumpy().tolist()
        return total_loss, int(round(total_samples)), int(round(with_data)) == self.num_workers

    def average_aux_states(self, net):
        """Replaces every auxiliary state of ``net`` (parameters without gradient: BatchNorm's
        running mean and variance) by its mean over the devices holding it and all workers."""
        aux = [p for p in net.collect_params().values() if p.grad_req == "null"]
        for offset, param in enumerate(aux):
            copies = param.list_data()
            if len(copies) == 1 and not self.kvstore:
                continue
            total = copies[0].copyto(mx.cpu())
            for copy in copies[1:]:
                total += copy.copyto(mx.cpu())
            if self.kvstore:
                total = self._allreduce(_STEP_KEY + 1 + offset, total)
            param.set_data(total / (len(copies) * self.num_workers))
