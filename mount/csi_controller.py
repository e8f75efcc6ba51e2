"""The CSI Controller service: a dynamically provisioned volume is a directory at the root of a
cachefs volume, named after the request (so CreateVolume is idempotent by name)."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from cachefs.errors import CachefsError, FSError
from cachefs.meta import BaseMeta, open_meta
from cachefs.meta.types import ROOT_INODE, TYPE_DIR

from . import csi_pb2, csi_pb2_grpc
from .csi_errors import CSIError, handled, require
from .csi_names import CONTEXT_CACHE_GROUP, CONTEXT_MOUNT_OPTIONS, CONTEXT_SUBDIR, PARAMETERS, SECRET_META_URL
from .helper import translate

log = logging.getLogger("cachefs.csi.controller")
Code = grpc.StatusCode
RPC = csi_pb2.ControllerServiceCapability.RPC


@contextlib.contextmanager
def _meta(secrets: dict[str, str]) -> Iterator[BaseMeta]:
    url = secrets.get(SECRET_META_URL, "")
    if not url:
        raise CSIError(Code.INVALID_ARGUMENT, f"secret key {SECRET_META_URL!r} is missing")
    meta = open_meta(url)
    try:
        meta.load()
        yield meta
    finally:
        meta.close_engine()


def _dir_name(volume_id: str) -> bytes:
    if not volume_id or "/" in volume_id or volume_id in (".", "..") or len(volume_id) > 255:
        raise CSIError(Code.INVALID_ARGUMENT, f"bad volume name {volume_id!r}")
    return volume_id.encode()


def _check_capabilities(caps: Iterable[Any]) -> str:
    """'' when every capability (a repeated VolumeCapability) can be served, else why not."""
    for cap in caps:
        if cap.HasField("block"):
            return "block volumes are not supported"
        if not cap.HasField("mount"):
            return "an access type (mount) is required"
    return ""


def remove_tree(meta: BaseMeta, parent: int, name: bytes) -> None:
    """Remove a directory and everything under it (the data goes to the volume's trash; any
    mount of the volume deletes the objects in the background)."""
    ino, attr = meta.lookup(parent, name)
    if attr.type == TYPE_DIR:
        for child, _cino, _cattr in meta.readdir(ino):
            remove_tree(meta, ino, child)
        meta.rmdir(parent, name)
    else:
        meta.unlink(parent, name)


@handled
class ControllerService(csi_pb2_grpc.ControllerServicer):
    def ControllerGetCapabilities(self, request, context):
        cap = csi_pb2.ControllerServiceCapability(rpc=RPC(type=RPC.CREATE_DELETE_VOLUME))
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[cap])

    def CreateVolume(self, request, context):
        require(request.name, "name")
        require(len(request.volume_capabilities), "volume_capabilities")
        why = _check_capabilities(request.volume_capabilities)
        if why:
            raise CSIError(Code.INVALID_ARGUMENT, why)
        unknown = sorted(set(request.parameters) - set(PARAMETERS))
        if unknown:
            raise CSIError(Code.INVALID_ARGUMENT, f"unknown StorageClass parameters: {', '.join(unknown)}")
        options = request.parameters.get(CONTEXT_MOUNT_OPTIONS, "")
        group = request.parameters.get(CONTEXT_CACHE_GROUP, "")
        try:
            translate(",".join(filter(None, [options, f"cache-group={group}" if group else ""])))
        except ValueError as e:
            raise CSIError(Code.INVALID_ARGUMENT, str(e)) from None
        if request.HasField("volume_content_source"):
            raise CSIError(Code.INVALID_ARGUMENT, "volumes from snapshots or clones are not supported")
        name = _dir_name(request.name)
        with _meta(dict(request.secrets)) as meta:
            try:
                _ino, attr = meta.lookup(ROOT_INODE, name)
                if attr.type != TYPE_DIR:
                    raise CSIError(Code.ALREADY_EXISTS, f"{request.name} exists and is not a directory")
            except FSError as e:
                if e.errno != errno.ENOENT:
                    raise
                try:
                    meta.mknod(ROOT_INODE, name, TYPE_DIR, 0o777, 0, 0)
                except FSError as e2:
                    if e2.errno != errno.EEXIST:  # created by a concurrent call: fine
                        raise
                log.info("created volume %s", request.name)
        context_ = {CONTEXT_SUBDIR: request.name}
        if options:
            context_[CONTEXT_MOUNT_OPTIONS] = options
        if group:
            context_[CONTEXT_CACHE_GROUP] = group
        return csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(
            volume_id=request.name, capacity_bytes=request.capacity_range.required_bytes,
            volume_context=context_))

    def DeleteVolume(self, request, context):
        require(request.volume_id, "volume_id")
        name = _dir_name(request.volume_id)
        with _meta(dict(request.secrets)) as meta:
            try:
                remove_tree(meta, ROOT_INODE, name)
            except FSError as e:
                if e.errno != errno.ENOENT:
                    raise
                return csi_pb2.DeleteVolumeResponse()  # gone already: deleting twice is fine
        log.info("deleted volume %s", request.volume_id)
        return csi_pb2.DeleteVolumeResponse()

    def ControllerPublishVolume(self, request, context):
        raise CSIError(Code.UNIMPLEMENTED, "no attach step: cachefs volumes are mounted by the node service")

    def ControllerUnpublishVolume(self, request, context):
        raise CSIError(Code.UNIMPLEMENTED, "no attach step: cachefs volumes are mounted by the node service")

    def ValidateVolumeCapabilities(self, request, context):
        require(request.volume_id, "volume_id")
        require(len(request.volume_capabilities), "volume_capabilities")
        if request.secrets.get(SECRET_META_URL):
            with _meta(dict(request.secrets)) as meta:
                try:
                    _ino, attr = meta.lookup(ROOT_INODE, _dir_name(request.volume_id))
                except (FSError, CachefsError):
                    attr = None
                if attr is None or attr.type != TYPE_DIR:
                    raise CSIError(Code.NOT_FOUND, f"volume {request.volume_id} does not exist")
        why = _check_capabilities(request.volume_capabilities)
        if why:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=why)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters)
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)
