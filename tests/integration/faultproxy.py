"""A TCP proxy on 127.0.0.1 that a test controls, for putting network faults between two peers.

Standard library only (Debian's /usr/bin/python3).  Every accepted connection is paired with a
new connection to the upstream address; bytes are forwarded both ways by one thread, so every
fault applies to all current pairs at a single moment:

    proxy = FaultProxy(upstream_port)        # listens on 127.0.0.1:<proxy.port>
    proxy.cut()                              # reset every pair (RST to both sides)
    proxy.cut(rst=False)                     # close every pair in order (FIN)
    proxy.blackhole()                        # forward nothing, drop nothing, keep the sockets
                                             # open, accept new connections without connecting
                                             # them: what a dead Wi-Fi or VPN link looks like
    proxy.delay(0.2)                         # hold every chunk 0.2 s before forwarding it
    proxy.resume()                           # forward again (what was held goes first)
    proxy.refuse(True)                       # reset new connections at once
    proxy.stop()

`stats()` gives the bytes forwarded each way and the connections seen; `cut_after(n)` cuts every
pair once n more bytes have been forwarded (in the middle of a chunk, so the peers see half a
frame).  While black-holed the proxy does not read its sockets, so the kernel's buffers fill and
the senders' writes back up, as behind a real black hole.

Run it by hand: /usr/bin/python3 tests/integration/faultproxy.py UPSTREAM_PORT [LISTEN_PORT]
and type commands (cut, rst, fin, hole, resume, delay S, refuse, accept, stats, quit) on stdin.
"""

import collections
import selectors
import socket
import struct
import sys
import threading
import time

_LINGER_RST = struct.pack('ii', 1, 0)


class _Pair:
    def __init__(self, down):
        self.down = down
        self.up = None
        self.connected = False
        # bytes waiting to be written to each side: deque of (due_time, bytes)
        self.to_up = collections.deque()
        self.to_down = collections.deque()


class FaultProxy:
    """A controllable TCP proxy; see the module docstring."""

    def __init__(self, upstream_port, upstream_host='127.0.0.1', listen_port=0):
        self.upstream = (upstream_host, upstream_port)
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(('127.0.0.1', listen_port))
        self._lsock.listen(1024)
        self._lsock.setblocking(False)
        self.port = self._lsock.getsockname()[1]
        self._lock = threading.Lock()
        self._cmds = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, ('listen', None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ('wake', None))
        self._pairs = []
        self._mode = 'forward'      # forward | blackhole
        self._delay = 0.0
        self._refuse = False
        self._cut_left = None       # bytes until a planned cut
        self._cut_rst = True
        self._stats = {'up': 0, 'down': 0, 'accepted': 0, 'cuts': 0, 'refused': 0}
        self._running = True
        self._thread = threading.Thread(target=self._run, name='faultproxy', daemon=True)
        self._thread.start()

    # ---- control (any thread) ---------------------------------------------

    def _command(self, *cmd):
        done = threading.Event()
        with self._lock:
            self._cmds.append((cmd, done))
        self._wake_w.send(b'x')
        if not done.wait(10):
            raise RuntimeError(f'faultproxy did not run {cmd!r}')

    def cut(self, rst=True):
        """Cut every current pair now: RST to both sides, or an orderly close."""
        self._command('cut', rst)

    def cut_after(self, nbytes, rst=True):
        """Cut every pair once nbytes more have been forwarded (either direction)."""
        self._command('cut_after', nbytes, rst)

    def blackhole(self):
        """Stop forwarding and reading; keep every socket open; park new connections."""
        self._command('mode', 'blackhole')

    def delay(self, seconds):
        """Hold every chunk for `seconds` before forwarding it (0: no delay)."""
        self._command('delay', float(seconds))

    def resume(self):
        """Forward again: held bytes first, parked connections get their upstream."""
        self._command('mode', 'forward')

    def refuse(self, on=True):
        """Reset new connections as soon as they are accepted."""
        self._command('refuse', bool(on))

    def stats(self):
        with self._lock:
            s = dict(self._stats)
            s['pairs'] = len(self._pairs)
            return s

    def stop(self):
        if not self._running:
            return
        self._command('stop')
        self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- the forwarding thread ----------------------------------------------

    def _close_pair(self, p, rst):
        for s in (p.down, p.up):
            if s is None:
                continue
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                if rst:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                s.close()
            except OSError:
                pass
        if p in self._pairs:
            self._pairs.remove(p)

    def _cut_all(self, rst):
        self._stats['cuts'] += 1
        for p in list(self._pairs):
            self._close_pair(p, rst)

    def _connect_up(self, p):
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        p.up = up
        err = up.connect_ex(self.upstream)
        if err not in (0, 115):  # EINPROGRESS
            self._close_pair(p, True)
            return
        self._sel.register(up, selectors.EVENT_WRITE, ('up', p))

    def _interest(self, p):
        """Re-register both sockets for what they should wait for now."""
        for s, out, role in ((p.down, p.to_down, 'down'), (p.up, p.to_up, 'up')):
            if s is None or (role == 'up' and not p.connected):
                continue
            # read a side only while what it sends is not piling up (backpressure)
            other = p.to_up if role == 'down' else p.to_down
            reading = self._mode == 'forward' and sum(len(d) for _, d in other) < (1 << 20)
            ev = 0
            if reading:
                ev |= selectors.EVENT_READ
            if out and self._mode == 'forward':
                ev |= selectors.EVENT_WRITE
            try:
                if ev:
                    self._sel.modify(s, ev, (role, p)) if self._registered(s) else \
                        self._sel.register(s, ev, (role, p))
                elif self._registered(s):
                    self._sel.unregister(s)
            except (KeyError, ValueError, OSError):
                pass

    def _registered(self, s):
        try:
            self._sel.get_key(s)
            return True
        except (KeyError, ValueError):
            return False

    def _accept(self):
        while True:
            try:
                s, _ = self._lsock.accept()
            except BlockingIOError:
                return
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._stats['accepted'] += 1
            if self._refuse:
                with self._lock:
                    self._stats['refused'] += 1
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                s.close()
                continue
            p = _Pair(s)
            self._pairs.append(p)
            if self._mode == 'forward':
                self._connect_up(p)
            self._interest(p)

    def _forward(self, p, src_role):
        src = p.down if src_role == 'down' else p.up
        try:
            data = src.recv(65536)
        except (ConnectionError, OSError):
            self._close_pair(p, True)
            return
        if not data:
            self._close_pair(p, False)
            return
        cut = False
        if self._cut_left is not None:
            if len(data) >= self._cut_left:
                data = data[:self._cut_left]
                cut = True
            else:
                self._cut_left -= len(data)
        due = time.monotonic() + self._delay
        if data:
            (p.to_up if src_role == 'down' else p.to_down).append((due, data))
            with self._lock:
                self._stats['up' if src_role == 'down' else 'down'] += len(data)
        if cut:
            self._flush(p, 'up')
            self._flush(p, 'down')
            self._cut_left = None
            self._cut_all(self._cut_rst)
            return
        self._interest(p)

    def _flush(self, p, dst_role):
        """Write what is due to one side; keep the rest."""
        dst, q = (p.up, p.to_up) if dst_role == 'up' else (p.down, p.to_down)
        if dst is None or (dst_role == 'up' and not p.connected):
            return
        now = time.monotonic()
        while q and q[0][0] <= now:
            due, data = q[0]
            try:
                n = dst.send(data)
            except BlockingIOError:
                n = 0
            except (ConnectionError, OSError):
                self._close_pair(p, True)
                return
            if n < len(data):
                q[0] = (due, data[n:])
                break
            q.popleft()

    def _run(self):
        while self._running:
            timeout = 0.05
            for key, ev in self._sel.select(timeout):
                kind, p = key.data
                if kind == 'listen':
                    self._accept()
                elif kind == 'wake':
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                elif p not in self._pairs:
                    continue
                elif kind == 'up' and not p.connected:
                    err = p.up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self._close_pair(p, True)
                        continue
                    p.connected = True
                    self._interest(p)
                else:
                    if ev & selectors.EVENT_READ and self._mode == 'forward':
                        self._forward(p, kind)
                        if p not in self._pairs:
                            continue
                    if ev & selectors.EVENT_WRITE:
                        self._flush(p, 'down' if kind == 'down' else 'up')
                        if p in self._pairs:
                            self._interest(p)
            # delayed chunks that became due
            if self._mode == 'forward':
                for p in list(self._pairs):
                    if p.to_up or p.to_down:
                        self._flush(p, 'up')
                        if p in self._pairs:
                            self._flush(p, 'down')
                        if p in self._pairs:
                            self._interest(p)
            self._run_commands()
        for p in list(self._pairs):
            self._close_pair(p, False)
        self._sel.close()
        self._lsock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run_commands(self):
        while True:
            with self._lock:
                if not self._cmds:
                    return
                cmd, done = self._cmds.popleft()
            op = cmd[0]
            if op == 'cut':
                self._cut_all(cmd[1])
            elif op == 'cut_after':
                self._cut_left, self._cut_rst = cmd[1], cmd[2]
            elif op == 'mode':
                self._mode = cmd[1]
                for p in list(self._pairs):
                    if self._mode == 'forward' and p.up is None:
                        self._connect_up(p)
                    self._interest(p)
            elif op == 'delay':
                self._delay = cmd[1]
            elif op == 'refuse':
                self._refuse = cmd[1]
            elif op == 'stop':
                self._running = False
            done.set()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    proxy = FaultProxy(int(sys.argv[1]), listen_port=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(f'listening on 127.0.0.1:{proxy.port} -> {proxy.upstream[0]}:{proxy.upstream[1]}',
          flush=True)
    for line in sys.stdin:
        w = line.split()
        if not w:
            continue
        if w[0] in ('cut', 'rst'):
            proxy.cut(True)
        elif w[0] == 'fin':
            proxy.cut(False)
        elif w[0] == 'hole':
            proxy.blackhole()
        elif w[0] == 'resume':
            proxy.resume()
        elif w[0] == 'delay':
            proxy.delay(float(w[1]) if len(w) > 1 else 0)
        elif w[0] == 'refuse':
            proxy.refuse(True)
        elif w[0] == 'accept':
            proxy.refuse(False)
        elif w[0] == 'stats':
            print(proxy.stats(), flush=True)
        elif w[0] == 'quit':
            break
    proxy.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
