"""Inside a training process: kvstores, and keeping workers in lock step.

Synchronous data parallelism over MXNet's parameter server (``dist_sync``,
``dist_device_sync``) needs every worker to take the same steps: :meth:`WorkerSync.step`
all-reduces each step's loss and "I still have data" flag, so a NaN on one worker stops all of
them and an epoch ends for all when the first shard runs out;
:meth:`WorkerSync.average_aux_states` makes BatchNorm's running statistics (which no gradient
synchronizes) equal across devices and workers. The processes are started by
:mod:`bmxnet_ext.training.launcher`.
"""
import os

import mxnet as mx
from mxnet import nd

__all__ = ["KVSTORES", "create_kvstore", "is_distributed", "WorkerSync"]

KVSTORES = ("local", "device", "dist_sync", "dist_device_sync")

# Keys of the synchronization arrays: small enough for ps-lite's server hashing (key * 9973 must
# fit an int32). _STEP_KEY carries a step's (loss, samples, has data); parameter i uses
# _PARAM_KEY + i for broadcasting it, summing its gradient and averaging it (BN statistics).
_STEP_KEY = 100_000
_PARAM_KEY = _STEP_KEY + 1
_MAX_PARAMS = 50_000


def is_distributed(kvstore):
    """Whether ``kvstore`` (a name or a KVStore) is one of the parameter-server kvstores."""
    name = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
    return name.startswith("dist")


def create_kvstore(name):
    """The ``kvstore`` argument for :class:`gluon.Trainer`: the name itself for single-machine
    stores (the Trainer creates them, or none for a single device), a created
    ``mx.kv.KVStore`` for distributed ones (the training loop needs its rank and size).

    Distributed stores need the ``DMLC_*`` environment of a process started by
    :mod:`bmxnet_ext.training.launcher`; without it this raises instead of waiting for a scheduler.
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
                           "examples/imagenet/launch.py (bmxnet_ext.training.launcher)")
    return mx.kv.create(name)


class WorkerSync:
    """Keeps the workers of a distributed kvstore in lock step; a no-op across workers for
    ``kvstore=None`` or a single-machine kvstore.

    Distributed training goes through this class instead of ``gluon.Trainer``'s own kvstore
    use: MXNet 1.9.1's ``Trainer`` initializes the distributed store with ``broadcast``, which was
    seen to race (a worker pulled a key before the server held it, crashing the server or
    leaving one worker with different weights). Here every key is initialized in one collective
    call, rank 0 confirms the server holds them before anyone goes on, and each exchange is a
    plain push followed by a pull. The trainer then only applies updates
    (:meth:`gluon.Trainer.update`); see :func:`bmxnet_ext.training.recipe.make_trainer`.

    Every worker must make the same calls in the same order.
    """

    def __init__(self, kvstore=None):
        self.kvstore = kvstore if kvstore is not None and is_distributed(kvstore) else None
        self.num_workers = self.kvstore.num_workers if self.kvstore else 1
        self.rank = self.kvstore.rank if self.kvstore else 0
        self._params = None

    @property
    def distributed(self):
        """Whether there are other workers to keep in step with."""
        return self.kvstore is not None

    def setup(self, net):
        """Creates the keys for ``net``'s parameters and gives every worker rank 0's values of
        them (collective; call once, after loading any checkpoint)."""
        self._params = list(net.collect_params().values())
        if not self.kvstore:
            return
        if len(self._params) > _MAX_PARAMS:
            raise ValueError(f"{len(self._params)} parameters exceed the {_MAX_PARAMS} keys "
                             "WorkerSync reserves")
        keys = [_STEP_KEY] + [_PARAM_KEY + i for i in range(len(self._params))]
        zeros = [nd.zeros(3)] + [nd.zeros(p.shape, dtype=p.dtype) for p in self._params]
        self.kvstore.init(keys, zeros)
        if self.rank == 0:
            # the server answers rank 0's pull after its init push: the keys exist from here on
            self.kvstore.pull(keys, out=zeros)
            nd.waitall()
        self.kvstore._barrier()
        for i, param in enumerate(self._params):
            value = param.list_data()[0].copyto(mx.cpu())
            if self.rank != 0:
                value[:] = 0
            self._sum(_PARAM_KEY + i, value)
            param.set_data(value)

    def _sum(self, key, value):
        self.kvstore.push(key, value)
        self.kvstore.pull(key, out=value)
        return value

    def step(self, loss_sum, samples, has_data):
        """``(loss sum, samples, every worker has data)`` of this step over all workers."""
        if not self.kvstore:
            return loss_sum, samples, has_data
        value = self._sum(_STEP_KEY, nd.array([loss_sum, samples, float(has_data)]))
        total_loss, total_samples, with_data = value.asnumpy().tolist()
        return total_loss, int(round(total_samples)), int(round(with_data)) == self.num_workers

    def allreduce_grads(self):
        """Replaces the gradient of every trainable parameter, on every device, by its sum over
        devices and workers."""
        for i, param in enumerate(self._params):
            if param.grad_req == "null":
                continue
            grads = param.list_grad()
            total = grads[0].copyto(mx.cpu())
            for grad in grads[1:]:
                total += grad.copyto(mx.cpu())
            self._sum(_PARAM_KEY + i, total)
            for grad in grads:
                total.copyto(grad)

    def average_aux_states(self, net):
        """Replaces every auxiliary state of ``net`` (parameters without gradient: BatchNorm's
        running mean and variance) by its mean over the devices holding it and all workers."""
        params = self._params if self._params is not None else list(
            net.collect_params().values())
        for i, param in enumerate(params):
            if param.grad_req != "null":
                continue
            copies = param.list_data()
            if len(copies) == 1 and not self.kvstore:
                continue
            total = copies[0].copyto(mx.cpu())
            for copy in copies[1:]:
                total += copy.copyto(mx.cpu())
            if self.kvstore:
                self._sum(_PARAM_KEY + i, total)
            param.set_data(total / (len(copies) * self.num_workers))
