"""How one block is named and stored: the object key and the checksummed on-disk format.

A stored block is a 20-byte header (magic, codec, xxh64 of the plain bytes, plain length)
followed by the payload, lz4-compressed when that is smaller. The same bytes are what the
object store, the local cache and peers hold, so every reader verifies the same checksum.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import lz4.block
import xxhash

from .errors import ChecksumError

MAGIC = b"CFB1"
HEADER = struct.Struct("<4sBxxxQI")
CODEC_NONE = 0
CODEC_LZ4 = 1


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
    h = xxhash.xxh64()
    for piece in pieces:
        h.update(piece)
    length = sum(map(len, pieces))
    codec, payload = CODEC_NONE, pieces
    if compression == "lz4" and length > 64:
        joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        packed = lz4.block.compress(joined, store_size=False)
        if len(packed) < length:
            codec, payload = CODEC_LZ4, [packed]
    return (HEADER.pack(MAGIC, codec, h.intdigest(), length), *payload)


def encode_block(plain: Buffer | Sequence[Buffer], compression: str) -> bytes:
    return b"".join(encode_parts(plain, compression))


def decode_block(data: bytes, expected_len: int, what: str = "block") -> Buffer:
    """The plain bytes of a stored block; ChecksumError for anything torn, flipped or foreign.
    An uncompressed block answers with a read-only view past its header, not a copy: each fresh
    4 MiB buffer costs a thousand page faults, a tenth of a cold read's CPU."""
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
