"""`cworker-master serve` with many workers: 2,000 sessions of bench/loadgen (the load
generator: one process, N protocol-correct worker sessions) attach, every one answers a
keepalive, commands run on chosen workers among them and answer with that worker's output,
a duplicate login is refused while the first session stays, a wrong password is refused,
and every session is seen going.  (bench/scale.py measures 10,000 and 1,000 real cworker
processes; this is the correctness half, small enough for scripts/check.)
"""

import os
import random
import re
import resource
import signal
import socket
import subprocess
import time

import pytest

import mastercli

pytestmark = [pytest.mark.only_protocol('msgpack')]  # cworker-master speaks msgpack

N = 2000
LOADGEN = os.environ.get('CWORKER_LOADGEN_BIN') or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(mastercli.MASTER_BIN)))),
    'bench', 'loadgen')


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ask(path, line):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    s.sendall(line.encode() + b'\n')
    out = b''
    while d := s.recv(65536):
        out += d
    s.close()
    return out.decode(errors='replace')


def stats(path):
    f = ask(path, 'stats').split()
    return {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.05)
    return v


class Loadgen:
    def __init__(self, port, count, tmp_path, tag, prefix='lg', password='pass', extra=()):
        if not os.access(LOADGEN, os.X_OK):
            pytest.fail(f'no load generator at {LOADGEN} (ninja -C build) or set '
                        'CWORKER_LOADGEN_BIN', pytrace=False)
        self.out = tmp_path / f'{tag}.out'
        self.f = open(self.out, 'w')
        self.proc = subprocess.Popen(
            [LOADGEN, '--connect', f'127.0.0.1:{port}', '--count', str(count), '--prefix', prefix,
             '--password', password, '--stats', '0.5', *extra],
            stdin=subprocess.DEVNULL, stdout=self.f, stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile)

    def text(self):
        return self.out.read_text()

    def last(self, key):
        v = re.findall(rf'{key}=(\d+)', self.text())
        return int(v[-1]) if v else 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.f.close()


def test_serve_holds_many_sessions(tmp_path):
    names = [f'lg{i}' for i in range(N)]
    wf = tmp_path / 'workers.txt'
    wf.write_text(''.join(f'{n} pass\n' for n in names))
    ctl = str(tmp_path / 'ctl')
    ep = mastercli.Endpoint()
    serve = mastercli.MasterProc('serve', ['--workers', str(wf), '--control', ctl,
                                           '--keepalive', '1'], ep,
                                 workdir=str(tmp_path)).start()
    serve.wait_listening()
    lg = dup = bad = None
    try:
        wait_for(lambda: os.path.exists(ctl), 10, 'the control socket')
        lg = Loadgen(ep.msgpack_port, N, tmp_path, 'main')
        wait_for(lambda: lg.proc.poll() is not None or re.search(r'attached (\d+)/\1', lg.text()),
                 60, f'{N} sessions to attach')
        assert lg.proc.poll() is None, lg.text()
        st = wait_for(lambda: (s := stats(ctl))['attached'] == N and s, 30, 'serve to count them')
        assert st['connections'] == N and st['accounts'] == N

        # serve sends a keepalive every second: every session answers one
        wait_for(lambda: lg.last('keepalives') >= N, 30, 'a keepalive to every session')

        # commands on chosen workers: each answer is that worker's own output
        for name in random.sample(names, 10) + [names[0], names[-1]]:
            out = ask(ctl, f'run {name} echo {name}-ok')
            assert re.match(r'exit 0 ms [0-9.]+\n', out), out
            assert out.splitlines()[1] == f'{name}: echo {name}-ok', out
        assert ask(ctl, 'run nosuch true').startswith("error no attached worker 'nosuch'")
        assert ask(ctl, 'frobnicate').startswith('error unknown request')

        # a second login for attached names: the old sessions answer the master's print,
        # so the newcomers are refused (the stock rule) and the first ones stay
        dup = Loadgen(ep.msgpack_port, 5, tmp_path, 'dup', extra=['--reconnect-max', '30'])
        wait_for(lambda: serve.stderr_text().count('refusing the new connection') >= 5, 30,
                 'the duplicate logins to be refused')
        dup.stop()
        # a wrong password: refused (401), never attached
        bad = Loadgen(ep.msgpack_port, 3, tmp_path, 'bad', prefix='lg', password='wrong',
                      extra=['--reconnect-max', '30'])
        wait_for(lambda: serve.stderr_text().count('bad name or password') >= 3, 30,
                 'the wrong passwords to be refused')
        bad.stop()
        assert stats(ctl)['attached'] == N
        assert lg.last('lost') == 0, lg.text()[-2000:]

        lg.stop()
        wait_for(lambda: stats(ctl)['connections'] == 0, 60, 'serve to see every session go')
        assert serve.stderr_text().count('detached') >= N
        assert serve.running()
    finally:
        for p in (lg, dup, bad):
            if p is not None:
                p.stop()
        serve.signal(signal.SIGTERM)
        r = serve.wait(30)
    assert r.rc == 0, serve.stderr_text()[-3000:]
