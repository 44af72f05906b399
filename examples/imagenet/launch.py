#!/usr/bin/env python
r"""Start MXNet's parameter server (scheduler, servers, workers) for distributed training.

On this machine (loopback; to try it out or test):
    python examples/imagenet/launch.py --local 2 -- \
        python examples/imagenet/train.py --kvstore dist_sync --epochs 1
On several machines over ssh (passwordless ssh, same environment and directory everywhere;
--scheduler-host is this machine's address as the hosts see it; one server and one worker per
host; every worker reads a disjoint shard of the training data):
    python examples/imagenet/launch.py --hosts node1,node2 --scheduler-host 10.0.0.1 -- \
        python examples/imagenet/train.py --model meliusnet22 --data /data/imagenet \
        --gpus 0,1 --kvstore dist_sync --output /shared/runs/m22
"""
import argparse
import signal
import sys

from bmxnet_ext.training.launcher import ClusterError, launch_local, launch_ssh


def _parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", type=int, metavar="N",
                       help="run N workers, the servers and the scheduler on 127.0.0.1")
    where.add_argument("--hosts", help="comma-separated ssh hosts, one worker on each")
    p.add_argument("--servers", type=int, default=None,
                   help="parameter servers (default: 1 locally, one per host over ssh)")
    p.add_argument("--scheduler-host", default=None,
                   help="with --hosts: this machine's address reachable from every host")
    p.add_argument("--port", type=int, default=None, help="scheduler port (default: a free one)")
    p.add_argument("--interface", default=None,
                   help="with --hosts: network interface ps-lite uses (DMLC_INTERFACE)")
    p.add_argument("--python", default="python", help="with --hosts: remote Python interpreter")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop everything after this many seconds (default: no limit)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="the worker command, after --")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    # SIGTERM (e.g. a batch system cancelling the job) unwinds like Ctrl-C: the cluster is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("launch.py: error: give the worker command after --", file=sys.stderr)
        return 2
    try:
        if args.local:
            launch_local(command, num_workers=args.local, num_servers=args.servers or 1,
                         port=args.port, timeout=args.timeout)
        else:
            if not args.scheduler_host:
                print("launch.py: error: --hosts needs --scheduler-host", file=sys.stderr)
                return 2
            launch_ssh(command, args.hosts.split(","), args.scheduler_host, port=args.port,
                       num_servers=args.servers, interface=args.interface, python=args.python,
                       timeout=args.timeout)
    except ClusterError as err:
        print(f"launch.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
