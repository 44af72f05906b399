"""Starting MXNet's parameter server: one scheduler, servers and workers, with the ``DMLC_*``
environment, on this machine (loopback, for tests and for trying it out) or over ssh.

Every process gets ``DMLC_ROLE`` (scheduler / server / worker), ``DMLC_PS_ROOT_URI`` and
``DMLC_PS_ROOT_PORT`` (the scheduler's address), ``DMLC_NUM_SERVER`` and ``DMLC_NUM_WORKER``.
Scheduler and servers are ``python -c "import mxnet"``: importing MXNet with a non-worker role runs
that role until the workers finish. Workers run the given command (a training script whose
kvstore is ``dist_sync`` or ``dist_device_sync``); MXNet assigns their ranks.

Real use over ssh (passwordless ssh to every host, the same Python environment and working
directory on each, and a scheduler address every host can reach)::

    python examples/imagenet/launch.py --hosts node1,node2 --scheduler-host 10.0.0.1 \\
        -- python examples/imagenet/train.py --model meliusnet22 --data /data/imagenet \\
        --kvstore dist_sync --gpus 0,1
"""
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

__all__ = ["free_port", "role_env", "ClusterError", "launch_local", "ssh_commands",
           "launch_ssh"]

_SERVER_COMMAND = [sys.executable, "-c", "import mxnet"]


class ClusterError(RuntimeError):
    """A worker failed, or the cluster did not finish in time; every process was stopped."""


def free_port(host="127.0.0.1"):
    """A TCP port on ``host`` that was free a moment ago (for the scheduler)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def role_env(role, scheduler_host, port, num_servers, num_workers, interface=None):
    """The ``DMLC_*`` variables of one process of the cluster."""
    if role not in ("scheduler", "server", "worker"):
        raise ValueError(f"role must be scheduler, server or worker, got {role!r}")
    if num_servers < 1 or num_workers < 1:
        raise ValueError(f"a cluster needs at least one server and one worker, got "
                         f"{num_servers} and {num_workers}")
    env = {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": str(scheduler_host),
           "DMLC_PS_ROOT_PORT": str(port), "DMLC_NUM_SERVER": str(num_servers),
           "DMLC_NUM_WORKER": str(num_workers)}
    if interface:
        env["DMLC_INTERFACE"] = interface  # the network interface ps-lite binds on
    return env


def _start(argv, env, cwd=None):
    # own session: the whole process tree can be signalled at once
    return subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)


def _stop(processes, grace=5.0):
    for process in processes:
        if process.poll() is None:
            _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()


def _signal(process, sig):
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _supervise(workers, others, timeout, grace):
    """Waits for the workers; stops everything on failure, timeout or interruption."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(w.poll() is None for w in workers):
            failed = [w for w in workers if w.poll() not in (None, 0)]
            if failed:
                raise ClusterError(f"a worker exited with status {failed[0].returncode}; "
                                   "stopped the cluster")
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"the cluster did not finish within {timeout} s; stopped it")
            time.sleep(0.1)
        codes = [w.returncode for w in workers]
        if any(codes):
            raise ClusterError(f"workers exited with status {codes}; stopped the cluster")
        # scheduler and servers leave once the workers have finalized; wait a little for that
        end = time.monotonic() + grace
        while any(p.poll() is None for p in others) and time.monotonic() < end:
            time.sleep(0.1)
        return codes
    finally:
        _stop(workers + others)


def launch_local(worker_command, num_workers=2, num_servers=1, port=None, timeout=None,
                 env=None, cwd=None, grace=10.0):
    """Runs a whole cluster on 127.0.0.1 and waits for it.

    Parameters
    ----------
    worker_command : list of str
        argv of each worker.
    num_workers, num_servers : int
    port : int, optional
        Scheduler port; a free one by default.
    timeout : float, optional
        Seconds before everything is stopped and :class:`ClusterError` raised.
    env : dict, optional
        Extra environment for every process (e.g. ``OMP_NUM_THREADS``).

    Returns
    -------
    list of int
        The workers' exit statuses (all 0; anything else raises :class:`ClusterError`). No
        process outlives the call.
    """
    port = port or free_port()
    base = dict(os.environ, **(env or {}))

    def spawn(role, argv):
        return _start(argv, dict(base, **role_env(role, "127.0.0.1", port, num_servers,
                                                  num_workers)), cwd)

    others, workers = [], []
    try:
        others.append(spawn("scheduler", _SERVER_COMMAND))
        others += [spawn("server", _SERVER_COMMAND) for _ in range(num_servers)]
        workers += [spawn("worker", list(worker_command)) for _ in range(num_workers)]
    except BaseException:
        _stop(workers + others)
        raise
    return _supervise(workers, others, timeout, grace)


def ssh_commands(worker_command, hosts, scheduler_host, port, num_servers=None, cwd=None,
                 interface=None, python="python"):
    """``[(role, host, argv)]`` of a cluster over ssh: the scheduler on this machine, one server
    per host (or ``num_servers``, round robin) and one worker per host.

    ``scheduler_host`` is this machine's address as the hosts reach it; ``cwd`` the directory
    the remote commands run in (the current one by default); ``python`` the remote interpreter.
    """
    if not hosts:
        raise ValueError("ssh_commands needs at least one host")
    num_servers = num_servers or len(hosts)
    cwd = cwd or os.getcwd()
    plan = [("scheduler", None, list(_SERVER_COMMAND))]
    remote_server = [python, "-c", "import mxnet"]
    roles = [("server", hosts[i % len(hosts)], remote_server) for i in range(num_servers)]
    roles += [("worker", host, list(worker_command)) for host in hosts]
    for role, host, argv in roles:
        env = role_env(role, scheduler_host, port, num_servers, len(hosts), interface)
        remote = " ".join([f"cd {shlex.quote(cwd)} &&", "env"]
                          + [f"{k}={shlex.quote(v)}" for k, v in env.items()]
                          + [shlex.quote(a) for a in argv])
        plan.append((role, host, ["ssh", "-o", "BatchMode=yes", host, remote]))
    return plan


def launch_ssh(worker_command, hosts, scheduler_host, port=None, num_servers=None, cwd=None,
               interface=None, python="python", timeout=None, grace=30.0):
    """Runs a cluster over ssh (see :func:`ssh_commands`) and waits for its workers."""
    port = port or free_port("0.0.0.0")
    plan = ssh_commands(worker_command, hosts, scheduler_host, port, num_servers, cwd,
                        interface, python)
    workers, others = [], []
    try:
        for role, host, argv in plan:
            if role == "scheduler":
                env = dict(os.environ, **role_env(role, scheduler_host, port,
                                                  num_servers or len(hosts), len(hosts),
                                                  interface))
                others.append(_start(argv, env))
            else:
                (workers if role == "worker" else others).append(_start(argv, None))
    except BaseException:
        _stop(workers + others)
        raise
    return _supervise(workers, others, timeout, grace)
