#!/usr/bin/python3
"""Write the seed corpus of fuzz_tunnel (fuzz/corpus/tunnel): 4 control bytes, then link bytes.

Control: bytes 0-1 split seed; byte 2: buffer 4096 << (b & 7), the session's own source writes
(b >> 3 & 15) * 2048 bytes, bit 7 adds its FIN; byte 3: bit 0 server role (else client), bit 1
client resumes session id 7 / token 0xEE * 16, bit 2 flush delayed acks at the end.
Run from the repository root: /usr/bin/python3 fuzz/gen_tunnel_corpus.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus', 'tunnel')
TOKEN = b'\xee' * 16


def frame(t, payload):
    return struct.pack('>BI', t, len(payload)) + payload


def hello(kind=0, buf=4096, sid=0, token=b'\0' * 16, received=0, version=1, magic=b'CWTN',
          link_seq=1):
    return frame(0x01, magic + struct.pack('>BBIQ', version, kind, buf, sid) + token +
                 struct.pack('>QI', received, link_seq))


def welcome(resumed=0, buf=4096, window=600, sid=7, token=TOKEN, received=0, version=1):
    return frame(0x02, struct.pack('>BBIIQ', version, resumed, buf, window, sid) + token +
                 struct.pack('>Q', received))


def data(off, b):
    return frame(0x10, struct.pack('>Q', off) + b)


def u64(t, v):
    return frame(t, struct.pack('>Q', v))


def ack(v):
    return u64(0x11, v)


def ping(v):
    return u64(0x12, v)


def pong(v):
    return u64(0x13, v)


def fin(v):
    return u64(0x14, v)


def reason(t, r, text=b''):
    return frame(t, bytes([r]) + text)


def ctl(seed, c2, c3):
    return struct.pack('<H', seed) + bytes([c2, c3])


SERVER, RESUME, FLUSH = 1, 2, 4
seeds = {
    # server side: a client's stream with acks, pings, duplicates and its end
    'server_stream': ctl(7, 0x00 | (2 << 3), SERVER) +
        data(0, b'hello') + data(0, b'hel') + data(3, b'lo world') + ping(42) +
        ack(1000) + ack(500) + data(11, bytes(range(256)) * 4) + fin(1035),
    'server_complete': ctl(9, 0x80 | (1 << 3), SERVER | FLUSH) +
        data(0, b'x' * 100) + ack(2048) + ack(2049) + fin(100),
    'server_abort': ctl(1, 0x01, SERVER) + data(0, b'abc') + reason(0x15, 9, b'user abort'),
    'server_gap': ctl(3, 0x00, SERVER) + data(0, b'ab') + data(5, b'cd'),
    'server_fin_early': ctl(3, 0x00, SERVER) + data(0, b'ab') + fin(5),
    'server_ack_unsent': ctl(3, 0x00, SERVER) + ack(1),
    'server_second_hello': ctl(3, 0x00, SERVER) + hello(),
    'server_big_data': ctl(11, 0x07, SERVER | FLUSH) + data(0, b'\xab' * 65536) +
        data(65536, b'\xcd' * 40000),
    # client side: WELCOME, then data from the relay
    'client_new': ctl(5, 0x00 | (3 << 3), 0) + welcome() + data(0, b'from master') +
        ack(3000) + ping(1) + pong(9) + fin(11),
    'client_resume': ctl(6, 0x80 | (2 << 3), RESUME) + welcome(resumed=1, received=1000) +
        ack(4097) + data(0, b'again'),
    'client_refused': ctl(2, 0x00, 0) + reason(0x03, 3, b'wrong resume token'),
    'client_refused_binary': ctl(2, 0x00, RESUME) + reason(0x03, 4, b'\x00\xff\x1b[31m'),
    'client_welcome_bad_offset': ctl(2, 0x00 | (1 << 3), 0) + welcome(received=5),
    'client_welcome_other_session': ctl(2, 0x00, RESUME) + welcome(resumed=1, sid=8),
    'client_data_before_welcome': ctl(2, 0x00, 0) + data(0, b'x'),
    'client_complete': ctl(4, 0x80 | (1 << 3), FLUSH) + welcome() + ack(2049) +
        data(0, b'bye') + fin(3),
    # malformed framing
    'oversized_data': ctl(1, 0, SERVER) + struct.pack('>BI', 0x10, 8 + 65537),
    'unknown_type': ctl(1, 0, SERVER) + frame(0x7f, b''),
    'tls_client_hello': ctl(1, 0, SERVER) + bytes.fromhex('160301020001000001fc0303'),
    'http_get': ctl(1, 0, 0) + b'GET / HTTP/1.1\r\nHost: x\r\n\r\n',
    'bad_magic_hello': ctl(1, 0, 0) + hello(magic=b'XXXX'),
    'offset_overflow': ctl(1, 0, SERVER) + data(2**64 - 1, b'ab'),
    'short_ack': ctl(1, 0, SERVER) + frame(0x11, b'\0' * 7),
}

os.makedirs(OUT, exist_ok=True)
for name, blob in seeds.items():
    with open(os.path.join(OUT, name), 'wb') as f:
        f.write(blob)
print(f'{len(seeds)} seeds in {OUT}')
