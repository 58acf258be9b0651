"""cworker-relay end to end: tunnelcat (the tunnel client) -> faultproxy -> cworker-relay -> a
plain TCP "master" on 127.0.0.1.

What a user would notice is checked: the bytes at both ends (SHA-256), how many connections the
master saw (one per session, whatever happened to the links), exit codes, the relay's log lines
and metrics, its memory.  Measurements (throughput, resume times, memory per idle session,
protocol overhead) are printed; run with -s to see them:

    /usr/bin/python3 -m pytest tests/integration/test_relay.py -v -s

Binaries: CWORKER_BUILD (default <repo>/build) holds src/relay/cworker-relay and
tests/loop/tunnelcat.
"""

import hashlib
import json
import os
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cwhelpers import proc_status_kib  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

# protocol-neutral (the relay carries bytes, never parses a protocol; tunnelcat is the client):
# run once, in the msgpack pass
pytestmark = pytest.mark.only_protocol('msgpack')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get('CWORKER_BUILD', os.path.join(REPO, 'build'))
RELAY = os.path.join(BUILD, 'src', 'relay', 'cworker-relay')
TUNNELCAT = os.path.join(BUILD, 'tests', 'loop', 'tunnelcat')
NUMBERS = os.environ.get('CW_RELAY_NUMBERS')  # append measurements as JSON lines here


def record(name, **values):
    print(f'\n[relay numbers] {name}: ' + ', '.join(f'{k}={v}' for k, v in values.items()))
    if NUMBERS:
        with open(NUMBERS, 'a') as f:
            f.write(json.dumps({'name': name, **values}) + '\n')


@pytest.fixture(scope='module', autouse=True)
def binaries():
    for b in (RELAY, TUNNELCAT):
        if not os.access(b, os.X_OK):
            pytest.fail(f'{b} is missing: meson setup build && ninja -C build')


# ---- a plain TCP master --------------------------------------------------------------------


class TcpMaster:
    """echo: send back what arrives (hashed), close after the peer's EOF.  sink: count, close
    after EOF.  source: send `source_len` zero bytes then close.  hold: accept and keep."""

    def __init__(self, mode, source_len=0):
        self.mode = mode
        self.source_len = source_len
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(2048)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.closed = 0
        self.close_times = []
        self.received = 0
        self.sha = hashlib.sha256()
        self.conns = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        self.lsock.setblocking(False)
        sel.register(self.lsock, selectors.EVENT_READ, None)
        out = {}
        while not self._stop:
            for key, ev in sel.select(0.05):
                if key.data is None:
                    try:
                        c, _ = self.lsock.accept()
                    except BlockingIOError:
                        continue
                    c.setblocking(False)
                    self.accepted += 1
                    self.conns.append(c)
                    out[c] = bytearray()
                    if self.mode == 'source':
                        out[c] += b'\0' * self.source_len
                        sel.register(c, selectors.EVENT_READ | selectors.EVENT_WRITE, 'c')
                    else:
                        sel.register(c, selectors.EVENT_READ, 'c')
                    continue
                c = key.fileobj
                if ev & selectors.EVENT_READ:
                    try:
                        data = c.recv(1 << 20)
                    except (ConnectionError, OSError):
                        data = b''
                    if data:
                        self.received += len(data)
                        if self.mode == 'echo':
                            self.sha.update(data)
                        if self.mode == 'echo':
                            out[c] += data
                            sel.modify(c, selectors.EVENT_READ | selectors.EVENT_WRITE, 'c')
                    elif self.mode == 'echo' and out[c]:
                        out[c] += b''  # flush, then close below when empty
                        sel.modify(c, selectors.EVENT_WRITE, 'eof')
                    else:
                        if self.mode == 'source' and out[c]:
                            sel.modify(c, selectors.EVENT_WRITE, 'eof')
                            continue
                        sel.unregister(c)
                        c.close()
                        self.closed += 1
                        self.close_times.append(time.monotonic())
                        continue
                if ev & selectors.EVENT_WRITE and out.get(c):
                    try:
                        n = c.send(out[c][:1 << 20])
                    except BlockingIOError:
                        n = 0
                    except (ConnectionError, OSError):
                        sel.unregister(c)
                        c.close()
                        self.closed += 1
                        self.close_times.append(time.monotonic())
                        continue
                    del out[c][:n]
                    if not out[c]:
                        if key.data == 'eof' or self.mode == 'source':
                            sel.unregister(c)
                            c.close()
                            self.closed += 1
                            self.close_times.append(time.monotonic())
                        else:
                            sel.modify(c, selectors.EVENT_READ, 'c')
        sel.close()

    def stop(self):
        self._stop = True
        self._thread.join(5)
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.lsock.close()


# ---- the relay and the client -------------------------------------------------------------


class Relay:
    def __init__(self, master_port, *args):
        self.log = []
        self.proc = subprocess.Popen(
            [RELAY, '--listen', '127.0.0.1:0', '--master', f'127.0.0.1:{master_port}',
             '--metrics', '127.0.0.1:0', *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_log(r'listening on 127\.0\.0\.1:(\d+)').group(1))
        self.metrics_port = int(self.wait_log(r'metrics on http://127\.0\.0\.1:(\d+)').group(1))

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip('\n'))

    def wait_log(self, pattern, timeout=20, start=0):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        i = start
        while time.monotonic() < deadline:
            while i < len(self.log):
                m = rx.search(self.log[i])
                if m:
                    return m
                i += 1
            if self.proc.poll() is not None and i >= len(self.log):
                break
            time.sleep(0.02)
        raise AssertionError(f'relay log has no {pattern!r}:\n' + '\n'.join(self.log[-30:]))

    def count(self, pattern):
        rx = re.compile(pattern)
        return sum(1 for line in self.log if rx.search(line))

    def vmrss_kib(self):
        kib = proc_status_kib(self.proc.pid, 'VmRSS')
        if kib is None:
            raise AssertionError('no VmRSS')
        return kib

    def metrics(self):
        with urllib.request.urlopen(f'http://127.0.0.1:{self.metrics_port}/metrics', timeout=5) as r:
            text = r.read().decode()
        return {m.group(1): float(m.group(2))
                for m in re.finditer(r'^([a-z_]+(?:\{[^}]*\})?) (\S+)$', text, re.M)}

    def healthz(self):
        with urllib.request.urlopen(f'http://127.0.0.1:{self.metrics_port}/healthz', timeout=5) as r:
            return r.status, r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            assert rc == 0, '\n'.join(self.log[-20:])
        self._reader.join(5)


class TunnelCat:
    """tunnelcat with a writer thread (SHA-256 of what went in) and a reader thread (of what
    came out); events from stderr with their CLOCK_MONOTONIC time in seconds."""

    def __init__(self, port, *args, direct=False):
        argv = [TUNNELCAT, *args] + (['--direct'] if direct else []) + [f'127.0.0.1:{port}']
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        self.events = []
        self.sha_in = hashlib.sha256()
        self.sha_out = hashlib.sha256()
        self.n_in = 0
        self.n_out = 0
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        self._t_err.start()
        self._t_out.start()
        self._writer = None
        self.stop_writing = threading.Event()

    def _read_err(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors='replace').rstrip('\n')
            m = re.match(r'tunnelcat: (\d+) (\S+) ?(.*)', line)
            if m:
                self.events.append((int(m.group(1)) / 1000.0, m.group(2), m.group(3)))
            else:
                self.events.append((time.monotonic(), 'log', line))

    def _read_out(self):
        while True:
            b = self.proc.stdout.read(1 << 20)
            if not b:
                return
            self.n_out += len(b)
            self.sha_out.update(b)

    def write_stream(self, total=None, rate=None, chunk=65536, seed=1):
        """Write pseudo-random bytes (total, or until stop_writing) at most `rate` bytes/s,
        then close stdin."""
        def run():
            block = hashlib.sha256(str(seed).encode()).digest() * (chunk // 32 + 1)
            i = 0
            t0 = time.monotonic()
            try:
                while not self.stop_writing.is_set() and (total is None or self.n_in < total):
                    n = chunk if total is None else min(chunk, total - self.n_in)
                    data = bytes([i & 0xFF]) + block[1:n]
                    i += 1
                    self.proc.stdin.write(data)
                    self.sha_in.update(data)
                    self.n_in += n
                    if rate:
                        ahead = self.n_in / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
            except BrokenPipeError:
                pass
            finally:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass
        self._writer = threading.Thread(target=run, daemon=True)
        self._writer.start()

    def wait_event(self, kind, count=1, timeout=30, after=0.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if e[1] == kind and e[0] >= after]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                time.sleep(0.1)
                found = [e for e in self.events if e[1] == kind and e[0] >= after]
                if len(found) >= count:
                    return found[count - 1]
                break
            time.sleep(0.01)
        raise AssertionError(f'tunnelcat: no {count}x {kind!r}; events: {self.events[-15:]}')

    def wait(self, timeout=120):
        rc = self.proc.wait(timeout)
        if self._writer:
            self._writer.join(10)
        self._t_out.join(10)
        self._t_err.join(10)
        return rc

    def kinds(self, kind):
        return [e for e in self.events if e[1] == kind]

    def stats(self):
        s = self.kinds('stats')
        assert s, self.events[-10:]
        return {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', s[-1][2])}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cleanup():
    things = []
    yield things
    for t in reversed(things):
        try:
            if isinstance(t, TunnelCat):
                t.kill()
            else:
                t.stop()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


# ---- tests ----------------------------------------------------------------------------------


def test_rst_cuts(cleanup):
    """Ten cuts of the link (RST and FIN in turn) while a stream is echoed: the bytes out are
    the bytes in, the master saw one connection, every cut was resumed."""
    master = TcpMaster('echo')
    cleanup.append(master)
    relay = Relay(master.port)
    cleanup.append(relay)
    proxy = FaultProxy(relay.port)
    cleanup.append(proxy)
    tc = TunnelCat(proxy.port, '--backoff-max', '500')
    cleanup.append(tc)
    tc.wait_event('open')
    tc.write_stream(rate=8 << 20)
    outages = []
    for i in range(10):
        time.sleep(0.15 + (i % 3) * 0.1)
        proxy.cut(rst=(i % 2 == 0))
        up = tc.wait_event('up', count=i + 1, timeout=20)
        outages.append(int(re.search(r'outage_ms=(\d+)', up[2]).group(1)))
    time.sleep(0.3)
    tc.stop_writing.set()
    assert tc.wait() == 0, tc.events[-10:]
    assert tc.n_in > 2 << 20
    assert tc.n_out == tc.n_in
    assert tc.sha_out.hexdigest() == tc.sha_in.hexdigest()
    assert master.accepted == 1
    assert len(tc.kinds('down')) == 10
    assert relay.count(r'resumed from') == 10
    st = tc.stats()
    assert st['resumes'] == 10
    record('resume after RST/FIN cut (ms, link loss to resumed)',
           median=statistics.median(outages), min=min(outages), max=max(outages), cuts=10,
           backoff_max_ms=500)


def test_blackhole_30s(cleanup):
    """A 30 s black hole (nothing forwarded, sockets kept): both dead-link timers fire, the
    client keeps trying, and when the path returns it resumes; the master saw one quiet
    connection and the bytes are whole."""
    master = TcpMaster('echo')
    cleanup.append(master)
    relay = Relay(master.port, '--dead-timeout', '2')
    cleanup.append(relay)
    proxy = FaultProxy(relay.port)
    cleanup.append(proxy)
    tc = TunnelCat(proxy.port, '--dead-timeout', '2000', '--ping', '500',
                   '--handshake-timeout', '3000', '--backoff-max', '1000')
    cleanup.append(tc)
    tc.wait_event('open')
    tc.write_stream(rate=256 << 10, chunk=16384)
    time.sleep(1.0)
    proxy.blackhole()
    t_hole = time.monotonic()
    down = tc.wait_event('down', timeout=10)
    assert 'link dead' in down[2]
    assert 1.5 <= down[0] - t_hole <= 4.0
    relay.wait_log(r'link from .* lost \(link dead: nothing received')
    time.sleep(30 - (time.monotonic() - t_hole))
    assert master.closed == 0  # the master's connection was held all along
    t_back = time.monotonic()
    proxy.resume()
    up = tc.wait_event('up', timeout=15, after=t_back - 0.01)
    resume_s = up[0] - t_back
    m = relay.wait_log(r'resumed from .* after ([\d.]+) s outage')
    time.sleep(1.0)
    tc.stop_writing.set()
    assert tc.wait() == 0, tc.events[-10:]
    assert tc.sha_out.hexdigest() == tc.sha_in.hexdigest()
    assert tc.n_out == tc.n_in
    assert master.accepted == 1
    assert float(m.group(1)) >= 27
    record('resume after a 30 s black hole (s, path back to resumed)', resume_s=round(resume_s, 3),
           relay_outage_s=float(m.group(1)), handshake_timeout_ms=3000, backoff_max_ms=1000)


def test_resume_times(cleanup):
    """Five short black holes (4 s, dead timeouts 1 s), then five 4 s outages where the path
    refuses connections: how long after the path comes back the session runs again."""
    master = TcpMaster('echo')
    cleanup.append(master)
    relay = Relay(master.port, '--dead-timeout', '1')
    cleanup.append(relay)
    proxy = FaultProxy(relay.port)
    cleanup.append(proxy)
    tc = TunnelCat(proxy.port, '--dead-timeout', '1000', '--ping', '250',
                   '--handshake-timeout', '2000', '--backoff-max', '1000')
    cleanup.append(tc)
    tc.wait_event('open')
    tc.write_stream(rate=128 << 10, chunk=8192)
    times = []
    for i in range(5):
        time.sleep(0.5)
        proxy.blackhole()
        time.sleep(4)
        t_back = time.monotonic()
        proxy.resume()
        up = tc.wait_event('up', count=i + 1, timeout=15)
        times.append(up[0] - t_back)
    # the same outages, but the path refuses instead of swallowing (a VPN that is down answers
    # with resets): the client learns at once and waits out its backoff, so it resumes at its
    # next attempt after the path returns
    refused = []
    for i in range(5):
        time.sleep(0.5)
        proxy.refuse(True)
        proxy.cut()
        time.sleep(4)
        t_back = time.monotonic()
        proxy.refuse(False)
        up = tc.wait_event('up', count=len(times) + i + 1, timeout=15)
        refused.append(up[0] - t_back)
    tc.stop_writing.set()
    assert tc.wait() == 0, tc.events[-10:]
    assert tc.sha_out.hexdigest() == tc.sha_in.hexdigest()
    assert master.accepted == 1
    record('resume after a 4 s black hole (s, path back to resumed; the proxy held the bytes '
           'of the attempt in flight, as TCP retransmission would deliver them)',
           median=round(statistics.median(times), 3), min=round(min(times), 3),
           max=round(max(times), 3), n=len(times), handshake_timeout_ms=2000, backoff_max_ms=1000)
    record('resume after a 4 s refusing outage (s, path back to resumed: the next attempt '
           'after the backoff)',
           median=round(statistics.median(refused), 3), min=round(min(refused), 3),
           max=round(max(refused), 3), n=len(refused), backoff_max_ms=1000)
    assert max(refused) < 2.5


def _hello(session_id, token, link_seq, received=0):
    payload = (b'CWTN' + struct.pack('>BBIQ', 1, 1, 4096, session_id) + token +
               struct.pack('>QI', received, link_seq))
    return struct.pack('>BI', 1, len(payload)) + payload


def test_wrong_token_refused(cleanup):
    """A resume naming a live session with a wrong token, from another connection, is refused
    and logged; the session goes on undisturbed."""
    master = TcpMaster('echo')
    cleanup.append(master)
    relay = Relay(master.port)
    cleanup.append(relay)
    tc = TunnelCat(relay.port)
    cleanup.append(tc)
    opened = tc.wait_event('open')
    sid = int(re.search(r'session=([0-9a-f]+)', opened[2]).group(1), 16)
    tc.write_stream(rate=2 << 20)
    time.sleep(0.3)
    with socket.create_connection(('127.0.0.1', relay.port), timeout=5) as s:
        s.sendall(_hello(sid, os.urandom(16), 1000))
        hdr = s.recv(5, socket.MSG_WAITALL)
        ftype, flen = struct.unpack('>BI', hdr)
        body = s.recv(flen, socket.MSG_WAITALL)
        assert ftype == 0x03 and body[0] == 3, (hdr, body)  # REFUSE, BAD_TOKEN
        assert s.recv(1) == b''  # and the relay closed that link
    relay.wait_log(rf'refused resume of session {sid:016x} from .*: wrong resume token')
    time.sleep(0.3)
    tc.stop_writing.set()
    assert tc.wait() == 0
    assert tc.sha_out.hexdigest() == tc.sha_in.hexdigest()
    assert not tc.kinds('down')
    m = relay.metrics()
    assert m['cworker_relay_refusals_total{reason="wrong_resume_token"}'] == 1


def test_window_expiry(cleanup):
    """The worker stays away longer than --resume-window: the relay closes the master
    connection and forgets the session; the late resume is refused and the client is told
    its session is lost."""
    master = TcpMaster('echo')
    cleanup.append(master)
    relay = Relay(master.port, '--resume-window', '2')
    cleanup.append(relay)
    proxy = FaultProxy(relay.port)
    cleanup.append(proxy)
    tc = TunnelCat(proxy.port, '--backoff-max', '300', '--max-outage', '60000')
    cleanup.append(tc)
    tc.wait_event('open')
    tc.write_stream(rate=1 << 20)
    time.sleep(0.5)
    proxy.refuse(True)
    proxy.cut()
    t_cut = time.monotonic()
    relay.wait_log(r'resume window of 2 s expired; master connection closed')
    deadline = time.monotonic() + 5
    while master.closed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert master.closed == 1
    assert 1.8 <= master.close_times[0] - t_cut <= 5
    proxy.refuse(False)
    lost = tc.wait_event('lost', timeout=10)
    assert 'resume window expired' in lost[2]
    assert tc.wait() == 3
    relay.wait_log(r'refused resume of session [0-9a-f]+ from .*: resume window expired')
    assert relay.metrics()['cworker_relay_expired_total'] == 1


def test_idle_tunnels_memory(cleanup):
    """1,000 idle tunnels through one relay: all open, the master holds 1,000 connections, and
    the relay's memory per idle session (VmRSS delta / 1000) is small."""
    master = TcpMaster('hold')
    cleanup.append(master)
    relay = Relay(master.port)
    cleanup.append(relay)
    time.sleep(0.5)
    rss0 = relay.vmrss_kib()
    tc = TunnelCat(relay.port, '--idle', '1000')
    cleanup.append(tc)
    tc.wait_event('all', timeout=60)
    time.sleep(1.0)
    rss1 = relay.vmrss_kib()
    assert master.accepted == 1000
    m = relay.metrics()
    assert m['cworker_relay_sessions'] == 1000
    assert m['cworker_relay_bytes_buffered'] == 0
    status, body = relay.healthz()
    assert status == 200 and '1000 sessions' in body
    per_session = (rss1 - rss0) * 1024 / 1000
    record('relay memory per idle session (bytes, VmRSS delta / 1000)', per_session=int(per_session),
           rss_before_kib=rss0, rss_after_kib=rss1)
    assert per_session < 8192
    tc.proc.stdin.close()  # closes every tunnel: ABORT, so the relay ends them at once
    tc.wait_event('all', count=2, timeout=60)
    assert tc.wait() == 0
    deadline = time.monotonic() + 10
    while relay.metrics()['cworker_relay_sessions'] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert relay.metrics()['cworker_relay_sessions'] == 0


def _timed_run(argv_direct_or_tunnel, total, sink_port, relay_port=None):
    """Send `total` bytes one way through tunnelcat; returns (seconds, tunnelcat stats)."""
    t0 = time.monotonic()
    tc = TunnelCat(relay_port or sink_port, *argv_direct_or_tunnel)
    try:
        tc.write_stream(total=total, chunk=1 << 20)
        rc = tc.wait(300)
    finally:
        tc.kill()
    dt = time.monotonic() - t0
    assert rc == 0, tc.events[-5:]
    return dt, tc


def test_throughput_and_overhead(cleanup):
    """Upload 256 MiB directly over TCP and through the relay (same sink, same run), and
    download 256 MiB through the relay; report MB/s and the protocol's bytes on the wire per
    stream byte.  Then small writes (100 bytes every 2 ms) for their overhead."""
    total = 256 << 20
    sink = TcpMaster('sink')
    cleanup.append(sink)
    relay = Relay(sink.port)
    cleanup.append(relay)
    dt_direct, _ = _timed_run(['--direct'], total, sink.port)
    received_direct = sink.received
    assert received_direct == total
    dt_tunnel, tc = _timed_run([], total, sink.port, relay.port)
    assert sink.received == 2 * total
    st = tc.stats()
    assert st['stream_in'] == total
    overhead = (st['wire_out'] + st['wire_in'] - total) / total
    mbs_direct = total / dt_direct / 1e6
    mbs_tunnel = total / dt_tunnel / 1e6
    # downloads: the master sends, the worker receives
    src = TcpMaster('source', source_len=total)
    cleanup.append(src)
    relay2 = Relay(src.port)
    cleanup.append(relay2)
    t0 = time.monotonic()
    tcd = TunnelCat(relay2.port)
    cleanup.append(tcd)
    tcd.write_stream(total=0)
    assert tcd.wait(300) == 0
    dt_down = time.monotonic() - t0
    assert tcd.n_out == total
    t0 = time.monotonic()
    tdd = TunnelCat(src.port, direct=True)
    cleanup.append(tdd)
    tdd.write_stream(total=0)
    assert tdd.wait(300) == 0
    dt_down_direct = time.monotonic() - t0
    assert tdd.n_out == total
    record('throughput, 256 MiB on loopback (MB/s)', upload_direct=round(mbs_direct),
           upload_relay=round(mbs_tunnel), download_direct=round(total / dt_down_direct / 1e6),
           download_relay=round(total / dt_down / 1e6),
           relay_vs_direct_upload=round(mbs_tunnel / mbs_direct, 2))
    record('protocol overhead, bulk upload (wire bytes both ways / stream byte - 1)',
           overhead_pct=round(overhead * 100, 3), wire_out=st['wire_out'], wire_in=st['wire_in'])
    assert mbs_tunnel > 0.1 * mbs_direct

    # small writes: 100-byte messages every 2 ms for 3 s, acknowledged by the delayed ACK
    tcs = TunnelCat(relay.port)
    cleanup.append(tcs)
    tcs.wait_event('open')
    tcs.write_stream(total=150 * 100, chunk=100, rate=50 * 1000)
    assert tcs.wait(60) == 0
    s2 = tcs.stats()
    small = (s2['wire_out'] + s2['wire_in'] - s2['stream_in']) / s2['stream_in']
    record('protocol overhead, 100-byte writes every 2 ms (wire bytes / stream byte - 1, '
           'including the handshake, pings and the end)',
           overhead_pct=round(small * 100, 1), stream=s2['stream_in'], wire_out=s2['wire_out'],
           wire_in=s2['wire_in'])
