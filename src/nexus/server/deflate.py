"""Deflate blocks shared by many streams (`Content-Encoding: deflate`, RFC 1950).

Journal events compress several times (at least 3x, `tests/server/test_deflate.py`),
so a browser watching a busy session over a real network gets a fraction of the
bytes, at little cost to the server: a batch of frames is compressed once, by a
fresh compressor ending in a sync flush. The block refers to nothing before it,
so the same bytes continue any client's stream. Each client's stream is the zlib
header, its blocks, and at the end an empty final block and the Adler-32 of all
it was sent, combined from the blocks' own checksums (no pass over the data per
client).

zlib does all the compressing; Python's zlib module only lacks `adler32_combine`,
which is a few lines of arithmetic (below, after zlib's own).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

HEADER = b"\x78\x01"  # deflate, 32 KiB window, fastest level; 0x7801 % 31 == 0
FINAL = b"\x03\x00"  # an empty final block (fixed Huffman, end-of-block only)
_BASE = 65521  # the largest prime below 2**16, Adler-32's modulus


@dataclass(frozen=True)
class Block:
    """Deflated bytes that stand alone, with the Adler-32 and length of their input."""

    data: bytes
    adler: int
    size: int


def compress(raw: bytes) -> Block:
    """`raw` as a self-contained deflate block (level 1, the fastest)."""
    # A frame or two (an `end`, a `resync`) needs no 32 KiB window: a small one
    # makes setting up the compressor ten times cheaper (3 us, not 35).
    wbits, mem_level = (-9, 1) if len(raw) <= 512 else (-15, 8)
    deflater = zlib.compressobj(1, zlib.DEFLATED, wbits, mem_level)
    data = deflater.compress(raw) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return Block(data, zlib.adler32(raw), len(raw))


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The Adler-32 of A + B from those of A and B and the length of B (zlib's
    `adler32_combine`)."""
    rem = len2 % _BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _BASE
    sum1 += (adler2 & 0xFFFF) + _BASE - 1
    sum2 += (adler1 >> 16) + (adler2 >> 16) + _BASE - rem
    if sum1 >= _BASE:
        sum1 -= _BASE
    if sum1 >= _BASE:
        sum1 -= _BASE
    if sum2 >= _BASE << 1:
        sum2 -= _BASE << 1
    if sum2 >= _BASE:
        sum2 -= _BASE
    return sum1 | (sum2 << 16)


class Stream:
    """One client's zlib stream: `start()`, then `add(block)` for each block in
    order, then `finish()`."""

    def __init__(self) -> None:
        self.adler = 1  # Adler-32 of nothing

    def start(self) -> bytes:
        """The zlib header."""
        return HEADER

    def add(self, block: Block) -> bytes:
        """The block's bytes, counted into the stream's checksum."""
        self.adler = adler32_combine(self.adler, block.adler, block.size)
        return block.data

    def finish(self) -> bytes:
        """The final block and the checksum: the stream is complete."""
        return FINAL + self.adler.to_bytes(4, "big")


def accepts_deflate(accept_encoding: str | None) -> bool:
    """Whether an `Accept-Encoding` header lists `deflate` (and not with q=0)."""
    for item in (accept_encoding or "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() != "deflate":
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False
