"""How one block is named and stored: the object key and the checksummed on-disk format.

A stored block is a 20-byte header (magic, codec, xxh64 of the plain bytes, plain length)
followed by the payload, lz4-compressed when that is smaller. The same bytes are what the
object store, the local cache and peers hold, so every reader verifies the same checksum.
"""

from __future__ import annotations

import struct

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


def block_lengths(size: int, block_size: int) -> list[int]:
    """Lengths of the blocks of a slice of `size` bytes (the last one short)."""
    full, rest = divmod(size, block_size)
    return [block_size] * full + ([rest] if rest else [])


def encode_parts(plain: bytes | bytearray | memoryview, compression: str) -> tuple[bytes, bytes | bytearray]:
    """The stored block as (header, payload), so a writer can write both without joining them
    (the payload may be `plain` itself)."""
    digest = xxhash.xxh64_intdigest(plain)
    codec, payload = CODEC_NONE, plain
    if compression == "lz4" and len(plain) > 64:
        packed = lz4.block.compress(plain, store_size=False)
        if len(packed) < len(plain):
            codec, payload = CODEC_LZ4, packed
    if isinstance(payload, memoryview):
        payload = bytes(payload)
    return HEADER.pack(MAGIC, codec, digest, len(plain)), payload


def encode_block(plain: bytes | bytearray | memoryview, compression: str) -> bytes:
    return b"".join(encode_parts(plain, compression))


def decode_block(data: bytes, expected_len: int, what: str = "block") -> bytes:
    """The plain bytes of a stored block; ChecksumError for anything torn, flipped or foreign."""
    if len(data) < HEADER.size:
        raise ChecksumError(f"{what}: truncated ({len(data)} bytes)")
    magic, codec, digest, length = HEADER.unpack_from(data)
    if magic != MAGIC or length != expected_len:
        raise ChecksumError(f"{what}: bad header")
    payload = memoryview(data)[HEADER.size :]
    if codec == CODEC_NONE:
        plain = bytes(payload)
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
