"""Writes compression bombs: for every kombu compression method, a file `<dir>/<method>` whose
content decompresses (with kombu's decoder for the method) to `--mib` MiB of zero bytes. The
Rust bomb test (`tests/tests/compression_bomb.rs`) runs it.

    python make_bombs.py --dir /tmp/bombs --mib 1024

Built fast: streaming compressors at low levels, and for bzip2 and xz one 64 MiB stream
repeated (their decoders, like Python's, read concatenated streams).
"""

import argparse
import bz2
import lzma
import os
import zlib

import brotli
from backports import zstd

MIB = 1 << 20


def streamed(compressor, mib, flush):
    chunk = bytes(MIB)
    parts = [compressor(chunk) for _ in range(mib)]
    parts.append(flush())
    return b"".join(parts)


def repeated(compress, mib):
    block = min(mib, 64)
    stream = compress(bytes(block * MIB))
    return stream * (mib // block)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--mib", type=int, required=True)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    z = zlib.compressobj(9)
    zs = zstd.ZstdCompressor(level=1)
    br = brotli.Compressor(quality=1)
    bombs = {
        "zlib": streamed(z.compress, args.mib, z.flush),
        "bzip2": repeated(lambda data: bz2.compress(data, 1), args.mib),
        "lzma": repeated(lambda data: lzma.compress(data, preset=0), args.mib),
        "zstd": streamed(zs.compress, args.mib, lambda: zs.flush()),
        "brotli": streamed(br.process, args.mib, br.finish),
    }
    for name, data in bombs.items():
        with open(os.path.join(args.dir, name), "wb") as f:
            f.write(data)
        print(name, len(data))


if __name__ == "__main__":
    main()
