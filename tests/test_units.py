"""Pure units: slice resolution, the block format and key, parsing."""

from __future__ import annotations

import random
import time

import pytest

from cachefs.block import SEGMENT, block_key, block_lengths, decode_block, encode_block, stored_sizes, verify_segments
from cachefs.errors import ChecksumError, ConfigError
from cachefs.meta import Changes, open_meta, redact_url
from cachefs.meta.types import TYPE_FILE, Attr, Slice
from cachefs.metacache import SCAN_MISSES, MetaCache
from cachefs.mount.helper import translate
from cachefs.objects.s3 import parse_bucket
from cachefs.options import parse_size
from cachefs.slices import resolve


def materialize(slices, size):
    """Reference: apply records one after another to a byte array."""
    out = [None] * size
    for s in slices:
        for i in range(s.len):
            out[s.pos + i] = (s.id, s.off + i) if s.id else None
    return out


def from_segments(segs, size):
    out = [None] * size
    for g in segs:
        for i in range(g.len):
            out[g.pos + i] = (g.id, g.off + i)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_resolve_matches_reference(seed):
    rng = random.Random(seed)
    size = 200
    slices = []
    for i in range(rng.randint(1, 30)):
        pos = rng.randrange(size)
        n = rng.randint(1, size - pos)
        sid = 0 if rng.random() < 0.2 else i + 1
        slices.append(Slice(pos, sid, n + 10, rng.randint(0, 10), n))
    assert from_segments(resolve(slices), size) == materialize(slices, size)


def test_block_key_format():
    assert block_key("v", 1_234_567, 3, 4096) == "v/chunks/1/1234/1234567_3_4096"
    assert block_lengths(10, 4) == [4, 4, 2]
    assert block_lengths(8, 4) == [4, 4]


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_block_roundtrip_and_corruption(compression):
    plain = b"abc" * 10000
    data = encode_block(plain, compression)
    assert decode_block(data, len(plain)) == plain
    if compression == "lz4":
        assert len(data) < len(plain)
    flipped = bytearray(data)
    flipped[-5] ^= 0x40
    with pytest.raises(ChecksumError):
        decode_block(bytes(flipped), len(plain))
    with pytest.raises(ChecksumError):
        decode_block(data[:10], len(plain))
    with pytest.raises(ChecksumError):
        decode_block(data, len(plain) + 1)


def test_incompressible_block_stored_plain():
    plain = random.Random(1).randbytes(5000)
    assert len(encode_block(plain, "lz4")) == stored_sizes(len(plain))[1]  # CFB2: header, a checksum per segment


def test_attr_roundtrip():
    a = Attr(1, 0o4755, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert Attr.unpack(a.pack()) == a
    assert a.st_mode == 0o104755


def test_parse_size():
    assert parse_size("4M") == 4 << 20
    assert parse_size("512K") == 512 << 10
    assert parse_size("1048576") == 1 << 20
    with pytest.raises(ConfigError):
        parse_size("4X")


def test_meta_urls():
    with pytest.raises(ConfigError, match="unknown metadata URL scheme"):
        open_meta("mysql://x")
    with pytest.raises(ConfigError, match="bad metadata URL"):
        open_meta("nothing")
    assert redact_url("redis://u:secret@h:1/2") == "redis://u:****@h:1/2"
    assert redact_url("redis://h:1/2") == "redis://h:1/2"


def test_parse_bucket():
    assert parse_bucket("http://127.0.0.1:9000/b") == ("http://127.0.0.1:9000", "b")
    assert parse_bucket("s3://b", "http://e:1") == ("http://e:1", "b")
    with pytest.raises(ConfigError):
        parse_bucket("http://127.0.0.1:9000/")
    with pytest.raises(ConfigError):
        parse_bucket("ftp://x/y")


def test_mount_helper_options():
    assert translate("ro,attr-cache=2,_netdev,defaults") == ["--read-only", "--attr-cache", "2"]
    with pytest.raises(ValueError, match="unknown mount option"):
        translate("bogus=1")


def test_redis_urls():
    from cachefs.meta.redis_url import parse

    u = parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/3")
    assert (u.kind, u.master, u.nodes, u.db, u.password) == ("sentinel", "mymaster",
                                                             [("10.0.0.1", 26379), ("10.0.0.2", 26379)], 3, "pw")
    u = parse("redis://:pw@mymaster,10.0.0.1:26379,10.0.0.2:26380/2")  # JuiceFS's form
    assert (u.kind, u.master, u.nodes, u.db) == ("sentinel", "mymaster", [("10.0.0.1", 26379), ("10.0.0.2", 26380)], 2)
    assert parse("rediss://h:6380/1").tls
    assert parse("redis://h1:7000,h2:7001/0").kind == "cluster"
    for bad, why in [("redis://127.0.0.1:notaport/1", "not a number"), ("redis://h:6379/x", "database"),
                     ("redis+sentinel://h:1/", "MASTER_NAME"), ("redis://:pw@/1", "no host")]:
        with pytest.raises(ConfigError, match=why) as e:
            parse(bad)
        assert "pw" not in str(e.value)


def test_cfb2_segments_verify_alone():
    """A CFB2 block's segments can be checked one by one (what ranged reads rely on)."""
    plain = random.Random(2).randbytes(3 * SEGMENT + 100)
    data = encode_block(plain, "none")
    head = len(data) - len(plain)
    assert decode_block(data, len(plain)) == plain
    assert bytes(verify_segments(data[:head], data[head + SEGMENT : head + 2 * SEGMENT], 1, "b", 1)) == \
        plain[SEGMENT : 2 * SEGMENT]
    assert bytes(verify_segments(data[:head], data[head + 3 * SEGMENT :], 3, "b")) == plain[3 * SEGMENT :]
    bad = bytearray(data)
    bad[head + SEGMENT + 7] ^= 1
    with pytest.raises(ChecksumError):
        verify_segments(bytes(bad[:head]), bytes(bad[head + SEGMENT : head + 2 * SEGMENT]), 1, "b", 1)
    with pytest.raises(ChecksumError):  # a short body, even one cut at a segment's end
        verify_segments(data[:head], data[head + SEGMENT : head + 2 * SEGMENT - 1], 1, "b", 1)
    with pytest.raises(ChecksumError):
        verify_segments(data[:head], data[head + SEGMENT : head + 2 * SEGMENT], 1, "b", 2)
    with pytest.raises(ChecksumError):
        decode_block(bytes(bad), len(plain))


def test_write_atomic_writes_every_part_through_short_writes(tmp_path, monkeypatch):
    import os

    from cachefs import fileutil

    real = os.writev
    monkeypatch.setattr(fileutil.os, "writev", lambda fd, bufs: real(fd, [bytes(bufs[0][:3])]))  # 3 bytes a call
    parts = (b"head", b"", memoryview(b"0123456789abcdef")[2:], bytearray(b"tail"))
    fileutil.write_atomic(str(tmp_path / "d" / "f"), *parts)
    assert (tmp_path / "d" / "f").read_bytes() == b"head23456789abcdeftail"
    assert os.listdir(tmp_path / "d") == ["f"]  # no temporary left


def test_a_listing_read_before_a_change_of_ours_does_not_undo_it():
    """A listing fetched while this client unlinked, created or changed a name is installed
    without what the change touched (it was read before the change and would bring it back)."""
    c = MetaCache(5, 5, 5)
    f = Attr(type=TYPE_FILE, mode=0o644)
    seq, since = c.begin_listing(), time.monotonic()
    listing = [(b"a", 10, f), (b"b", 11, f), (b"c", 12, f)]
    c.apply(Changes(removed={(2, b"x")}, gone={11}))  # another directory's entry; inode 11
    c.end_listing(1, listing, since, seq)  # directory 1 untouched: all names, 11's attributes not
    assert c.entry(1, b"a") == 10 and c.attr(10) is not None
    assert c.entry(1, b"b") == 11 and c.attr(11) is None  # the name stands, its old attributes not
    c2 = MetaCache(5, 5, 5)
    seq = c2.begin_listing()
    c2.apply(Changes(removed={(1, b"c")}))  # a name of the directory itself: nothing installed
    c2.end_listing(1, listing, since, seq)
    assert c2.entry(1, b"a") is None
    c2.end_listing(1, listing, since, c2.begin_listing())  # read after it: installed
    assert c2.entry(1, b"a") == 10
    # entries expire as their listing was read, not when it was installed
    c3 = MetaCache(5, 0.05, 5)
    c3.end_listing(1, listing, time.monotonic() - 0.1, c3.begin_listing())
    assert c3.entry(1, b"a") is None


def test_a_scan_is_detected_once_per_window_and_per_directory():
    c = MetaCache(1, 0.2, 1)
    assert [c.missed(1) for _ in range(SCAN_MISSES)] == [False] * (SCAN_MISSES - 1) + [True]
    assert not any(c.missed(1) for _ in range(3 * SCAN_MISSES))  # once per window
    assert not c.missed(2)  # other directories count on their own
    time.sleep(0.25)
    assert [c.missed(1) for _ in range(SCAN_MISSES)][-1]
    assert not any(MetaCache(0, 0, 0).missed(3) for _ in range(2 * SCAN_MISSES))  # caching off
