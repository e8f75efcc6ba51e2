"""The CSI Node service: one cachefs mount per volume on this node, bind-mounted into each
pod's target path, and stopped (after a write-back flush) when its last target goes away.

Volume mounts run as their own processes (`cachefs mount --background` starts a new session),
so a restarted driver leaves running pods' mounts alone and finds them again in its state.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import grpc

from cachefs.mountinfo import is_mounted

from . import csi_pb2, csi_pb2_grpc
from .csi_errors import CSIError, handled, require, scrub
from .csi_names import (
    CONTEXT_CACHE_GROUP,
    CONTEXT_MOUNT_OPTIONS,
    CONTEXT_SUBDIR,
    SECRET_ACCESS_KEY,
    SECRET_META_URL,
    SECRET_SECRET_KEY,
    TOPOLOGY_KEY,
)
from .csi_state import State, Target
from .helper import translate

log = logging.getLogger("cachefs.csi.node")
Code = grpc.StatusCode
RPC = csi_pb2.NodeServiceCapability.RPC


def _run(cmd: list[str], secrets: dict[str, str], env: dict[str, str] | None = None,
         timeout: float = 300) -> None:
    """Run a command; a failure is a CSIError whose message has every secret value removed."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, **(env or {})))
    if res.returncode != 0:
        out = (res.stderr or res.stdout).strip().splitlines()
        raise CSIError(Code.INTERNAL, scrub(f"{os.path.basename(cmd[0])} failed: {out[-1] if out else ''}", secrets))


def _cachefs(*args: str) -> list[str]:
    return [sys.executable, "-m", "cachefs.cli", *args]


def _subdir(value: str) -> str:
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CSIError(Code.INVALID_ARGUMENT, f"volume_context {CONTEXT_SUBDIR} must not contain '..'")
    return "/".join(parts)


@handled
class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, state: State, node_id: str, max_volumes: int, cache_dir: str,
                 flush_timeout: float, group_ip: str = "", group_port: int = 9601) -> None:
        self.state = state
        self.node_id = node_id
        self.max_volumes = max_volumes
        self.cache_dir = cache_dir
        # a volume mount in a cache group listens on this node's (pod's) address, a port of its own
        self.group_ip = group_ip
        self.group_port = group_port
        self.flush_timeout = flush_timeout

    # ---- info ---------------------------------------------------------------------------
    def NodeGetInfo(self, request, context):
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.node_id, max_volumes_per_node=self.max_volumes,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: self.node_id}))

    def NodeGetCapabilities(self, request, context):
        cap = csi_pb2.NodeServiceCapability(rpc=RPC(type=RPC.GET_VOLUME_STATS))
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[cap])

    def NodeStageVolume(self, request, context):
        raise CSIError(Code.UNIMPLEMENTED, "cachefs volumes are not staged (no STAGE_UNSTAGE_VOLUME)")

    def NodeUnstageVolume(self, request, context):
        raise CSIError(Code.UNIMPLEMENTED, "cachefs volumes are not staged (no STAGE_UNSTAGE_VOLUME)")

    # ---- publish ------------------------------------------------------------------------
    def NodePublishVolume(self, request, context):
        require(request.volume_id, "volume_id")
        require(request.target_path, "target_path")
        require(request.HasField("volume_capability"), "volume_capability")
        cap = request.volume_capability
        if cap.HasField("block"):
            raise CSIError(Code.INVALID_ARGUMENT, "block volumes are not supported: cachefs is a file system")
        secrets = dict(request.secrets)
        group = request.volume_context.get(CONTEXT_CACHE_GROUP, "")
        options = ",".join(filter(None, [request.volume_context.get(CONTEXT_MOUNT_OPTIONS, ""),
                                         *cap.mount.mount_flags, f"cache-group={group}" if group else ""]))
        try:
            translate(options)
        except ValueError as e:
            raise CSIError(Code.INVALID_ARGUMENT, str(e)) from None
        want = Target(request.volume_id, request.readonly,
                      _subdir(request.volume_context.get(CONTEXT_SUBDIR, "")), options)
        target = os.path.realpath(request.target_path)
        with self.state.target(target):
            have = self.state.targets.get(target)
            if have is not None:
                if have != want:
                    raise CSIError(Code.ALREADY_EXISTS, f"{target} is already published with other arguments")
                if is_mounted(target):
                    return csi_pb2.NodePublishVolumeResponse()
            mountpoint = self._volume_mount(want, secrets)
            source = os.path.join(mountpoint, want.subdir) if want.subdir else mountpoint
            if not os.path.isdir(source):
                if want.readonly:
                    raise CSIError(Code.NOT_FOUND, f"directory {want.subdir!r} does not exist in the volume")
                os.makedirs(source, exist_ok=True)
            os.makedirs(target, exist_ok=True)
            self.state.targets[target] = want  # recorded first: a crash leaves it to unpublish
            self.state.save()
            try:
                _run(["mount", "--bind", source, target], secrets)
                if want.readonly:
                    _run(["mount", "-o", "remount,bind,ro", target], secrets)
            except CSIError:
                subprocess.run(["umount", target], capture_output=True)
                self.state.targets.pop(target, None)
                self.state.save()
                self._release_volume(want.volume_id)
                raise
            log.info("published volume %s at %s%s", want.volume_id, target, " (read-only)" if want.readonly else "")
        return csi_pb2.NodePublishVolumeResponse()

    def _volume_mount(self, want: Target, secrets: dict[str, str]) -> str:
        """The node's cachefs mount of the volume, started when it is not running."""
        with self.state.volume_lock(want.volume_id):
            mountpoint = self.state.volumes.get(want.volume_id) or self.state.mountpoint(want.volume_id)
            if is_mounted(mountpoint):
                return mountpoint
            url = secrets.get(SECRET_META_URL, "")
            if not url:
                raise CSIError(Code.INVALID_ARGUMENT, f"secret key {SECRET_META_URL!r} is missing")
            if os.path.exists(mountpoint) and not os.path.isdir(mountpoint):
                os.unlink(mountpoint)
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)  # a dead FUSE mount
            os.makedirs(mountpoint, exist_ok=True)
            env = {"CACHEFS_META_URL": url}
            if secrets.get(SECRET_ACCESS_KEY):
                env["AWS_ACCESS_KEY_ID"] = secrets[SECRET_ACCESS_KEY]
            if secrets.get(SECRET_SECRET_KEY):
                env["AWS_SECRET_ACCESS_KEY"] = secrets[SECRET_SECRET_KEY]
            flags = ["--cache-dir", self.cache_dir, *translate(want.options)]
            if "--cache-group" in flags and "--group-listen" not in flags and "--no-sharing" not in flags:
                port = self.state.group_port(want.volume_id, self.group_port)
                flags += ["--group-listen", f"{self.group_ip or '0.0.0.0'}:{port}"]
            _run(_cachefs("mount", "-", mountpoint, "--background", "--log", self.state.log_file(want.volume_id),
                          *flags), secrets, env=env)
            self.state.volumes[want.volume_id] = mountpoint
            self.state.save()
            log.info("mounted volume %s at %s", want.volume_id, mountpoint)
            return mountpoint

    # ---- unpublish ----------------------------------------------------------------------
    def NodeUnpublishVolume(self, request, context):
        require(request.volume_id, "volume_id")
        require(request.target_path, "target_path")
        target = os.path.realpath(request.target_path)
        with self.state.target(target):
            if is_mounted(target):
                res = subprocess.run(["umount", target], capture_output=True, text=True)
                if res.returncode != 0 and is_mounted(target):
                    _run(["umount", "-l", target], {})
            if os.path.isdir(target):
                try:
                    os.rmdir(target)
                except OSError as e:
                    raise CSIError(Code.INTERNAL, f"cannot remove {target}: {e.strerror}") from None
            had = self.state.targets.pop(target, None)
            self.state.save()
            volume_id = had.volume_id if had else request.volume_id
            self._release_volume(volume_id)
            log.info("unpublished %s", target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def _release_volume(self, volume_id: str) -> None:
        """Stop the volume's mount once no target uses it (write-back data is flushed first)."""
        with self.state.volume_lock(volume_id):
            if self.state.targets_of(volume_id):
                return
            mountpoint = self.state.volumes.pop(volume_id, None)
            self.state.ports.pop(volume_id, None)
            self.state.save()
            if mountpoint is None:
                return
            if is_mounted(mountpoint):
                _run(_cachefs("umount", mountpoint, "--flush-timeout", str(self.flush_timeout)), {})
            try:
                os.rmdir(mountpoint)
            except OSError:
                pass
            log.info("stopped the mount of volume %s", volume_id)

    # ---- stats --------------------------------------------------------------------------
    def NodeGetVolumeStats(self, request, context):
        require(request.volume_id, "volume_id")
        require(request.volume_path, "volume_path")
        path = os.path.realpath(request.volume_path)
        known = self.state.targets.get(path)
        if known is None or known.volume_id != request.volume_id or not is_mounted(path):
            raise CSIError(Code.NOT_FOUND, f"volume {request.volume_id} is not published at {request.volume_path}")
        try:
            st = os.statvfs(path)
        except OSError as e:
            raise CSIError(Code.INTERNAL, f"statfs {path}: {e.strerror}") from None
        usage = csi_pb2.VolumeUsage
        return csi_pb2.NodeGetVolumeStatsResponse(usage=[
            usage(unit=usage.BYTES, total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize,
                  used=(st.f_blocks - st.f_bfree) * st.f_frsize),
            usage(unit=usage.INODES, total=st.f_files, available=st.f_favail, used=st.f_files - st.f_ffree),
        ])
