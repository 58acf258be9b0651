"""cw_utf8_repair against Python's own decoder: for every input,
cw_utf8_repair(b) must equal b.decode('utf-8', 'replace').encode('utf-8').

Run by meson (suite unit) with Debian's /usr/bin/python3:
    test_utf8_python.py BUILD/tests/unit/utf8_filter
The corpus: hand-picked cases (the one where the old repairer of cw.c gave 5
replacement characters and Python 2), every 1- and 2-byte string, every
3-byte string built from the interesting bytes, and 20,000 random strings
biased toward UTF-8 lead and continuation bytes (fixed seed)."""
import itertools
import random
import struct
import subprocess
import sys

CASES = [
    b'', b'plain ascii', 'caf\u00e9 \u20ac \U0001F600'.encode(),
    b'\xf0\x90\x80\xe2\x82',          # truncated 4-byte + truncated 3-byte: 2 x U+FFFD
    b'\xe2\x82\xac\xe2\x82', b'\xc0\xaf', b'\xed\xa0\x80', b'\xf4\x90\x80\x80',
    b'\xf0\x8f\xbf\xbf', b'\xe0\x80\xaf', b'\xff\xfe', b'\x80\x80\x80', b'a\xc3',
    b'\xf1\x80\x80\xe1\x80\xc2\x41',
]
INTERESTING = [0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf,
               0xe0, 0xe1, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf4, 0xf5, 0xff]


def corpus():
    yield from CASES
    for n in (1, 2):
        for t in itertools.product(range(256), repeat=n):
            yield bytes(t)
    for t in itertools.product(INTERESTING, repeat=3):
        yield bytes(t)
    rnd = random.Random(1234)
    pool = INTERESTING + list(range(0x20, 0x7f, 7))
    for _ in range(20000):
        yield bytes(rnd.choice(pool) for _ in range(rnd.randint(1, 24)))


def main():
    inputs = list(corpus())
    data = b''.join(struct.pack('<I', len(b)) + b for b in inputs)
    out = subprocess.run([sys.argv[1]], input=data, capture_output=True, check=True).stdout
    pos, bad = 0, []
    for b in inputs:
        (n,) = struct.unpack_from('<I', out, pos)
        got = out[pos + 4:pos + 4 + n]
        pos += 4 + n
        want = b.decode('utf-8', 'replace').encode('utf-8')
        if got != want:
            bad.append((b, got, want))
    assert pos == len(out), 'trailing output'
    for b, got, want in bad[:20]:
        print(f'input {b!r}: cworker {got!r}, python {want!r}')
    print(f'{len(inputs)} inputs, {len(bad)} differ from Python')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
