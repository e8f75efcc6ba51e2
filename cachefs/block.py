"""How one block is named and stored: the object key and the checksummed on-disk format.

A stored block is one of:

- CFB2 (uncompressed): a 16-byte header (magic, codec, segment size, plain length), a table of
  xxh64 checksums, one per 64 KiB segment of the plain bytes, then the plain bytes. A reader
  that needs a few KiB fetches the table and the segments it needs (two ranged GETs) and
  verifies just those: a random read of a cold block costs a small request, not 4 MiB;
- CFB1: a 20-byte header (magic, codec, xxh64 of the plain bytes, plain length), then the
  payload, lz4-compressed (blocks of lz4 volumes that compress; and every block of volumes
  formatted before CFB2).

The same bytes are what the object store and staging hold, so every reader verifies the same
checksums; a mismatch is ChecksumError (EIO), never wrong bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import lz4.block
import xxhash

from .errors import ChecksumError

MAGIC = b"CFB1"
HEADER = struct.Struct("<4sBxxxQI")
MAGIC2 = b"CFB2"
HEADER2 = struct.Struct("<4sBxxxII")  # magic, codec, segment size, plain length
SEGMENT = 64 << 10
CODEC_NONE = 0
CODEC_LZ4 = 1
BLOCK_FORMAT = 2  # what `format` records for new volumes: CFB2 for uncompressed blocks


def table_size(length: int, seg: int = SEGMENT) -> int:
    """Bytes of a CFB2 block before its payload: the header and the checksum table."""
    return HEADER2.size + 8 * ((length + seg - 1) // seg)


def stored_sizes(length: int) -> tuple[int, int]:
    """The sizes an uncompressed block of `length` bytes has stored: CFB1, CFB2."""
    return HEADER.size + length, table_size(length) + length


def block_key(volume: str, slice_id: int, index: int, length: int) -> str:
    """The object key of block `index` (of `length` bytes) of slice `slice_id`."""
    return f"{volume}/chunks/{slice_id // 1_000_000}/{slice_id // 1000}/{slice_id}_{index}_{length}"


def block_folder(volume: str, slice_id: int) -> str:
    """The key prefix (a "folder") under which a slice's blocks, and those of the ids beside
    it, are stored."""
    return block_key(volume, slice_id, 0, 0).rpartition("/")[0] + "/"


def parse_block_key(key: str) -> tuple[int, int, int] | None:
    """(slice id, index, length) of a block key, or None for any other object."""
    parts = key.rpartition("/")[2].split("_")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def block_lengths(size: int, block_size: int) -> list[int]:
    """Lengths of the blocks of a slice of `size` bytes (the last one short)."""
    full, rest = divmod(size, block_size)
    return [block_size] * full + ([rest] if rest else [])


def block_keys(volume: str, slice_id: int, size: int, block_size: int) -> list[tuple[int, str, int]]:
    """(index, object key, length) of every block of a slice of `size` bytes."""
    return [(i, block_key(volume, slice_id, i, n), n) for i, n in enumerate(block_lengths(size, block_size))]


Buffer = bytes | bytearray | memoryview


def as_pieces(data: Buffer | Sequence[Buffer]) -> list[Buffer]:
    """A block given whole or in pieces, as a list of pieces."""
    return [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)


def encode_parts(plain: Buffer | Sequence[Buffer], compression: str) -> tuple[Buffer, ...]:
    """The stored block as (header, *payload parts), so a writer can write them without joining
    (uncompressed, the parts are the caller's own buffers). `plain` may come in pieces."""
    pieces = as_pieces(plain)
    length = sum(map(len, pieces))
    if compression == "lz4" and length > 64:
        joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        packed = lz4.block.compress(joined, store_size=False)
        if len(packed) < length:
            return HEADER.pack(MAGIC, CODEC_LZ4, xxhash.xxh64_intdigest(joined), length), packed
    return (HEADER2.pack(MAGIC2, CODEC_NONE, SEGMENT, length) + _segment_sums(pieces, length), *pieces)


def _segment_sums(pieces: list[Buffer], length: int) -> bytes:
    """The xxh64 of each SEGMENT of the bytes given in pieces, packed."""
    sums = []
    h = xxhash.xxh64()
    filled = 0
    for piece in pieces:
        mv = memoryview(piece)
        while mv:
            take = mv[: SEGMENT - filled]
            h.update(take)
            filled += len(take)
            mv = mv[len(take) :]
            if filled == SEGMENT:
                sums.append(h.intdigest())
                h, filled = xxhash.xxh64(), 0
    if filled or not length:
        sums.append(h.intdigest())
    return struct.pack(f"<{len(sums)}Q", *sums[: max(1, (length + SEGMENT - 1) // SEGMENT)])


def verify_segments(table: Buffer, payload: Buffer, first_seg: int, what: str, segments: int | None = None) -> Buffer:
    """The payload (plain bytes of `segments` segments from first_seg on; default: to the end
    of the block) once each segment matched its checksum in the table (a CFB2 header and
    table); ChecksumError for a bad header, a short payload or a mismatch."""
    if len(table) < HEADER2.size:
        raise ChecksumError(f"{what}: truncated header")
    magic, codec, seg, length = HEADER2.unpack_from(table)
    if magic != MAGIC2 or codec != CODEC_NONE or seg <= 0 or len(table) < table_size(length, seg):
        raise ChecksumError(f"{what}: bad header")
    mv = memoryview(payload)
    nseg = (length + seg - 1) // seg
    last = nseg if segments is None else min(nseg, first_seg + segments)
    want = min(length, last * seg) - first_seg * seg
    if want <= 0 or len(mv) != want:
        raise ChecksumError(f"{what}: {len(mv)} bytes where {want} were asked")
    for i in range(0, len(mv), seg):
        expected = struct.unpack_from("<Q", table, HEADER2.size + 8 * (first_seg + i // seg))[0]
        if xxhash.xxh64_intdigest(mv[i : i + seg]) != expected:
            raise ChecksumError(f"{what}: checksum mismatch")
    return mv.toreadonly()


def encode_block(plain: Buffer | Sequence[Buffer], compression: str) -> bytes:
    return b"".join(encode_parts(plain, compression))


def decode_block(data: bytes, expected_len: int, what: str = "block") -> Buffer:
    """The plain bytes of a stored block; ChecksumError for anything torn, flipped or foreign.
    An uncompressed block answers with a read-only view past its header, not a copy: each fresh
    4 MiB buffer costs a thousand page faults, a tenth of a cold read's CPU."""
    if data[:4] == MAGIC2:
        head = table_size(expected_len)
        if len(data) != head + expected_len:
            raise ChecksumError(f"{what}: {len(data)} bytes where {head + expected_len} were expected")
        if HEADER2.unpack_from(data)[3] != expected_len:
            raise ChecksumError(f"{what}: bad header")
        return verify_segments(memoryview(data)[:head], memoryview(data)[head:], 0, what)
    if len(data) < HEADER.size:
        raise ChecksumError(f"{what}: truncated ({len(data)} bytes)")
    magic, codec, digest, length = HEADER.unpack_from(data)
    if magic != MAGIC or length != expected_len:
        raise ChecksumError(f"{what}: bad header")
    payload = memoryview(data)[HEADER.size :]
    if codec == CODEC_NONE:
        plain = payload.toreadonly()
    elif codec == CODEC_LZ4:
        try:
            plain = lz4.block.decompress(payload, uncompressed_size=length)
        except lz4.block.LZ4BlockError:
            raise ChecksumError(f"{what}: corrupt compressed data") from None
    else:
        raise ChecksumError(f"{what}: unknown codec {codec}")
    if len(plain) != length or xxhash.xxh64_intdigest(plain) != digest:
        raise ChecksumError(f"{what}: checksum mismatch")
    return plain
