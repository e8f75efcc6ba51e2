"""Newest-wins resolution of a chunk's slice records into what a reader sees."""

from __future__ import annotations

from dataclasses import dataclass

from cachefs.meta.types import Slice


@dataclass(frozen=True, slots=True)
class Segment:
    """`len` visible bytes at chunk offset `pos`, from byte `off` of slice `id` (0: zeros)."""

    pos: int
    len: int
    id: int
    size: int
    off: int


def resolve(slices: list[Slice]) -> list[Segment]:
    """Non-overlapping segments sorted by position; later records hide earlier ones, and
    positions no record covers read as zeros (they are simply absent)."""
    segs: list[Segment] = []
    for s in slices:
        if s.len <= 0:
            continue
        start, end = s.pos, s.pos + s.len
        out: list[Segment] = []
        for g in segs:
            gend = g.pos + g.len
            if gend <= start or g.pos >= end:
                out.append(g)
                continue
            if g.pos < start:
                out.append(Segment(g.pos, start - g.pos, g.id, g.size, g.off))
            if gend > end:
                cut = end - g.pos
                out.append(Segment(end, gend - end, g.id, g.size, g.off + cut))
        out.append(Segment(start, s.len, s.id, s.size, s.off))
        out.sort(key=lambda g: g.pos)
        segs = out
    return [g for g in segs if g.id]


def covering(segs: list[Segment], pos: int, n: int) -> list[Segment]:
    """The parts of segs inside [pos, pos+n), clipped."""
    out = []
    end = pos + n
    for g in segs:
        gend = g.pos + g.len
        if gend <= pos or g.pos >= end:
            continue
        a, b = max(pos, g.pos), min(end, gend)
        out.append(Segment(a, b - a, g.id, g.size, g.off + (a - g.pos)))
    return out
