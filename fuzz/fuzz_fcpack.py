"""fcpack packages: raw bytes, or (first byte odd) a header and a body the harness compresses,
so the fuzzer reaches the section and tensor checks behind the zstd frame."""

from __future__ import annotations

import zstandard

from fleetcast.proto import fcpack

MAX_BYTES = 16 * 1024**2
_ZSTD = zstandard.ZstdCompressor(level=1)


def test_one_input(data: bytes) -> None:
    if data[:1] and data[0] & 1:
        header, _, body = data[1:].partition(b"\n--body--\n")
        data = fcpack.PREFIX.pack(fcpack.MAGIC, fcpack.VERSION, len(header)) + header + _ZSTD.compress(body)
    else:
        data = data[1:]
    try:
        out = fcpack.decode(data, max_bytes=MAX_BYTES)
    except fcpack.PackageError:
        return
    assert isinstance(out, bytes) and len(out) <= 2 * MAX_BYTES
