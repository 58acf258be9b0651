"""wss:// for real: the stock Buildbot master has no TLS, so deployments put a TLS-terminating
reverse proxy in front of its msgpack port.  These tests do exactly that with Debian's nginx
and a throwaway CA made here with the openssl CLI, and check what an operator sees when the
certificate is wrong: each failure is named in cworker's log and cworker keeps retrying.
Plus TLS at both ends in C: cworker against `cworker-master --tls-cert/--tls-key`.
"""

import re
import subprocess
import time

import pytest

import bbmaster
import mastercli
from cwhelpers import describe_build, sha256_file, write_random_file
from tlsutil import CA, Nginx, free_port

pytestmark = [pytest.mark.only_protocol('msgpack')]  # wss:// (TLS over PB: test_pb.py)

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
    ports['noupgrade'] = free_port()
    servers.append(dict(port=ports['noupgrade'], cert=cert, key=key,
                        upstream=master.msgpack_port, upgrade=False))
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


def _fails_and_retries(w, pattern, attempts=2, timeout=20, check_never_attached=True):
    """The worker stays up, names the failure in its log at least `attempts` times."""
    def enough():
        assert w.running(), f'cworker exited: {w.log_text()[-2000:]}'
        return len(re.findall(pattern, w.log_text())) >= attempts
    bbmaster.wait_for(enough, timeout, f'{attempts} failures matching {pattern!r}')
    assert w.running()
    if check_never_attached:
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


def _offers_tls_1_1(port):
    """openssl s_client completes a TLS 1.1 handshake with the server on `port`."""
    r = subprocess.run(['openssl', 's_client', '-connect', f'127.0.0.1:{port}', '-tls1_1',
                        '-cipher', 'DEFAULT:@SECLEVEL=0'],
                       input=b'', capture_output=True, timeout=20)
    return r.returncode == 0 and re.search(rb'Protocol\s*: TLSv1\.1', r.stdout) is not None


TLS11_REFUSED = (r'TLS handshake failed \(no common TLS version: cworker requires TLS 1\.2 or '
                 r'later\)')


def test_nginx_offering_only_tls_1_1_is_refused(pki, tls_worker, master, tmp_path):
    """nginx limited to TLS 1.0/1.1 (Debian's OpenSSL 3 allows it at security level 0):
    s_client proves the server really speaks TLS 1.1; cworker refuses it and says why."""
    cert, key = pki['good']
    port = free_port()
    ng = Nginx(str(tmp_path / 'nginx11'), [dict(port=port, cert=cert, key=key,
                                                upstream=master.msgpack_port,
                                                protocols='TLSv1 TLSv1.1',
                                                ciphers='DEFAULT:@SECLEVEL=0')])
    try:
        ng.start()
    except RuntimeError as e:
        pytest.skip(f'this nginx/OpenSSL cannot be configured for TLS 1.1 only: {e}')
    try:
        if not _offers_tls_1_1(port):
            pytest.skip('nginx started with ssl_protocols TLSv1 TLSv1.1 but OpenSSL will not '
                        'complete a TLS 1.1 handshake with it (disabled in this OpenSSL build)')
        w = tls_worker(f'wss://localhost:{port}/', '--ca-file', pki['ca'].cert, wait=False)
        _fails_and_retries(w, TLS11_REFUSED)
    finally:
        ng.stop()


def test_server_offering_only_tls_1_1_is_refused(pki, tls_worker, tmp_path):
    """The same with openssl s_server -tls1_1 (no nginx involved)."""
    cert, key = pki['good']
    port = free_port()
    log = open(tmp_path / 's_server.log', 'wb')
    srv = subprocess.Popen(['openssl', 's_server', '-accept', f'127.0.0.1:{port}', '-cert', cert,
                            '-key', key, '-tls1_1', '-cipher', 'DEFAULT:@SECLEVEL=0', '-quiet'],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        bbmaster.wait_for(lambda: _listening(port), 10, 'openssl s_server to listen')
        w = tls_worker(f'wss://localhost:{port}/', '--ca-file', pki['ca'].cert, wait=False)
        _fails_and_retries(w, TLS11_REFUSED)
    finally:
        srv.terminate()
        srv.wait(10)
        log.close()


def tls_backend(binary):
    """The TLS library a cworker binary was built with (`cworker --version`: openssl, mbedtls
    or none; older builds do not say, and used OpenSSL)."""
    out = subprocess.run([binary, '--version'], capture_output=True, text=True).stdout
    m = re.search(r'\btls (\w+)', out)
    return m.group(1) if m else 'openssl'


def _listening(port):
    import socket
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


def test_client_certificate_required(nginx, pki, tls_worker, master):
    url = f'wss://localhost:{nginx.ports["mtls"]}/'
    # nginx completes the handshake either way and answers the request with 400
    bad = tls_worker(url, '--ca-file', pki['ca'].cert, wait=False)
    _fails_and_retries(bad, r'cannot connect to master .*HTTP 400 Bad Request \(the server asked '
                            r'for a client certificate and none is configured.*use '
                            r'--client-cert and --client-key\)')
    bad.stop()
    rogue_cert, rogue_key = pki['rogue_client']
    rogue = tls_worker(url, '--ca-file', pki['ca'].cert, '--client-cert', rogue_cert,
                       '--client-key', rogue_key, wait=False)
    _fails_and_retries(rogue, r'cannot connect to master .*HTTP 400 Bad Request \(the server '
                              r'asked for a client certificate and, like nginx, answers 400 when '
                              r'it does not accept the one sent: check --client-cert')
    rogue.stop()
    cert, key = pki['client']
    tls_worker(url, '--ca-file', pki['ca'].cert, '--client-cert', cert, '--client-key', key)
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)


@pytest.mark.parametrize('version', ['-tls1_2', '-tls1_3'])
def test_client_certificate_refused_in_the_tls_handshake(pki, tls_worker, tmp_path, version,
                                                         cworker_bin):
    """A TLS server that enforces client certificates in the handshake itself (unlike nginx,
    which answers HTTP 400): openssl s_server -Verify 1 -verify_return_error.  In TLS 1.2
    the refusal ends the handshake; in TLS 1.3 it arrives after ours has finished.  A build
    with mbedTLS 2.28 (no TLS 1.3) names the missing common version against -tls1_3."""
    no_tls13 = version == '-tls1_3' and tls_backend(cworker_bin) == 'mbedtls'
    cert, key = pki['good']
    port = free_port()
    log = open(tmp_path / 's_server.log', 'wb')
    srv = subprocess.Popen(['openssl', 's_server', '-accept', f'127.0.0.1:{port}', '-cert', cert,
                            '-key', key, version, '-Verify', '1', '-verify_return_error',
                            '-CAfile', pki['ca'].cert, '-quiet'],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        bbmaster.wait_for(lambda: _listening(port), 10, 'openssl s_server to listen')
        url = f'wss://localhost:{port}/'
        if no_tls13:
            w = tls_worker(url, '--ca-file', pki['ca'].cert, wait=False)
            _fails_and_retries(w, TLS11_REFUSED + r'.*has no TLS 1\.3')
            return
        none = tls_worker(url, '--ca-file', pki['ca'].cert, wait=False)
        _fails_and_retries(none, r'cannot connect to master .*\(the server (requires|asked for) a '
                                 r'client certificate.*use --client-cert and --client-key\)')
        none.stop()
        rogue_cert, rogue_key = pki['rogue_client']
        rogue = tls_worker(url, '--ca-file', pki['ca'].cert, '--client-cert', rogue_cert,
                           '--client-key', rogue_key, wait=False)
        _fails_and_retries(rogue, r'cannot connect to master .*\(the server refused our client '
                                  r'certificate: check --client-cert .*\).*unknown ca')
    finally:
        srv.terminate()
        srv.wait(10)
        log.close()


def test_reverse_proxy_without_upgrade_headers_is_named(nginx, pki, tls_worker):
    """nginx without proxy_set_header Upgrade/Connection: the master gets a plain GET and
    answers with a web page."""
    w = tls_worker(f'wss://localhost:{nginx.ports["noupgrade"]}/', '--ca-file', pki['ca'].cert,
                   wait=False)
    _fails_and_retries(w, r'cannot connect to master .*HTTP 200 .*\(not a WebSocket answer: a '
                          r'reverse proxy in front of the master must pass on the Upgrade and '
                          r'Connection headers\)')


def test_master_down_behind_nginx_is_named_then_reattached(nginx, pki, tls_worker, master):
    w = tls_worker(f'wss://localhost:{nginx.ports["good"]}/', '--ca-file', pki['ca'].cert)
    master.stop()
    try:
        _fails_and_retries(w, r'cannot connect to master .*HTTP 502 Bad Gateway \(from a reverse '
                              r'proxy in front of the master: the master behind it is down or '
                              r'unreachable\)', check_never_attached=False)
    finally:
        master.start()
    w.wait_connected(30)
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)


def test_pings_keep_an_idle_link_through_a_short_nginx_timeout(pki, tls_worker, master,
                                                             tmp_path):
    """nginx closes a proxied WebSocket after proxy_read_timeout without traffic (60 s by
    default, 2 s here); cworker's pings (--ping-interval 1 here, 10 s by default) and the
    master's pongs keep an idle link open, through TLS both ways."""
    cert, key = pki['good']
    port = free_port()
    ng = Nginx(str(tmp_path / 'nginx-short'), [dict(port=port, cert=cert, key=key,
                                                     upstream=master.msgpack_port,
                                                     read_timeout='2s')]).start()
    try:
        w = tls_worker(f'wss://localhost:{port}/', '--ca-file', pki['ca'].cert,
                       '--ping-interval', '1', '--dead-timeout', '5')
        time.sleep(6)
        assert w.log_text().count('attached to master') == 1, w.log_text()[-3000:]
        assert 'connection to master lost' not in w.log_text(), w.log_text()[-3000:]
        b = master.run_build('hello')
        assert b.result == 'SUCCESS', describe_build(b)
        assert w.log_text().count('attached to master') == 1, w.log_text()[-3000:]
    finally:
        ng.stop()


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
        # 20 MiB each way: the worker's TLS read path carries the whole file on put
        src = tmp_path / 'src.bin'
        write_random_file(str(src), 20 << 20)
        common = ['--listen', f'127.0.0.1:{port}', '--worker', 'cm', '--password-file', str(pw),
                  '--wait', '30', '--tls-cert', cert, '--tls-key', key]
        t0 = time.monotonic()
        r = subprocess.run([mastercli.MASTER_BIN, 'put', *common, str(src), 'copy.bin'],
                           capture_output=True, timeout=60)
        t_put = time.monotonic() - t0
        assert r.returncode == 0, r.stderr.decode()
        assert sha256_file(str(tmp_path / 'wb' / 'copy.bin')) == sha256_file(str(src))
        t0 = time.monotonic()
        r = subprocess.run([mastercli.MASTER_BIN, 'get', *common, 'copy.bin',
                            str(tmp_path / 'back.bin')], capture_output=True, timeout=60)
        t_get = time.monotonic() - t0
        assert r.returncode == 0, r.stderr.decode()
        assert sha256_file(str(tmp_path / 'back.bin')) == sha256_file(str(src))
        print(f'\n[cworker-master over TLS, 20 MiB, including the attach] put {t_put:.2f} s, '
              f'get {t_get:.2f} s')
    finally:
        w.terminate()
        w.wait(15)
        log.close()
