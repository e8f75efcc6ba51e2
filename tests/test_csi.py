"""The CSI driver as kubelet and the sidecars see it: a subprocess on a unix socket, driven only
through gRPC stubs, with real cachefs mounts and real bind mounts into target paths."""

from __future__ import annotations

import errno
import glob
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from .conftest import is_mounted, run_cli, wait_for
from .servers import RedisServer

grpc = pytest.importorskip("grpc")
from cachefs.mount import csi_pb2 as pb  # noqa: E402
from cachefs.mount import csi_pb2_grpc as rpc  # noqa: E402
from cachefs.mount.csi_names import DRIVER_NAME, TOPOLOGY_KEY  # noqa: E402

pytestmark = pytest.mark.mount
PASSWORD = "Csi-Redis-Pw-7f3a91"
S3_SECRET = "csi-s3-secret-4be2c07d"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def redis_pw():
    server = RedisServer(extra=["--requirepass", PASSWORD])
    yield server
    server.stop()


class Driver:
    """`cachefs csi` in a subprocess, and stubs for its three services."""

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.sock = str(tmp / "plugin" / "csi.sock")
        self.state = str(tmp / "state")
        self.log = str(tmp / "csi.log")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cachefs.cli", "csi", "--endpoint", f"unix://{self.sock}", "--node-id", "node-a",
             "--state-dir", self.state, "--cache-dir", str(self.tmp / "cache"), "--log", self.log,
             "--flush-timeout", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.identity = rpc.IdentityStub(self.channel)
        self.node = rpc.NodeStub(self.channel)
        self.controller = rpc.ControllerStub(self.channel)

    def kill(self) -> None:
        self.channel.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def driver(tmp_path):
    d = Driver(tmp_path)
    try:
        yield d
    finally:
        d.stop()
        # whatever a failed test left mounted under its directory: bind mounts first
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(str(tmp_path))]
        for mp in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)


def code_of(fn, request) -> grpc.StatusCode:
    try:
        fn(request)
    except grpc.RpcError as e:
        return e.code()
    return Code.OK


def error_of(fn, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(request)
    return e.value


def mount_cap(*flags: str, mode=pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER) -> pb.VolumeCapability:
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(mount_flags=list(flags)),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def volume(redis_pw, s3_server) -> tuple[str, dict]:
    """A Redis (with a password) + S3 volume, and the Secret a PV would carry for it."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_pw.port}/{uuid.uuid4().int % 1000}"
    run_cli("format", url, f"k{uuid.uuid4().hex[:6]}", "--storage", "s3", "--bucket",
            s3_server.bucket_url(f"b-{uuid.uuid4().hex[:12]}"), "--force")
    return url, {"metaurl": url, "access-key": "AKIDCSITEST", "secret-key": S3_SECRET}


def publish(d: Driver, target: str, secrets: dict, readonly=False, context=None, volume_id="vol-1"):
    return d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=target, volume_capability=mount_cap(), readonly=readonly,
        secrets=secrets, volume_context=context or {}))


def unpublish(d: Driver, target: str, volume_id="vol-1"):
    return d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target))


def mount_processes(state_dir: str) -> list[int]:
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in cmd and any(a.startswith(state_dir.encode()) for a in cmd):
            pids.append(int(path.split("/")[2]))
    return pids


def test_identity_node_info_and_conformance_errors(driver):
    info = driver.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME and info.vendor_version
    caps = driver.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    types = {c.service.type for c in caps}
    assert pb.PluginCapability.Service.CONTROLLER_SERVICE in types
    assert driver.identity.Probe(pb.ProbeRequest()).ready.value is True
    ni = driver.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert ni.node_id == "node-a" and ni.max_volumes_per_node > 0
    assert ni.accessible_topology.segments[TOPOLOGY_KEY] == "node-a"
    ncaps = driver.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities
    assert [c.rpc.type for c in ncaps] == [pb.NodeServiceCapability.RPC.GET_VOLUME_STATS]
    ccaps = driver.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest()).capabilities
    assert [c.rpc.type for c in ccaps] == [pb.ControllerServiceCapability.RPC.CREATE_DELETE_VOLUME]

    n, c = driver.node, driver.controller
    target = str(driver.tmp / "pod" / "vol")
    invalid = [
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(target_path=target, volume_capability=mount_cap())),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(volume_id="v", volume_capability=mount_cap())),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(volume_id="v", target_path=target)),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(
            volume_id="v", target_path=target, volume_capability=pb.VolumeCapability(
                block=pb.VolumeCapability.BlockVolume()))),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(  # no metaurl in the secrets
            volume_id="v", target_path=target, volume_capability=mount_cap())),
        (n.NodePublishVolume, pb.NodePublishVolumeRequest(
            volume_id="v", target_path=target, volume_capability=mount_cap("no-such-option"),
            secrets={"metaurl": "sqlite3:///x"})),
        (n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(target_path=target)),
        (n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id="v")),
        (n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_path=target)),
        (n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_id="v")),
        (c.CreateVolume, pb.CreateVolumeRequest(volume_capabilities=[mount_cap()])),
        (c.CreateVolume, pb.CreateVolumeRequest(name="pvc-x")),
        (c.CreateVolume, pb.CreateVolumeRequest(name="pvc-x", volume_capabilities=[mount_cap()],
                                                parameters={"bogus": "1"}, secrets={"metaurl": "sqlite3:///x"})),
        (c.DeleteVolume, pb.DeleteVolumeRequest()),
        (c.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[mount_cap()])),
        (c.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(volume_id="v")),
    ]
    for fn, req in invalid:
        assert code_of(fn, req) == Code.INVALID_ARGUMENT, (fn, req)
    stats = pb.NodeGetVolumeStatsRequest(volume_id="v", volume_path=str(driver.tmp))
    assert code_of(n.NodeGetVolumeStats, stats) == Code.NOT_FOUND
    assert code_of(n.NodeStageVolume, pb.NodeStageVolumeRequest(volume_id="v")) == Code.UNIMPLEMENTED
    assert code_of(c.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(volume_id="v")) == \
        Code.UNIMPLEMENTED
    assert not os.path.exists(target)  # nothing was created by the refused calls


def test_two_pods_read_only_restart_and_secrets(driver, redis_pw, s3_server, tmp_path):
    url, secrets = volume(redis_pw, s3_server)
    a, b = str(tmp_path / "pod-a" / "vol"), str(tmp_path / "pod-b" / "vol")
    ctx = {"subdir": "datasets", "mountOptions": "cache-size=512"}
    publish(driver, a, secrets, context=ctx)
    publish(driver, a, secrets, context=ctx)  # the same again: OK
    err = error_of(lambda r: publish(driver, a, secrets, readonly=True, context=ctx), None)
    assert err.code() == Code.ALREADY_EXISTS
    data = os.urandom(3 << 20)
    with open(os.path.join(a, "train.bin"), "wb") as f:
        f.write(data)
    publish(driver, b, secrets, readonly=True, context=ctx)
    with open(os.path.join(b, "train.bin"), "rb") as f:
        assert f.read() == data
    with pytest.raises(OSError) as e:
        open(os.path.join(b, "new"), "wb").close()
    assert e.value.errno == errno.EROFS
    assert len(mount_processes(driver.state)) == 1  # one volume mount serves both pods
    # a warmup Job inside a pod sees only the bind-mounted subdirectory: warmup still reaches the mount
    assert run_cli("warmup", a).returncode == 0
    assert "100.0%" in run_cli("warmup", a, "--check").stdout

    stats = driver.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=a))
    units = {u.unit: u for u in stats.usage}
    assert units[pb.VolumeUsage.BYTES].total > 0 and units[pb.VolumeUsage.INODES].used >= 1

    # secrets: not on any command line, not in the driver's or the mount's log, not in status
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        assert PASSWORD.encode() not in cmd and S3_SECRET.encode() not in cmd, path
    logs = [driver.log, *glob.glob(os.path.join(driver.state, "logs", "*.log"))]
    assert len(logs) == 2
    for log in logs:
        text = open(log).read()
        assert PASSWORD not in text and S3_SECRET not in text, log
    status = run_cli("status", url)
    assert PASSWORD not in status.stdout + status.stderr
    bad = dict(secrets, metaurl=url.replace(f"127.0.0.1:{redis_pw.port}", "127.0.0.1:1"))
    err = error_of(lambda r: publish(driver, str(tmp_path / "pod-c" / "vol"), bad, volume_id="vol-2"), None)
    assert err.code() == Code.INTERNAL and PASSWORD not in err.details()

    # the driver dies and comes back: the pods keep their data, and it carries on from its state
    driver.kill()
    with open(os.path.join(a, "train.bin"), "rb") as f:
        assert f.read() == data
    driver.start()
    c = str(tmp_path / "pod-c" / "vol")
    publish(driver, c, {}, readonly=True, context=ctx)  # the running volume mount: no secrets needed
    with open(os.path.join(c, "train.bin"), "rb") as f:
        assert f.read() == data
    unpublish(driver, c)
    unpublish(driver, a)
    assert not os.path.exists(a) and not is_mounted(a)
    unpublish(driver, a)  # twice: OK
    assert len(mount_processes(driver.state)) == 1  # pod b still reads through it
    with open(os.path.join(b, "train.bin"), "rb") as f:
        assert f.read() == data
    unpublish(driver, b)
    assert not os.path.exists(b)
    wait_for(lambda: not mount_processes(driver.state), 30)
    assert not any(is_mounted(p) for p in glob.glob(os.path.join(driver.state, "volumes", "*")))


def test_dynamic_volume_lifecycle(driver, redis_pw, s3_server, tmp_path, mounts):
    url, secrets = volume(redis_pw, s3_server)
    create = pb.CreateVolumeRequest(name="pvc-0001", volume_capabilities=[mount_cap()], secrets=secrets,
                                    parameters={"mountOptions": "writeback"},
                                    capacity_range=pb.CapacityRange(required_bytes=10 << 30))
    vol = driver.controller.CreateVolume(create).volume
    assert vol.volume_id == "pvc-0001" and vol.capacity_bytes == 10 << 30
    assert driver.controller.CreateVolume(create).volume == vol  # idempotent by name
    block = pb.CreateVolumeRequest(name="pvc-b", secrets=secrets, volume_capabilities=[
        pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume())])
    assert code_of(driver.controller.CreateVolume, block) == Code.INVALID_ARGUMENT
    ok = driver.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=vol.volume_id, volume_capabilities=[mount_cap()], secrets=secrets))
    assert ok.HasField("confirmed")
    missing = pb.ValidateVolumeCapabilitiesRequest(volume_id="pvc-none", volume_capabilities=[mount_cap()],
                                                   secrets=secrets)
    assert code_of(driver.controller.ValidateVolumeCapabilities, missing) == Code.NOT_FOUND

    target = str(tmp_path / "pod" / "vol")
    driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id, target_path=target, volume_capability=mount_cap(), secrets=secrets,
        volume_context=vol.volume_context))
    ckpt = os.urandom(5 << 20)
    with open(os.path.join(target, "ckpt.pt"), "wb") as f:
        f.write(ckpt)
    unpublish(driver, target, vol.volume_id)  # last target: the write-back mount flushes and stops
    wait_for(lambda: not mount_processes(driver.state), 30)
    mp = mounts.mount(url)
    with open(os.path.join(mp, "pvc-0001", "ckpt.pt"), "rb") as f:
        assert f.read() == ckpt
    mounts.umount(mp)

    driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=secrets))
    driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=secrets))
    mp = mounts.mount(url)
    assert os.listdir(mp) == []


def test_one_operation_at_a_time_per_target(driver, redis_pw, s3_server, tmp_path):
    _url, secrets = volume(redis_pw, s3_server)
    target = str(tmp_path / "pod" / "vol")
    codes: list = []

    def go() -> None:
        codes.append(code_of(lambda r: publish(driver, target, secrets), None))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(codes) <= {Code.OK, Code.ABORTED} and Code.OK in codes, codes
    assert is_mounted(target)
    unpublish(driver, target)
    wait_for(lambda: not mount_processes(driver.state), 30)


def test_mount_t_and_fstab(volumes, tmp_path):
    url = volumes.create("sqlite", "file")
    mp = str(tmp_path / "m")
    os.makedirs(mp)
    cache = str(tmp_path / "cache")
    res = subprocess.run(["mount", "-t", "cachefs", url, mp, "-o", f"cache-dir={cache},cache-size=256,writeback"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        with open(os.path.join(mp, "f"), "wb") as f:
            f.write(b"via mount -t")
    finally:
        subprocess.run(["umount", mp], check=True, timeout=60)
    wait_for(lambda: not is_mounted(mp), 10)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{url} {mp} cachefs ro,cache-dir={cache},_netdev 0 0\n")
    res = subprocess.run(["mount", "-T", str(fstab), mp], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        with open(os.path.join(mp, "f"), "rb") as f:
            assert f.read() == b"via mount -t"
        with pytest.raises(OSError) as e:
            open(os.path.join(mp, "g"), "wb").close()
        assert e.value.errno == errno.EROFS
    finally:
        subprocess.run(["umount", mp], check=True, timeout=60)
    time.sleep(0.2)
    assert not is_mounted(mp)
