"""`cachefs csi`: the CSI driver's gRPC server on a unix socket (Identity, Node, Controller)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from cachefs import __version__
from cachefs.errors import ConfigError

from . import csi_pb2, csi_pb2_grpc
from .csi_controller import ControllerService
from .csi_errors import handled
from .csi_names import DRIVER_NAME
from .csi_node import NodeService
from .csi_state import State

log = logging.getLogger("cachefs.csi")
Service = csi_pb2.PluginCapability.Service


@handled
class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, controller: bool) -> None:
        self.controller = controller

    def GetPluginInfo(self, request, context):
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request, context):
        caps = [csi_pb2.PluginCapability(service=Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS))]
        if self.controller:
            caps.insert(0, csi_pb2.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    def Probe(self, request, context):
        return csi_pb2.ProbeResponse(ready={"value": True})


def socket_path(endpoint: str) -> str:
    if not endpoint.startswith("unix://"):
        raise ConfigError(f"bad --endpoint {endpoint!r}: expected unix:///PATH/csi.sock")
    path = endpoint[len("unix://") :]
    if not path.startswith("/"):
        raise ConfigError(f"bad --endpoint {endpoint!r}: the socket path must be absolute")
    return path


def serve(endpoint: str, node_id: str, state_dir: str, cache_dir: str, mode: str = "all",
          max_volumes: int = 64, flush_timeout: float = 300.0, workers: int = 8, group_ip: str = "",
          group_port: int = 9601) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    path = socket_path(endpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # left by a driver that was killed
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csi"))
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(mode in ("all", "controller")), server)
    if mode in ("all", "node"):
        try:
            state = State(state_dir)
        except OSError as e:
            raise ConfigError(f"cannot use state directory {state_dir}: {e.strerror}") from None
        node = NodeService(state, node_id, max_volumes, cache_dir, flush_timeout, group_ip, group_port)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    if mode in ("all", "controller"):
        csi_pb2_grpc.add_ControllerServicer_to_server(ControllerService(), server)
    if not server.add_insecure_port(f"unix://{path}"):
        raise ConfigError(f"cannot listen on {endpoint}")
    server.start()
    log.info("%s %s serving %s on %s (node %s)", DRIVER_NAME, __version__, mode, endpoint, node_id)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=10).wait()
    log.info("stopped")
    return 0
