"""`cachefs csi --endpoint unix:///PATH/csi.sock`: the Kubernetes CSI driver (cachefs.mount.csi)."""

from __future__ import annotations

import argparse
import socket

from cachefs.errors import ConfigError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("csi", help="run the Kubernetes CSI driver", description="Serve the CSI driver "
                       "csi.cachefs.io (Identity, Node, Controller) over gRPC on a unix socket.")
    p.add_argument("--endpoint", required=True, metavar="unix:///PATH/csi.sock")
    p.add_argument("--node-id", default=socket.gethostname(), help="this node's name (default: hostname)")
    p.add_argument("--mode", choices=["all", "node", "controller"], default="all",
                   help="services to offer: node (DaemonSet), controller (Deployment) or all (default)")
    p.add_argument("--state-dir", default="/var/lib/cachefs/csi", help="volume mounts and the targets "
                   "published from them (default /var/lib/cachefs/csi)")
    p.add_argument("--cache-dir", default="/var/cache/cachefs", help="cache dir for volume mounts "
                   "(default /var/cache/cachefs; a cache-dir mount option overrides it)")
    p.add_argument("--max-volumes", type=int, default=64, help="volumes per node (default 64)")
    p.add_argument("--flush-timeout", type=float, default=300.0,
                   help="seconds a write-back volume mount may flush when its last pod leaves (default 300)")
    p.add_argument("--group-ip", default="", help="this node's (pod's) address, which volume mounts in a "
                   "cache group listen on (the DaemonSet passes the pod IP; default: all addresses)")
    p.add_argument("--group-port", type=int, default=9601, help="the first port of the volume mounts' cache "
                   "group services on this node (default 9601; one port per volume)")
    p.add_argument("--log", default="", help="log file (default: stderr)")


def run(a: argparse.Namespace) -> int:
    import logging

    from cachefs.mount.csi import serve

    if a.max_volumes < 1 or a.flush_timeout < 0:
        raise ConfigError("--max-volumes must be at least 1 and --flush-timeout >= 0")
    handler = logging.FileHandler(a.log) if a.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if not 0 < a.group_port < 65536:
        raise ConfigError("--group-port must be a port number")
    return serve(a.endpoint, a.node_id, a.state_dir, a.cache_dir, a.mode, a.max_volumes, a.flush_timeout,
                 group_ip=a.group_ip, group_port=a.group_port)
