"""cworker through an HTTP proxy (Debian's tinyproxy on loopback) to the stock master:
`--proxy`, the http_proxy/no_proxy variables, Basic proxy authentication, and a CONNECT the
proxy refuses, which must be named in cworker's log and retried."""

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

import bbmaster
from cwhelpers import describe_build
from tlsutil import CA, Nginx

# an HTTP proxy carries msgpack links only (a PB worker refuses --proxy: test_config.py)
pytestmark = pytest.mark.only_protocol('msgpack')

BUILDERS = {'hello': {'steps': "[steps.ShellCommand(command='echo hello world')]",
                      'workernames': ['pw']}}
WORKERS = (('pw', 'proxy-pass'),)


class Tinyproxy:
    def __init__(self, dir, connect_ports, auth=None):
        self.binary = shutil.which('tinyproxy')
        if self.binary is None:
            raise RuntimeError('tinyproxy is not installed (apt-get install tinyproxy; '
                               'scripts/check installs it)')
        self.dir = dir
        self.port = bbmaster.free_port()
        self.logfile = os.path.join(dir, 'tinyproxy.log')
        lines = ['User root', 'Group root', f'Port {self.port}', 'Listen 127.0.0.1',
                 'Timeout 600', 'LogLevel Connect', f'LogFile "{self.logfile}"',
                 'Allow 127.0.0.1', 'MaxClients 50']
        lines += [f'ConnectPort {p}' for p in connect_ports]
        if auth:
            lines.append(f'BasicAuth {auth[0]} {auth[1]}')
        self.conf = os.path.join(dir, 'tinyproxy.conf')
        with open(self.conf, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        self.proc = subprocess.Popen([self.binary, '-d', '-c', self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f'tinyproxy did not start: {self.log()[-2000:]}')
                time.sleep(0.05)

    @property
    def url(self):
        return f'http://127.0.0.1:{self.port}'

    def log(self):
        try:
            with open(self.logfile, errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def connects(self, port, host='127.0.0.1'):
        return len(re.findall(rf'CONNECT {re.escape(host)}:{port} HTTP', self.log()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(BUILDERS, workers=WORKERS)


@pytest.fixture
def proxies(tmp_path):
    made = []

    def factory(connect_ports, auth=None):
        d = tmp_path / f'proxy{len(made)}'
        d.mkdir()
        p = Tinyproxy(str(d), connect_ports, auth)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.stop()


@pytest.fixture
def pworker(master, worker_factory):
    def factory(*args, env=None, wait=True):
        return worker_factory(master, name='pw', extra_args=['--backoff-max', '1', *args],
                              env=env, start=True) if wait else \
            _started_nowait(worker_factory(master, name='pw', start=False,
                                           extra_args=['--backoff-max', '1', *args], env=env))
    return factory


def _started_nowait(w):
    w.start(wait=False)
    return w


def _hello(master):
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'hello world\n'


def _fails_and_retries(w, pattern, attempts=2, timeout=20):
    def enough():
        assert w.running(), f'cworker exited: {w.log_text()[-2000:]}'
        return len(re.findall(pattern, w.log_text())) >= attempts
    bbmaster.wait_for(enough, timeout, f'{attempts} failures matching {pattern!r}')
    assert 'attached to master' not in w.log_text()
    print('\n  cworker: ' + next(ln for ln in w.log_text().splitlines()
                                 if re.search(pattern, ln)))


def test_build_through_proxy_flag(master, proxies, pworker):
    p = proxies([master.msgpack_port])
    pworker('--proxy', p.url)
    _hello(master)
    assert p.connects(master.msgpack_port) >= 1, p.log()


def test_http_proxy_variable_and_no_proxy(master, proxies, pworker, worker_factory):
    p = proxies([master.msgpack_port])
    w = pworker(env={'http_proxy': p.url})
    _hello(master)
    assert p.connects(master.msgpack_port) == 1, p.log()
    w.stop()
    bbmaster.wait_for(lambda: not master.worker_connected('pw'), 15, 'the worker to leave')
    # no_proxy covers the master: straight there, the proxy sees nothing new
    pworker(env={'http_proxy': p.url, 'no_proxy': 'localhost,127.0.0.0/8'})
    _hello(master)
    assert p.connects(master.msgpack_port) == 1, p.log()


def test_refused_connect_is_named_and_retried(master, proxies, pworker):
    p = proxies([1])   # only port 1 may be tunnelled to: the master's port is refused
    w = pworker('--proxy', p.url, wait=False)
    _fails_and_retries(w, r'the proxy refused CONNECT: HTTP 403')


def test_proxy_down_is_named_and_retried(master, pworker):
    port = bbmaster.free_port()   # nothing listens there
    w = pworker('--proxy', f'http://127.0.0.1:{port}', wait=False)
    _fails_and_retries(w, rf'cannot reach the HTTP proxy 127\.0\.0\.1:{port}: connection refused')


def test_proxy_basic_auth(master, proxies, pworker, worker_factory):
    p = proxies([master.msgpack_port], auth=('alice', 's3cret'))
    w = pworker('--proxy', p.url, wait=False)
    _fails_and_retries(w, r'the proxy refused CONNECT: HTTP 407')
    w.stop()
    pworker('--proxy', f'http://alice:s3cret@127.0.0.1:{p.port}')
    _hello(master)
    assert p.connects(master.msgpack_port) >= 1


class WssWorker(bbmaster.CWorker):
    """cworker given a wss:// URL (the nginx in front of the master) instead of host:port."""

    def __init__(self, basedir, master, url, binary, extra_args=(), env=None):
        super().__init__(basedir, master, 'pw', 'proxy-pass', binary=binary,
                         extra_args=list(extra_args), env=env)
        self.url = url

    def argv(self):
        return [self.binary, '--master', self.url, '--name', self.worker_name,
                '--basedir', self.basedir, '--password-file', self.password_file,
                '--backoff-max', '1'] + self.extra_args


def test_wss_through_https_proxy_variable(master, proxies, cworker_bin, tmp_path):
    """The usual deployment behind a corporate proxy: wss:// through CONNECT, chosen by
    https_proxy (http_proxy, pointing nowhere, must not be used for wss)."""
    ca = CA(str(tmp_path / 'ca'), 'proxy test CA')
    cert, key = ca.leaf('srv', dns=['localhost'], ips=['127.0.0.1'])
    port = bbmaster.free_port()
    ng = Nginx(str(tmp_path / 'nginx'), [dict(port=port, cert=cert, key=key,
                                                upstream=master.msgpack_port)]).start()
    w = None
    try:
        p = proxies([port])
        w = WssWorker(str(tmp_path / 'w'), master, f'wss://localhost:{port}/', cworker_bin,
                      ['--ca-file', ca.cert],
                      env={'https_proxy': p.url, 'http_proxy': 'http://127.0.0.1:1'})
        w.start()
        _hello(master)
        assert p.connects(port, host='localhost') == 1, p.log()
        assert re.search(r'through the HTTP proxy 127\.0\.0\.1:%d' % p.port, w.log_text()), \
            w.log_text()
    finally:
        if w is not None:
            w.stop()
            bbmaster.wait_for(lambda: not master.worker_connected('pw'), 15,
                              'the worker to leave')
        ng.stop()
