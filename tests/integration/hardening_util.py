"""Helpers for the hardening tests (test_hardening.py, test_hardening_master.py).
Plain Python, no pytest. Not a test module itself.

* `proc_status(pid)`: the 'kB' fields of /proc/PID/status as a dict (VmRSS, VmHWM, RssAnon,
  RssFile, ...), in KiB.
* `fd_targets(pid)`, `fd_count(pid)`, `fd_kinds(pid)`: what the process has open (readlink of
  /proc/PID/fd/*; fd_kinds without inode numbers); `wait_fds_back(pid, baseline)`.
* `smaps_top(pid)`: the biggest resident mappings, grouped by file ('[anon]' for the rest),
  to explain an RSS figure.
* `RssSampler(pid, interval=0.1)`: a thread that reads /proc/PID/status every `interval`
  seconds while a `with` block runs, and keeps the peaks (VmRSS, RssAnon, RssFile).
* `generator_sha256(shell)`: sha256 and size of what a shell command writes to stdout, with a
  newline appended when the output does not end with one (the protocol's line rules add it).
* `BlackholeProxy(upstream_port)`: a loopback TCP forwarder that can be told to stop
  forwarding without closing anything (see its docstring).
"""

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
import time

# Under AddressSanitizer (scripts/check sets CW_SANITIZED=1 for that run) RSS is ASan's shadow
# memory, quarantine and redzones, not cworker's: memory bounds are asserted in the plain build
# only; everything else (bytes, order, descriptors, processes) is checked in both.
SANITIZED = bool(os.environ.get('CW_SANITIZED'))


def proc_status(pid):
    """{'VmRSS': KiB, 'VmHWM': KiB, 'RssAnon': KiB, ...} from /proc/PID/status."""
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == 'kB':
                out[parts[0].rstrip(':')] = int(parts[1])
    return out


def fd_targets(pid):
    """Sorted readlink() of every open descriptor of `pid` (socket:[inode], pipe:[..], paths)."""
    d = f'/proc/{pid}/fd'
    out = []
    for name in os.listdir(d):
        with contextlib.suppress(OSError):
            out.append(os.readlink(os.path.join(d, name)))
    return sorted(out)


def fd_count(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


def fd_kinds(pid):
    """fd_targets with inode numbers removed ('socket:[123]' -> 'socket'), for comparisons."""
    return sorted(t.split(':[', 1)[0] if ':[' in t else t for t in fd_targets(pid))


def wait_fds_back(pid, baseline, timeout=10):
    """Wait until fd_kinds(pid) equals `baseline` again; AssertionError listing both if not."""
    deadline = time.monotonic() + timeout
    while True:
        now = fd_kinds(pid)
        if now == baseline:
            return now
        if time.monotonic() >= deadline:
            raise AssertionError(f'descriptor leak: baseline {baseline}, now {fd_targets(pid)}')
        time.sleep(0.05)


def smaps_top(pid, n=10):
    """[(rss KiB, mapping)] of the largest resident mappings, grouped by backing file."""
    agg = {}
    cur = '[anon]'
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if '-' in parts[0] and not parts[0].endswith(':'):
                cur = parts[5] if len(parts) > 5 else '[anon]'
            elif parts[0] == 'Rss:':
                agg[cur] = agg.get(cur, 0) + int(parts[1])
    return sorted(((v, k) for k, v in agg.items()), reverse=True)[:n]


def format_smaps_top(pid, n=10):
    with contextlib.suppress(OSError):
        return '\n'.join(f'    {kib:6d} KiB  {name}' for kib, name in smaps_top(pid, n))
    return '    (process gone)'


class RssSampler:
    """Sample /proc/PID/status every `interval` s in a thread while the `with` block runs.

    .samples: [(t, VmRSS, RssAnon, RssFile)], .peak_rss/.peak_anon/.peak_file (KiB),
    .hwm: VmHWM read at the end (peak since the process started; the kernel's figure,
    it also catches peaks between two samples)."""

    def __init__(self, pid, interval=0.1):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self.hwm = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        try:
            st = proc_status(self.pid)
        except OSError:
            return
        self.samples.append((time.monotonic(), st.get('VmRSS', 0), st.get('RssAnon', 0),
                             st.get('RssFile', 0)))
        self.hwm = st.get('VmHWM', self.hwm)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._sample()
        return False

    @property
    def peak_rss(self):
        return max(s[1] for s in self.samples)

    @property
    def peak_anon(self):
        return max(s[2] for s in self.samples)

    @property
    def peak_file(self):
        return max(s[3] for s in self.samples)

    @property
    def first(self):
        return self.samples[0]

    def describe(self):
        return (f'{len(self.samples)} samples: peak VmRSS {self.peak_rss} KiB, peak RssAnon '
                f'{self.peak_anon} KiB, peak RssFile {self.peak_file} KiB, VmHWM {self.hwm} KiB '
                f'(first sample: VmRSS {self.first[1]}, RssAnon {self.first[2]}, RssFile '
                f'{self.first[3]})')


def generator_sha256(shell, bufsize=1 << 20):
    """(sha256 hex, size) of `sh -c shell`'s stdout as a line-based receiver stores it: a
    newline is appended if the output does not end with one."""
    h = hashlib.sha256()
    size = 0
    last = b'\n'
    with subprocess.Popen(['sh', '-c', shell], stdout=subprocess.PIPE) as p:
        while True:
            b = p.stdout.read(bufsize)
            if not b:
                break
            h.update(b)
            size += len(b)
            last = b[-1:]
        p.wait()
    if size and last != b'\n':
        h.update(b'\n')
        size += 1
    return h.hexdigest(), size


class BlackholeProxy:
    """A loopback TCP forwarder between a worker and a master, for link-failure tests.

    Every accepted connection gets its own upstream connection to 127.0.0.1:upstream_port
    and two threads (one per direction).

    * `blackhole()`: from now on nothing is forwarded, in either direction, on any connection
      (existing or new): data is read and dropped, so both peers' TCP stacks keep
      acknowledging and nobody sees a FIN or RST. Such a connection is "poisoned": an EOF
      from one side is not passed on either (a black hole does not carry FINs).
    * `resume()`: forwarding starts again for new connections; the poisoned ones (their
      byte streams have holes) are closed on both sides, which is what the peers would see
      once a real network heals and their retransmissions are answered with RSTs.
    * `close()`: stop accepting and close everything.

    Only sockets are touched; no process is signalled.
    """

    def __init__(self, upstream_port, host='127.0.0.1'):
        self.upstream = (host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.blackholed = False
        self.accepted = 0
        self.dropped_bytes = 0
        self.forwarded_bytes = 0
        self._pairs = []  # [client, upstream, poisoned]
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f'blackhole-proxy-{self.port}')
        self._thread.start()

    @property
    def msgpack_port(self):  # so a worker class can be pointed at the proxy
        return self.port

    def _accept_loop(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = [client, up, False, 0]  # sockets, poisoned, directions finished
            with self._lock:
                if self.blackholed:
                    pair[2] = True
                self._pairs.append(pair)
                self.accepted += 1
            for src, dst in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    def _pump(self, pair, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b''
            with self._lock:
                poisoned = pair[2] = pair[2] or self.blackholed
            if not data:
                if not poisoned:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                self._direction_done(pair)
                return
            if poisoned:
                self.dropped_bytes += len(data)
                continue
            try:
                dst.sendall(data)
                self.forwarded_bytes += len(data)
            except OSError:
                with contextlib.suppress(OSError):
                    src.shutdown(socket.SHUT_RDWR)
                self._direction_done(pair)
                return

    def _direction_done(self, pair):
        with self._lock:
            pair[3] += 1
            done = pair[3] == 2 and not pair[2]
            if done and pair in self._pairs:
                self._pairs.remove(pair)
        if done:
            self._close_pair(pair)

    @staticmethod
    def _close_pair(pair):
        for s in pair[:2]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def blackhole(self):
        with self._lock:
            self.blackholed = True
            for p in self._pairs:
                p[2] = True

    def resume(self):
        with self._lock:
            self.blackholed = False
            poisoned = [p for p in self._pairs if p[2]]
            self._pairs = [p for p in self._pairs if not p[2]]
        for p in poisoned:
            self._close_pair(p)
        return len(poisoned)

    def close(self):
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for p in pairs:
            self._close_pair(p)
        self._thread.join(2)
