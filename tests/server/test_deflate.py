"""Deflate blocks shared by many streams: any sequence of separately compressed
blocks is one valid zlib stream with the right checksum."""

from __future__ import annotations

import random
import zlib

import pytest

from nexus.server import deflate


def test_adler32_combine_matches_zlib_on_the_whole() -> None:
    """The checksum of A + B from those of A and B, for empty parts, parts longer
    than Adler-32's modulus and random bytes."""
    rng = random.Random(7)
    sizes = [0, 1, 2, 100, 65520, 65521, 65522, 200_000]
    for len1 in sizes:
        for len2 in sizes:
            a = rng.randbytes(len1)
            b = rng.randbytes(len2)
            combined = deflate.adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b))
            assert combined == zlib.adler32(a + b), (len1, len2)


def test_blocks_compressed_apart_make_one_stream() -> None:
    """Blocks made by separate compressors, in any order a client gets them,
    decompress as one zlib stream to their concatenation, checksum verified."""
    rng = random.Random(11)
    parts = [b"", b"retry: 1000\n\n", *(rng.randbytes(rng.randrange(1, 5000)) for _ in range(5))]
    parts += [b'id: 1\nevent: journal\ndata: {"kind":"note"}\n\n' * 300]
    blocks = [deflate.compress(p) for p in parts]
    for order in (list(range(len(parts))), list(reversed(range(len(parts))))):
        stream = deflate.Stream()
        body = stream.start() + b"".join(stream.add(blocks[i]) for i in order) + stream.finish()
        assert zlib.decompress(body) == b"".join(parts[i] for i in order)


def test_a_wrong_order_of_checksums_is_caught() -> None:
    """The checksum follows what was added: adding blocks in one order and sending
    them in another fails the client's check (why a stream's start is queued
    before any batch)."""
    one, two = deflate.compress(b"first "), deflate.compress(b"second")
    stream = deflate.Stream()
    stream.add(two)
    stream.add(one)
    with pytest.raises(zlib.error, match="incorrect data check"):
        zlib.decompress(stream.start() + one.data + two.data + stream.finish())


def test_events_compress_several_times() -> None:
    """A batch of journal frames shrinks several times (what makes it worth it)."""
    frame = (
        'id: {n}\nevent: journal\ndata: {{"id":{n},"session_id":"s_4294c76aae637bce",'
        '"seq":{n},"ts":1795625678.4931893,"kind":"tool.call","tokens_in":0,'
        '"tokens_out":0,"cost_usd":0.0,"latency_ms":0.0,"hash":"{h}","payload":'
        '{{"arguments":"{{}}","call_id":"call_{n}","name":"list_files","step":{n}}}}}\n\n'
    )
    raw = "".join(frame.format(n=n, h=f"{n:064x}") for n in range(125)).encode()
    assert len(deflate.compress(raw).data) * 3 < len(raw)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip, deflate", True),
        ("gzip, deflate, br, zstd", True),
        ("DEFLATE", True),
        ("deflate;q=0.5", True),
        ("deflate; q=0", False),
        ("deflate;q=0.0", False),
        ("deflate;q=x", False),
        ("gzip", False),
        ("identity", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding_is_read(header: str | None, accepted: bool) -> None:
    """Deflate only for clients that list it with a non-zero quality."""
    assert deflate.accepts_deflate(header) is accepted
