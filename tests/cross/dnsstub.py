"""A tiny authoritative DNS responder on UDP (and nothing else), for the static-binary
resolver tests: it answers A/AAAA queries for the names it is given, NXDOMAIN for the
others, and records every question it saw.  Standard library only."""

import socket
import struct
import threading


class DnsStub:
    def __init__(self, records, host='127.0.0.1', port=53):
        """records: {'name.example': '127.0.0.1', ...} (A records; AAAA answered empty);
        a name mapped to None gets no reply at all (a DNS server that never answers)."""
        self.records = {k.lower().rstrip('.'): v for k, v in records.items()}
        self.questions = []  # (name, qtype)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _qname(msg, off):
        labels = []
        while True:
            n = msg[off]
            off += 1
            if n == 0:
                return '.'.join(labels), off
            labels.append(msg[off:off + n].decode('ascii', 'replace'))
            off += n

    def _answer(self, msg):
        tid, flags, qd = struct.unpack('>HHH', msg[:6])
        if qd != 1:
            return None
        name, off = self._qname(msg, 12)
        qtype, qclass = struct.unpack('>HH', msg[off:off + 4])
        question = msg[12:off + 4]
        self.questions.append((name.lower(), qtype))
        key = name.lower().rstrip('.')
        if key in self.records and self.records[key] is None:
            return None
        addr = self.records.get(key)
        rd = flags & 0x0100
        if addr is None:
            return struct.pack('>HHHHHH', tid, 0x8000 | 0x0400 | rd | 3, 1, 0, 0, 0) + question
        answers = b''
        an = 0
        if qtype == 1:  # A
            answers = (b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + socket.inet_aton(addr))
            an = 1
        # AAAA and anything else: NOERROR, no data
        return struct.pack('>HHHHHH', tid, 0x8000 | 0x0400 | rd, 1, an, 0, 0) + question + answers

    def _run(self):
        while not self._stop:
            try:
                msg, peer = self.sock.recvfrom(1500)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(msg)
            except (IndexError, struct.error):
                reply = None
            if reply is not None:
                self.sock.sendto(reply, peer)

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()
