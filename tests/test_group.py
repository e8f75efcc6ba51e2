"""Cache group: three mounts on this machine, each with its own cache directory and its block
service on its own loopback address, share one distributed cache."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

from cachefs.group.auth import HEADER, sign
from cachefs.group.ring import Member, Ring
from cachefs.meta import open_meta
from cachefs.metrics import Metrics
from cachefs.objects import open_store

from .conftest import run_cli, s3_volume, wait_for
from .servers import S3Server, free_port

FAST = ("--upload-defer", "0", "--buffer-size", "64")


# ---- pure units ----------------------------------------------------------------------------------
def test_ring_moves_only_the_joining_members_share():
    keys = [f"v/chunks/0/{i // 1000}/{i}_0_4194304" for i in range(20_000)]
    three = Ring([Member(f"127.0.0.{i}:9000", f"127.0.0.{i}:9000") for i in (2, 3, 4)])
    four = Ring([Member(f"127.0.0.{i}:9000", f"127.0.0.{i}:9000") for i in (2, 3, 4, 5)])
    moved = sum(three.owner(k).id != four.owner(k).id for k in keys)
    to_new = sum(four.owner(k).id == "127.0.0.5:9000" for k in keys)
    assert moved == to_new  # nothing moves between the old members
    assert 0.18 < moved / len(keys) < 0.32  # about a quarter: the new member's share
    heavy = Ring([Member("a", "a", 3.0), Member("b", "b", 1.0)])
    share = sum(heavy.owner(k).id == "a" for k in keys) / len(keys)
    assert 0.65 < share < 0.85  # proportional to weight


def test_block_service_takes_only_canonical_block_keys():
    """A key names a file under the cache's directories (GET sends it, POST /adopt counts and
    later evicts it): only the volume's own spelling of a block key is taken."""
    from cachefs.block import block_key
    from cachefs.group.service import BlockService

    class Chunks:
        volume = "vol"

        def key(self, slice_id: int, index: int, length: int) -> str:
            return block_key("vol", slice_id, index, length)

    service = BlockService(Chunks(), b"s", "127.0.0.1:0", Metrics())
    try:
        good = block_key("vol", 12, 1, 4096)
        assert service.block_of(good) == (12, 1, 4096)
        for bad in (good.replace("vol/", "other/"), good.replace("/chunks/", "/chunks/../../"),
                    "vol/chunks/../../../etc/12_1_4096", good + "x", "vol/chunks/12_1"):
            assert service.block_of(bad) is None, bad
    finally:
        service.stop()


def test_signatures_refuse_wrong_old_and_replayed_requests():
    from cachefs.group.auth import Verifier

    v = Verifier(b"secret")
    good = sign(b"secret", "GET", "/block/k")
    assert v.check("GET", "/block/k", good) == ""
    assert v.check("GET", "/block/k", good) == "replayed"
    assert v.check("GET", "/block/k", sign(b"other", "GET", "/block/k")) == "bad signature"
    assert v.check("GET", "/block/other", sign(b"secret", "GET", "/block/k")) == "bad signature"
    assert v.check("GET", "/block/k", sign(b"secret", "GET", "/block/k", now=time.time() - 120)) == "expired"
    assert v.check("GET", "/block/k", None) == "unsigned"


# ---- mounts --------------------------------------------------------------------------------------
def _address(n: int, port: int) -> str:
    """Member n's block service address: its own loopback address, as its own host."""
    return f"127.0.0.{n + 1}:{port}"


def _member(mounts, url: str, n: int, *flags: str, port: int | None = None) -> str:
    return mounts.mount(url, *FAST, "--cache-group", "job", "--group-listen", _address(n, port or free_port()),
                        *flags)


def _write(mp: str, name: str, size: int) -> bytes:
    data = os.urandom(size)
    with open(os.path.join(mp, name), "wb") as f:
        f.write(data)
    return hashlib.sha256(data).digest()


def _read(mp: str, name: str) -> bytes:
    h = hashlib.sha256()
    with open(os.path.join(mp, name), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def _block_keys(url: str) -> list[str]:
    """The volume's block keys in its object store."""
    meta = open_meta(url)
    settings = meta.load()
    meta.close_engine()
    return [k for k, _ in open_store(settings, Metrics()).list(f"{settings.name}/chunks/")]


def _group_size(mp: str) -> int:
    for line in open(os.path.join(mp, ".stats")):
        if line.startswith("cachefs_group_members "):
            return int(float(line.split()[1]))
    return 0


def _metric(mp: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in open(os.path.join(mp, ".stats")) if line.startswith(prefix))


def test_three_members_read_a_dataset_cold_with_one_get_per_block(volumes, mounts, proxied_s3):
    url = s3_volume(volumes, proxied_s3)
    writer = mounts.mount(url, *FAST)
    digest = _write(writer, "data", 512 << 20)
    mounts.umount(writer)
    members = [_member(mounts, url, n) for n in (1, 2, 3)]
    for mp in members:
        wait_for(lambda mp=mp: _group_size(mp) == 3, 20)
    _drop_caches()
    before = proxied_s3.count("GET")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda mp=mp: results.append(_read(mp, "data"))) for mp in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == [digest] * 3
    gets = proxied_s3.count("GET") - before
    assert gets <= 1.1 * 128, gets  # 128 blocks of 4 MiB: about one GET each, not three
    assert sum(_metric(mp, 'cachefs_peer_blocks_total{') for mp in members) > 0


def test_pooled_capacity_second_epoch_barely_touches_the_object_store(volumes, mounts, proxied_s3):
    """Three caches of 128 MiB hold a 240 MiB dataset none could hold alone. The members'
    addresses are picked so that the ring gives none of them more than 26 of the 60 blocks: on
    random ports each gets Binomial(60, 1/3) of them, and one over what its cache holds evicted
    often enough to fail this test now and then."""
    url = s3_volume(volumes, proxied_s3)
    writer = mounts.mount(url, *FAST)
    digests = {f"f{i}": _write(writer, f"f{i}", 40 << 20) for i in range(6)}  # 240 MiB
    mounts.umount(writer)
    keys = _block_keys(url)
    while True:
        ports = {n: free_port() for n in (1, 2, 3)}
        ring = Ring([Member(a, a) for a in (_address(n, p) for n, p in ports.items())])
        if max(Counter(ring.owner(k).id for k in keys).values()) <= 26:
            break
    members = [_member(mounts, url, n, "--cache-size", "128", port=ports[n]) for n in (1, 2, 3)]
    for mp in members:
        wait_for(lambda mp=mp: _group_size(mp) == 3, 20)
    epochs = []
    for _ in range(2):
        _drop_caches()
        before = proxied_s3.count("GET")
        for mp in members:
            for name, digest in digests.items():
                assert _read(mp, name) == digest
        epochs.append(proxied_s3.count("GET") - before)
    assert epochs[1] <= 0.1 * epochs[0], epochs


def test_killed_member_others_keep_reading_and_the_ring_recovers(volumes, mounts, proxied_s3):
    url = s3_volume(volumes, proxied_s3)
    writer = mounts.mount(url, *FAST)
    digest = _write(writer, "data", 96 << 20)
    mounts.umount(writer)
    members = [_member(mounts, url, n) for n in (1, 2, 3)]
    for mp in members:
        wait_for(lambda mp=mp: _group_size(mp) == 3, 20)
    assert _read(members[0], "data") == digest  # every owner has its share now
    os.kill(mounts.pid(members[2]), signal.SIGKILL)
    subprocess.run(["umount", "-l", members[2]], capture_output=True)
    mounts.active.remove(members[2])
    _drop_caches()
    t0 = time.monotonic()
    assert _read(members[1], "data") == digest  # the dead owner's blocks come from the store
    assert time.monotonic() - t0 < 60
    wait_for(lambda: _group_size(members[1]) == 2, 30)  # its heartbeat expired: out of the ring
    assert _read(members[0], "data") == digest


def test_corrupted_block_on_a_peer_is_caught_and_read_from_the_store(volumes, mounts, proxied_s3, tmp_path):
    url = s3_volume(volumes, proxied_s3)
    writer = mounts.mount(url, *FAST)
    digest = _write(writer, "data", 64 << 20)
    mounts.umount(writer)
    caches = [str(tmp_path / f"gc{n}") for n in (1, 2)]
    a = _member(mounts, url, 1, "--cache-dir", caches[0])
    b = _member(mounts, url, 2, "--cache-dir", caches[1])
    for mp in (a, b):
        wait_for(lambda mp=mp: _group_size(mp) == 2, 20)
    assert _read(a, "data") == digest  # both members' caches now hold what they own
    for d, _, files in os.walk(caches[1]):  # every entry b holds, damaged
        for n in files:
            if "raw" in d and ".tmp." not in n:
                with open(os.path.join(d, n), "r+b") as f:
                    f.seek(-10, 2)
                    byte = f.read(1)
                    f.seek(-10, 2)
                    f.write(bytes([byte[0] ^ 0xFF]))
    mounts.umount(a)
    a = _member(mounts, url, 1, "--cache-dir", str(tmp_path / "fresh"))
    wait_for(lambda: _group_size(a) == 2, 20)
    _drop_caches()
    assert _read(a, "data") == digest
    assert _metric(a, 'cachefs_checksum_errors_total{source="peer"}') > 0


def test_unsigned_wrong_and_replayed_requests_get_no_bytes(volumes, mounts, proxied_s3):
    url = s3_volume(volumes, proxied_s3)
    host = "127.0.0.2"
    port = free_port()
    a = mounts.mount(url, *FAST, "--cache-group", "job", "--group-listen", f"{host}:{port}")
    _write(a, "f", 5 << 20)
    run_cli("flush", a)
    meta = open_meta(url)
    settings = meta.load()
    meta.close_engine()
    key = next(k for k, _ in open_store(settings, Metrics()).list(f"{settings.name}/chunks/"))
    path = f"/block/{key}"

    def get(header: str | None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{host}:{port}{path}", headers={HEADER: header} if header else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    secret = bytes.fromhex(settings.group_secret)
    good = sign(secret, "GET", path)
    status, body = get(good)
    assert status == 200 and len(body) > 4 << 20  # a whole block, as stored
    for header in (None, sign(b"wrong", "GET", path), good, sign(secret, "GET", path, now=time.time() - 300)):
        status, body = get(header)
        assert status == 401 and body == b""
    assert settings.group_secret not in run_cli("status", url).stdout  # masked like passwords


def test_write_back_blocks_are_served_by_their_writer_before_upload(volumes, mounts):
    own = S3Server()
    try:
        url = volumes.meta_url("redis")
        run_cli("format", url, "wbg", "--storage", "s3", "--bucket", own.bucket_url(f"b-{uuid.uuid4().hex[:8]}"))
        writer = _member(mounts, url, 1, "--writeback", "--upload-defer", "30")
        reader = _member(mounts, url, 2, "--io-retry-timeout", "10")  # S3 is no way out here
        for mp in (writer, reader):
            wait_for(lambda mp=mp: _group_size(mp) == 2, 20)
        own.pause()  # no upload can finish
        digest = _write(writer, "ckpt", 20 << 20)
        assert _read(reader, "ckpt") == digest  # from the writer's staging, through the group
        own.resume()
        run_cli("flush", writer, timeout=120)
    finally:
        own.resume()
        mounts.cleanup()
        own.stop()


def test_a_joining_member_takes_only_its_share(volumes, mounts, proxied_s3):
    url = s3_volume(volumes, proxied_s3)
    writer = mounts.mount(url, *FAST)
    digest = _write(writer, "data", 128 << 20)  # 32 blocks
    mounts.umount(writer)
    ports = {n: free_port() for n in (1, 2, 3)}
    addresses = [_address(n, port) for n, port in ports.items()]
    members = [_member(mounts, url, n, port=ports[n]) for n in (1, 2)]
    for mp in members:
        wait_for(lambda mp=mp: _group_size(mp) == 2, 20)
    assert _read(members[0], "data") == digest
    _drop_caches()
    before = len(proxied_s3.keys("GET"))
    members.append(_member(mounts, url, 3, port=ports[3]))
    for mp in members:
        wait_for(lambda mp=mp: _group_size(mp) == 3, 20)
    reads = [_read(mp, "data") for mp in members]
    assert reads == [digest] * 3
    fetched = [k for k in proxied_s3.keys("GET")[before:] if "/chunks/" in k]  # not the mount's connection check
    fallbacks = sum(_metric(mp, "cachefs_peer_fallbacks_total") for mp in members)
    keys = _block_keys(url)
    ring = Ring([Member(a, a) for a in addresses])
    share = sorted(k for k in keys if ring.owner(k).id == addresses[2])  # the ring's answer, not a guess at it
    assert len(keys) == 32 and 0 < len(share) < 32
    assert sorted(k.split("/", 1)[1] for k in fetched) == share, (fetched, share, fallbacks)
