"""MXNet's parameter server on loopback: a dist_sync cluster trains in lock step; the launcher
builds the DMLC_* environment and never leaves processes behind."""
import os
import sys

import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext.training import launcher
from bmxnet_ext.training.distributed import WorkerSync, create_kvstore
from bmxnet_ext.training.records import folder_to_recordio
from train_helpers import write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "imagenet", "train.py")
QUIET_ENV = {"OMP_NUM_THREADS": "1", "PS_VERBOSE": "0"}


def _cluster_processes(port):
    """Live processes whose environment names scheduler port ``port`` (Linux /proc)."""
    marker = f"DMLC_PS_ROOT_PORT={port}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:  # gone, or not ours to read
            pass
    return found


def _zoo_ready():
    try:
        from bmxnet_ext.model_zoo import list_models
    except ImportError:
        return False
    return "meliusnet_flex" in list_models()


@pytest.mark.skipif(not _zoo_ready(), reason="train.py needs the zoo's meliusnet_flex")
@pytest.mark.parametrize("kind", ["folder", "recordio"])
def test_dist_sync_workers_end_with_identical_trained_parameters(kind, tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=7, size=10)
    batch, size = "4", "8"
    if kind == "recordio":
        # ImageRecordIter shards by bytes: here 11 and 10 of the 21 images, so with batch 1 one
        # worker runs out first and both must end the epoch together. (16 px keeps the head's
        # BatchNorm away from a single value per channel, where it passes no gradient.)
        batch, size = "1", "16"
        for split in ("train", "val"):
            folder_to_recordio(os.path.join(data, split), str(tmp_path / "rec" / split))
        data = str(tmp_path / "rec")
    out = tmp_path / "run"
    command = [sys.executable, TRAIN, "--data", data, "--model", "meliusnet_flex",
               "--model-arg", "blocks=[1,1,1,1]", "--image-size", size, "--batch-size", batch,
               "--epochs", "2", "--workers", "0", "--kvstore", "dist_sync", "--output",
               str(out), "--quiet"]
    port = launcher.free_port()
    codes = launcher.launch_local(command, num_workers=2, num_servers=1, port=port,
                                  timeout=240, env=QUIET_ENV)
    assert codes == [0, 0] and _cluster_processes(port) == []
    params = [mx.nd.load(str(out / f"worker-{rank}" / "checkpoints" / "epoch-0002" /
                             "net.params")) for rank in (0, 1)]
    assert params[0].keys() == params[1].keys()
    for key in params[0]:  # weights, and BN statistics averaged over the workers
        np.testing.assert_array_equal(params[0][key].asnumpy(), params[1][key].asnumpy(),
                                      err_msg=key)
    # the initializer sets gamma = 1, beta = 0 and biases = 0: training moved every one of them
    for key, value in params[0].items():
        initial = 1.0 if key.endswith("gamma") else 0.0
        if key.endswith(("gamma", "beta", "bias")):
            assert not np.all(value.asnumpy() == initial), key
    logs = [(out / f"worker-{rank}" / "log.csv").read_text().splitlines() for rank in (0, 1)]
    assert len(logs[0]) == len(logs[1]) == 3


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="looks for leftovers in /proc")
def test_a_failing_worker_stops_the_whole_cluster():
    port = launcher.free_port()
    with pytest.raises(launcher.ClusterError, match=r"status \[?3"):
        launcher.launch_local([sys.executable, "-c", "import sys; sys.exit(3)"], num_workers=2,
                              port=port, timeout=60, env=QUIET_ENV, grace=1)
    assert _cluster_processes(port) == []


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="looks for leftovers in /proc")
def test_a_hanging_cluster_is_stopped_at_the_timeout():
    port = launcher.free_port()
    with pytest.raises(launcher.ClusterError, match="within 2"):
        launcher.launch_local([sys.executable, "-c", "import time; time.sleep(60)"],
                              num_workers=1, port=port, timeout=2, env=QUIET_ENV, grace=1)
    assert _cluster_processes(port) == []


def test_role_env_has_every_dmlc_variable():
    env = launcher.role_env("server", "10.0.0.1", 9000, 2, 3, interface="eth1")
    assert env == {"DMLC_ROLE": "server", "DMLC_PS_ROOT_URI": "10.0.0.1",
                   "DMLC_PS_ROOT_PORT": "9000", "DMLC_NUM_SERVER": "2",
                   "DMLC_NUM_WORKER": "3", "DMLC_INTERFACE": "eth1"}


@pytest.mark.parametrize("args,message", [(("boss", "h", 1, 1, 1), "role"),
                                          (("worker", "h", 1, 0, 1), "at least one server")])
def test_role_env_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        launcher.role_env(*args)


def test_ssh_plan_runs_a_server_and_a_worker_per_host():
    plan = launcher.ssh_commands(["python", "train.py", "--kvstore", "dist_sync"],
                                 ["n1", "n2"], "10.0.0.1", 9000, cwd="/work dir")
    assert [(role, host) for role, host, _ in plan] == [
        ("scheduler", None), ("server", "n1"), ("server", "n2"), ("worker", "n1"),
        ("worker", "n2")]
    role, host, argv = plan[-1]
    assert argv[:4] == ["ssh", "-o", "BatchMode=yes", "n2"]
    remote = argv[4]
    assert remote.startswith("cd '/work dir' && env DMLC_ROLE=worker DMLC_PS_ROOT_URI=10.0.0.1 "
                             "DMLC_PS_ROOT_PORT=9000 DMLC_NUM_SERVER=2 DMLC_NUM_WORKER=2 ")
    assert remote.endswith("python train.py --kvstore dist_sync")


def test_dist_kvstore_without_launcher_environment_is_refused(monkeypatch):
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    with pytest.raises(RuntimeError, match="launch.py"):
        create_kvstore("dist_sync")
    with pytest.raises(ValueError, match="unknown kvstore"):
        create_kvstore("nccl")


def test_single_process_sync_is_a_pass_through():
    sync = WorkerSync(None)
    assert sync.step(1.5, 4, True) == (1.5, 4, True)
    assert (sync.rank, sync.num_workers) == (0, 1)


class _FakeDistStore:
    type, rank, num_workers = "dist_sync", 0, 1


def test_fit_refuses_a_trainer_that_reduces_on_its_own_kvstore():
    from mxnet import gluon

    from bmxnet_ext.training.fit import fit

    net = gluon.nn.Dense(2, in_units=3)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", kvstore=_FakeDistStore())
    with pytest.raises(ValueError, match="without a kvstore"):
        fit(net, trainer, [], 1, kvstore=_FakeDistStore(), quiet=True)
