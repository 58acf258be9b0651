"""A static cworker resolves the master's host name on a system with no glibc NSS modules.

Each binary runs chrooted into a directory that holds only the binary, /etc/hosts,
/etc/resolv.conf, its password file and an empty basedir (no libc, no libnss_*.so, no
nsswitch.conf, no /bin/sh), and must attach to the real Buildbot master on 127.0.0.1:
* by a name found in /etc/hosts;
* by a name only a DNS server knows (a stub on 127.0.0.1:53, named in resolv.conf);
* and must report an unknown name as a resolution failure, not crash or hang;
* and must stop promptly (exit 0) on SIGTERM while a DNS server does not answer.

Binaries: CW_STATIC_BINS="label=path[,label=path...]" (scripts/check's static stage sets it:
the full glibc binary and the c-ares one of scripts/build-static).
Needs root (chroot, UDP port 53).
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))

import bbmaster  # noqa: E402
from dnsstub import DnsStub  # noqa: E402


def _static_bins():
    spec = os.environ.get('CW_STATIC_BINS', '')
    out = []
    for item in filter(None, (s.strip() for s in spec.split(','))):
        label, _, path = item.partition('=')
        out.append(pytest.param(path, id=label))
    if not out:
        out.append(pytest.param(None, id='none', marks=pytest.mark.skip(
            reason='CW_STATIC_BINS is not set (scripts/check sets it; a skip counts as failed)')))
    return out


@pytest.fixture(scope='module')
def master(tmp_path_factory):
    m = bbmaster.Master(str(tmp_path_factory.mktemp('master-static')),
                        {'hello': "[steps.ShellCommand(command='echo hello')]"},
                        workers=(('w1', 'pass1'),))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def dns():
    try:
        stub = DnsStub({'dns-only.cw-test': '127.0.0.1', 'silent.cw-test': None})
    except OSError as e:
        pytest.skip(f'cannot bind the DNS stub to 127.0.0.1:53: {e}')
    yield stub
    stub.close()


def _root(tmp_path, binary, hosts):
    if os.geteuid() != 0:
        pytest.skip('chroot needs root')
    out = subprocess.run(['file', '-b', binary], capture_output=True, text=True).stdout
    assert 'statically linked' in out or 'static-pie linked' in out, f'{binary}: {out}'
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    (root / 'basedir').mkdir()
    shutil.copy(binary, root / 'cworker')
    (root / 'etc' / 'hosts').write_text(hosts)
    (root / 'etc' / 'resolv.conf').write_text('nameserver 127.0.0.1\noptions timeout:1 attempts:2\n')
    (root / 'password').write_text('pass1\n')
    os.chmod(root / 'password', 0o600)
    # nothing else: no libc, no NSS modules, no nsswitch.conf
    found = sorted(str(p.relative_to(root)) for p in root.rglob('*'))
    assert found == ['basedir', 'cworker', 'etc', 'etc/hosts', 'etc/resolv.conf', 'password']
    return root


def _run(root, host, port, log):
    return subprocess.Popen(
        [shutil.which('chroot') or '/usr/sbin/chroot', str(root), '/cworker', '--master', f'{host}:{port}', '--name', 'w1',
         '--basedir', '/basedir', '--password-file', '/password', '--backoff-max', '1',
         '--protocol', 'msgpack'],
        stdout=log, stderr=subprocess.STDOUT, env={'PATH': '/'})


def _attach(master, root, host, tmp_path):
    logf = tmp_path / 'cworker.log'
    with open(logf, 'wb') as log:
        p = _run(root, host, master.msgpack_port, log)
    try:
        master.wait_worker_connected('w1', timeout=20)
    except bbmaster.HarnessError:
        p.kill()
        p.wait()
        raise AssertionError('did not attach; cworker log:\n' + logf.read_text()[-3000:])
    p.terminate()
    assert p.wait(timeout=20) == 0, logf.read_text()[-3000:]
    master.wait_worker_disconnected('w1', timeout=20)
    return logf.read_text()


@pytest.mark.parametrize('binary', _static_bins())
def test_name_from_etc_hosts(master, binary, tmp_path):
    root = _root(tmp_path, binary,
                 '127.0.0.1 localhost\n127.0.0.1 master.cw-test master\n')
    _attach(master, root, 'master.cw-test', tmp_path)


@pytest.mark.parametrize('binary', _static_bins())
def test_name_from_dns(master, binary, tmp_path, dns):
    root = _root(tmp_path, binary, '127.0.0.1 localhost\n')
    _attach(master, root, 'dns-only.cw-test', tmp_path)
    assert ('dns-only.cw-test', 1) in dns.questions, dns.questions


@pytest.mark.parametrize('binary', _static_bins())
def test_unknown_name_is_a_resolution_failure(master, binary, tmp_path, dns):
    root = _root(tmp_path, binary, '127.0.0.1 localhost\n')
    logf = tmp_path / 'cworker.log'
    with open(logf, 'wb') as log:
        p = _run(root, 'no-such-host.cw-test', master.msgpack_port, log)
    try:
        bbmaster.wait_for(lambda: 'cannot resolve host' in logf.read_text(), 20,
                          'a resolution failure in the log')
        assert p.poll() is None, 'cworker exited: ' + logf.read_text()[-2000:]
    finally:
        p.terminate()
        rc = p.wait(timeout=20)
    assert rc == 0, logf.read_text()[-2000:]
    assert any(q[0] == 'no-such-host.cw-test' for q in dns.questions), dns.questions


@pytest.mark.parametrize('binary', _static_bins())
def test_sigterm_while_dns_does_not_answer(master, binary, tmp_path, dns):
    root = _root(tmp_path, binary, '127.0.0.1 localhost\n')
    logf = tmp_path / 'cworker.log'
    with open(logf, 'wb') as log:
        p = _run(root, 'silent.cw-test', master.msgpack_port, log)
    try:
        bbmaster.wait_for(lambda: any(q[0] == 'silent.cw-test' for q in dns.questions), 20,
                          'a DNS query for silent.cw-test')
        time.sleep(0.3)
        assert p.poll() is None, 'cworker exited: ' + logf.read_text()[-2000:]
        t0 = time.monotonic()
        p.terminate()
        rc = p.wait(timeout=20)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 0, logf.read_text()[-2000:]
    assert took < 3, f'exit took {took:.1f} s while resolving'
