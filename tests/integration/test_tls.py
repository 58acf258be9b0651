"""wss:// for real: the stock Buildbot master has no TLS, so deployments put a TLS-terminating
reverse proxy in front of its msgpack port.  These tests do exactly that with Debian's nginx
and a throwaway CA made here with the openssl CLI, and check what an operator sees when the
certificate is wrong: each failure is named in cworker's log and cworker keeps retrying.
Plus TLS at both ends in C: cworker against `cworker-master --tls-cert/--tls-key`.
"""

import hashlib
import os
import re
import subprocess
import time

import pytest

import bbmaster
import mastercli
from cwhelpers import describe_build, sha256_file, write_random_file
from tlsutil import CA, Nginx, free_port

UP_DEST = "util.Interpolate('%(prop:dest)s')"
BUILDERS = {
    'hello': {'steps': "[steps.ShellCommand(command='echo hello world')]",
              'workernames': ['tw']},
    'up': {'steps': "[steps.FileUpload(workersrc=util.Property('src'), masterdest="
                    f"{UP_DEST})]", 'workernames': ['tw']},
}
WORKERS = (('tw', 'tls-pass'),)


class TlsWorker(bbmaster.CWorker):
    """cworker pointed at a URL of our choice (the nginx in front of the master)."""

    def __init__(self, basedir, master, url, extra_args=(), binary=None):
        super().__init__(basedir, master, 'tw', 'tls-pass', binary=binary,
                         extra_args=list(extra_args))
        self.url = url

    def argv(self):
        return [self.binary, '--master', self.url, '--name', self.worker_name,
                '--basedir', self.basedir, '--password-file', self.password_file,
                '--backoff-max', '1'] + self.extra_args


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp('pki')
    ca = CA(str(d / 'ca'), 'cworker test CA')
    other = CA(str(d / 'other'), 'some other CA')
    return {
        'ca': ca,
        'other': other,
        'good': ca.leaf('good', dns=['localhost'], ips=['127.0.0.1']),
        'wrongname': ca.leaf('wrongname', dns=['wrong.example'], ips=['192.0.2.1']),
        'expired': ca.leaf('expired', dns=['localhost'], ips=['127.0.0.1'],
                           start='20200101000000Z', end='20200102000000Z'),
        'unknown': other.leaf('unknown', dns=['localhost'], ips=['127.0.0.1']),
        'client': ca.leaf('client', client=True),
        'rogue_client': other.leaf('rogue', client=True),
    }


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(BUILDERS, workers=WORKERS)


@pytest.fixture(scope='module')
def nginx(tmp_path_factory, pki, master):
    ports = {k: free_port() for k in ('good', 'wrongname', 'expired', 'unknown', 'mtls')}
    servers = []
    for k in ('good', 'wrongname', 'expired', 'unknown'):
        cert, key = pki[k]
        servers.append(dict(port=ports[k], cert=cert, key=key, upstream=master.msgpack_port))
    cert, key = pki['good']
    servers.append(dict(port=ports['mtls'], cert=cert, key=key, upstream=master.msgpack_port,
                        client_ca=pki['ca'].cert))
    ng = Nginx(str(tmp_path_factory.mktemp('nginx')), servers).start()
    ng.ports = ports
    yield ng
    ng.stop()


@pytest.fixture
def tls_worker(tmp_path, master, cworker_bin, request):
    made = []

    def factory(url, *args, start=True, wait=True):
        w = TlsWorker(str(tmp_path / f'tw{len(made)}'), master, url, extra_args=args,
                      binary=cworker_bin)
        made.append(w)
        if start:
            w.start(wait=wait)
        return w

    yield factory
    failed = any(getattr(request.node, 'rep_' + p, None) is not None and
                 getattr(request.node, 'rep_' + p).failed for p in ('setup', 'call'))
    for w in made:
        if failed:
            print(f'\n===== cworker log =====\n{w.log_text()[-4000:]}')
        w.stop()
    for w in made:
        bbmaster.wait_for(lambda: not master.worker_connected('tw'), 15,
                          'the master to notice the worker left')


def test_hello_world_over_wss_through_nginx(nginx, pki, tls_worker, master):
    w = tls_worker(f'wss://localhost:{nginx.ports["good"]}/', '--ca-file', pki['ca'].cert)
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'hello world\n'
    assert re.search(r'attached to master', w.log_text()), w.log_text()


def test_ip_address_url_verified_against_ip_san(nginx, pki, tls_worker, master):
    tls_worker(f'wss://127.0.0.1:{nginx.ports["good"]}/', '--ca-file', pki['ca'].cert)
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)


def test_50mib_upload_over_wss(nginx, pki, tls_worker, master, tmp_path):
    src = tmp_path / 'big.bin'
    write_random_file(str(src), 50 << 20)
    (tmp_path / 'dest').mkdir()
    times = {}
    # the same upload straight to the master's port over ws:// first, for comparison
    for scheme, url, args in (
            ('ws', f'ws://127.0.0.1:{master.msgpack_port}/', ()),
            ('wss', f'wss://localhost:{nginx.ports["good"]}/', ('--ca-file', pki['ca'].cert))):
        dest = tmp_path / 'dest' / f'{scheme}.bin'
        w = tls_worker(url, *args)
        t0 = time.monotonic()
        b = master.run_build('up', props={'src': str(src), 'dest': str(dest)}, timeout=180)
        times[scheme] = time.monotonic() - t0
        assert b.result == 'SUCCESS', describe_build(b)
        assert sha256_file(str(dest)) == sha256_file(str(src)), scheme
        w.stop()
        bbmaster.wait_for(lambda: not master.worker_connected('tw'), 15,
                          'the master to notice the worker left')
    print(f'\n[50 MiB FileUpload build] ws direct: {times["ws"]:.2f} s, '
          f'wss through nginx: {times["wss"]:.2f} s')


def _fails_and_retries(w, pattern, attempts=2, timeout=20):
    """The worker stays up, names the failure in its log at least `attempts` times."""
    def enough():
        assert w.running(), f'cworker exited: {w.log_text()[-2000:]}'
        return len(re.findall(pattern, w.log_text())) >= attempts
    bbmaster.wait_for(enough, timeout, f'{attempts} failures matching {pattern!r}')
    assert w.running()
    assert 'attached to master' not in w.log_text()
    line = next(ln for ln in w.log_text().splitlines() if re.search(pattern, ln))
    print(f'\n  cworker: {line}')
    return line


@pytest.mark.parametrize('case,pattern', [
    ('unknown', r'certificate verification failed: .*\(unknown CA: use --ca-file\)'),
    ('wrongname', r'certificate verification failed: .*\(wrong host name\)'),
    ('expired', r'certificate verification failed: certificate has expired \(expired\)'),
])
def test_bad_certificate_is_named_and_retried(nginx, pki, tls_worker, case, pattern):
    w = tls_worker(f'wss://localhost:{nginx.ports[case]}/', '--ca-file', pki['ca'].cert,
                   wait=False)
    _fails_and_retries(w, pattern)


def test_plain_ws_against_the_tls_port(nginx, pki, tls_worker):
    w = tls_worker(f'ws://127.0.0.1:{nginx.ports["good"]}/', wait=False)
    # nginx answers plain HTTP on a TLS port with "400 The plain HTTP request was sent to
    # HTTPS port": the upgrade is refused, and cworker says so
    _fails_and_retries(w, r'cannot connect to master .*HTTP 400 .*use wss://')


def test_wss_against_the_plain_master_port(master, tls_worker, pki):
    w = tls_worker(f'wss://127.0.0.1:{master.msgpack_port}/', '--ca-file', pki['ca'].cert,
                   wait=False)
    # the stock master reads the ClientHello as a bad request, and drops the link after 5 s
    _fails_and_retries(w, r'cannot connect to master .*(closed|reset) by peer during the TLS '
                          r'handshake \(is the other end speaking TLS on this port\?\)',
                       timeout=30)


def test_server_offering_only_tls_1_1_is_refused(pki, tls_worker, tmp_path):
    """A server that only speaks TLS 1.1 (openssl s_server, security level lowered so it
    may): cworker refuses it, says why, and retries."""
    cert, key = pki['good']
    port = free_port()
    log = open(tmp_path / 's_server.log', 'wb')
    srv = subprocess.Popen(['openssl', 's_server', '-accept', f'127.0.0.1:{port}', '-cert', cert,
                            '-key', key, '-tls1_1', '-cipher', 'DEFAULT:@SECLEVEL=0', '-quiet'],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        bbmaster.wait_for(lambda: _listening(port), 10, 'openssl s_server to listen')
        w = tls_worker(f'wss://localhost:{port}/', '--ca-file', pki['ca'].cert, wait=False)
        _fails_and_retries(w, r'TLS handshake failed \(no common TLS version: cworker requires '
                              r'TLS 1\.2 or later\)')
    finally:
        srv.terminate()
        srv.wait(10)
        log.close()


def _listening(port):
    import socket
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


def test_client_certificate_required(nginx, pki, tls_worker, master):
    url = f'wss://localhost:{nginx.ports["mtls"]}/'
    bad = tls_worker(url, '--ca-file', pki['ca'].cert, wait=False)
    _fails_and_retries(bad, r'cannot connect to master .*HTTP 400 .*client certificate')
    bad.stop()
    rogue_cert, rogue_key = pki['rogue_client']
    rogue = tls_worker(url, '--ca-file', pki['ca'].cert, '--client-cert', rogue_cert,
                       '--client-key', rogue_key, wait=False)
    _fails_and_retries(rogue, r'cannot connect to master .*HTTP 400 .*client certificate')
    rogue.stop()
    cert, key = pki['client']
    tls_worker(url, '--ca-file', pki['ca'].cert, '--client-cert', cert, '--client-key', key)
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)


def test_tls_at_both_ends_with_cworker_master(pki, cworker_bin, tmp_path):
    cert, key = pki['good']
    port = free_port()
    pw = tmp_path / 'pw'
    pw.write_text('both-ends\n')
    log = open(tmp_path / 'cworker.log', 'wb')
    w = subprocess.Popen([cworker_bin, '--master', f'wss://localhost:{port}/', '--name', 'cm',
                          '--basedir', str(tmp_path / 'wb'), '--password-file', str(pw),
                          '--ca-file', pki['ca'].cert, '--backoff-max', '1'],
                         stdout=log, stderr=subprocess.STDOUT, env=bbmaster._clean_env())
    try:
        r = subprocess.run([mastercli.MASTER_BIN, 'run', '--listen', f'127.0.0.1:{port}',
                            '--worker', 'cm', '--password-file', str(pw), '--wait', '30',
                            '--tls-cert', cert, '--tls-key', key, '--', 'echo', 'hello', 'tls'],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == b'hello tls\n'
    finally:
        w.terminate()
        w.wait(15)
        log.close()
