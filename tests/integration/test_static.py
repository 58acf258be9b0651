"""The static binaries of scripts/build-static against the stock master (marker `static`: the
normal run leaves them out; scripts/check builds them and runs `-m static`).

* full (TLS, directory uploads): a shell step and a DirectoryUpload, bytes checked;
* minimal (neither): shell works, and the master refuses a DirectoryUpload as "too old"
  instead of failing oddly, because the command is not announced;
* host names resolve with no NSS modules at all: the full binary alone in a chroot with
  only /etc/hosts and /etc/resolv.conf attaches to a master named in that /etc/hosts.
"""

import os
import stat
import subprocess

import pytest

import bbmaster
import mastercli
from cwhelpers import describe_build, sha256_file, write_random_file

pytestmark = [pytest.mark.static, pytest.mark.only_protocol('msgpack')]  # the peer is cworker-master, which speaks msgpack

ROOT = bbmaster.REPO_ROOT
FULL = os.environ.get('CWORKER_STATIC_FULL') or os.path.join(
    ROOT, 'build-static-full', 'src', 'worker', 'cworker.stripped')
MINIMAL = os.environ.get('CWORKER_STATIC_MINIMAL') or os.path.join(
    ROOT, 'build-static-min', 'src', 'worker', 'cworker.stripped')

BUILDERS = {
    'hello': {'steps': "[steps.ShellCommand(command=['sh', '-c', 'echo hello $((6 * 7))'])]",
              'workernames': ['sw']},
    'updir': {'steps': "[steps.DirectoryUpload(workersrc=util.Property('src'), "
                       "masterdest=util.Property('dest'))]", 'workernames': ['sw']},
}


def _binary(path):
    if not os.access(path, os.X_OK):
        pytest.fail(f'{path} is missing: run scripts/build-static first', pytrace=False)
    return path


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(BUILDERS, workers=(('sw', 'static-pass'),))


@pytest.mark.parametrize('path', [FULL, MINIMAL], ids=['full', 'minimal'])
def test_statically_linked(path):
    _binary(path)
    out = subprocess.run(['readelf', '-d', '-l', path], capture_output=True, text=True).stdout
    assert 'There is no dynamic section' in out, out[:2000]
    assert 'INTERP' not in out
    print(f'\n{os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))}: '
          f'{os.path.getsize(path)} bytes stripped ({os.path.getsize(path) / 1048576:.2f} MiB)')


def test_full_runs_shell_and_directory_upload(master, worker_factory, tmp_path):
    worker_factory(master, name='sw', binary=_binary(FULL))
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'hello 42\n'
    src = tmp_path / 'tree'
    (src / 'sub' / 'empty').mkdir(parents=True)
    sums = {rel: write_random_file(str(src / rel), size, seed=i)
            for i, (rel, size) in enumerate([('a.bin', 1 << 20), ('sub/b.bin', 12345)])}
    dest = tmp_path / 'dest'
    b = master.run_build('updir', props={'src': str(src), 'dest': str(dest)}, timeout=120)
    assert b.result == 'SUCCESS', describe_build(b)
    for rel, digest in sums.items():
        assert sha256_file(str(dest / rel)) == digest, rel
    assert (dest / 'sub' / 'empty').is_dir()


def test_minimal_is_told_too_old_for_directory_upload(master, worker_factory, tmp_path):
    worker_factory(master, name='sw', binary=_binary(MINIMAL))
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    (tmp_path / 'tree').mkdir()
    b = master.run_build('updir', props={'src': str(tmp_path / 'tree'),
                                         'dest': str(tmp_path / 'dest')})
    text = describe_build(b)
    print('\n' + text)
    assert b.result in ('EXCEPTION', 'FAILURE'), text
    assert 'too old' in text or 'upload_directory' in text or 'uploadDirectory' in text, text


def test_resolves_host_names_without_nss(tmp_path):
    """A chroot holding the binary, /etc/hosts and /etc/resolv.conf (and /dev/null, which
    commands get as stdin) and nothing else: no libc.so, no libnss_*.so, no nsswitch.conf."""
    if os.geteuid() != 0:
        pytest.fail('chroot needs root (scripts/check runs as root)', pytrace=False)
    root = tmp_path / 'root'
    for d in ('bin', 'etc', 'w', 'dev'):
        (root / d).mkdir(parents=True)
    os.mknod(root / 'dev' / 'null', stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with open(_binary(FULL), 'rb') as f, open(root / 'bin' / 'cworker', 'wb') as g:
        g.write(f.read())
    os.chmod(root / 'bin' / 'cworker', 0o755)
    (root / 'etc' / 'hosts').write_text('127.0.0.1 buildmaster.chroot.test\n')
    (root / 'etc' / 'resolv.conf').write_text('nameserver 127.0.0.1\n')
    (root / 'pw').write_text('chroot-pass\n')
    (tmp_path / 'pw').write_text('chroot-pass\n')
    port = bbmaster.free_port()
    log = open(tmp_path / 'cworker.log', 'wb')
    w = subprocess.Popen(['chroot', str(root), '/bin/cworker', '--master',
                          f'buildmaster.chroot.test:{port}', '--protocol', 'msgpack', '--name', 'cw', '--basedir', '/w',
                          '--password-file', '/pw', '--backoff-max', '1'],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        # the command runs inside the chroot too: the only program there is cworker itself
        r = subprocess.run([mastercli.MASTER_BIN, 'run', '--listen', f'127.0.0.1:{port}',
                            '--worker', 'cw', '--password-file', str(tmp_path / 'pw'),
                            '--wait', '30', '--', '/bin/cworker', '--version'],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stderr.decode(), open(tmp_path / 'cworker.log').read())
        assert r.stdout.startswith(b'cworker '), r.stdout
    finally:
        w.terminate()
        w.wait(15)
        log.close()
    assert 'connected to master 127.0.0.1' in open(tmp_path / 'cworker.log').read()
