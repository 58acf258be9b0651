"""The Perspective Broker library (src/proto/pb.c) against the stock Buildbot 3.7 master.

pbprobe (tests/pb/pbprobe.c, built as build/tests/unit/pbprobe) is a test-only worker made of
the sans-I/O session and blocking sockets: it logs in over PB, answers the attach calls, runs
shell steps with /bin/sh and reports them with update/complete.  These tests start the real
master with a PB listener on 127.0.0.1 and check what a user of the master would see: the
worker connected, build results, the stored logs, and the login failures.
"""

import os
import signal
import subprocess
import time

import pytest

import bbmaster

pytestmark = [pytest.mark.only_protocol('pb')]  # pbprobe speaks PB

BUILDERS = {
    'hello': "[steps.ShellCommand(command='echo hello world')]",
    'argv': "[steps.ShellCommand(command=['printf', '%s|%s\\\\n', 'two words', \"it's\"])]",
    'stderr_exit': "[steps.ShellCommand(command='echo to-stdout; echo to-stderr >&2; exit 3')]",
    'steps3': "[steps.ShellCommand(command='echo one', name='s1'), "
              "steps.ShellCommand(command='echo two', name='s2'), "
              "steps.ShellCommand(command='echo three', name='s3')]",
}


def _pbprobe_bin():
    path = os.environ.get('PBPROBE_BIN',
                          os.path.join(bbmaster.REPO_ROOT, 'build', 'tests', 'unit', 'pbprobe'))
    if not os.access(path, os.X_OK):
        pytest.fail(f'pbprobe not found at {path}: build it (ninja -C build) or set PBPROBE_BIN',
                    pytrace=False)
    return path


class Probe:
    """One pbprobe process, started by us and signalled only through its own PID."""

    def __init__(self, basedir, port, name, password, record=None):
        os.makedirs(basedir, exist_ok=True)
        self.basedir = basedir
        self.logfile = os.path.join(basedir, 'pbprobe.log')
        argv = [_pbprobe_bin(), '--port', str(port), '--name', name, '--password', password,
                '--basedir', basedir]
        if record:
            argv += ['--record', record]
        self.log = open(self.logfile, 'wb')
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def text(self):
        with open(self.logfile, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope='module')
def pb_master(master_factory):
    port = bbmaster.free_port()
    return master_factory(BUILDERS, workers=(('w1', 'pass1'), ('w2', 'pass2')), pb_port=port,
                          quarantine_timeout=1)


@pytest.fixture
def probes(tmp_path):
    started = []

    def start(master, name, password, **kw):
        p = Probe(str(tmp_path / f'{name}-{len(started)}'), master.pb_port, name, password, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
    for p in started:
        print(f'\n===== pbprobe {p.basedir} =====\n{p.text()[-4000:]}')


def test_pb_listener_loopback_only(pb_master):
    addrs = pb_master.listen_addresses()
    assert addrs['pb'] == [f'127.0.0.1:{pb_master.pb_port}']


def test_attach_and_builds(pb_master, probes):
    p = probes(pb_master, 'w1', 'pass1')
    pb_master.wait_worker_connected('w1', timeout=30)
    bbmaster.wait_for(lambda: 'logged in, perspective' in p.text(), 30, 'the perspective')
    text = p.text()
    # the attach sequence ran before the login completed (reference §6.1)
    assert text.index('master says: attached') < text.index('logged in, perspective')
    assert 'call 2: getWorkerInfo on luid 1' in text
    info = pb_master.worker('w1')['workerinfo']
    assert info['admin'] == 'pbprobe <test@localhost>'
    assert info['host'] == 'pbprobe test worker'
    assert info['version'] == '3.7.0'

    b = pb_master.run_build('hello', timeout=60)
    assert b.result == 'SUCCESS', b.describe()
    log = b.log('shell')
    assert log.stdout == 'hello world\n'
    assert 'program finished with exit code 0' in log.header

    b = pb_master.run_build('argv', timeout=60)
    assert b.result == 'SUCCESS', b.describe()
    assert b.log('shell').stdout == "two words|it's\n"

    b = pb_master.run_build('stderr_exit', timeout=60)
    assert b.result == 'FAILURE', b.describe()
    log = b.log('shell')
    assert log.stdout == 'to-stdout\n'
    assert log.stderr == 'to-stderr\n'
    assert 'program finished with exit code 3' in log.header

    # several commands on one builder, each with its own RemoteCommand reference, all given back
    b = pb_master.run_build('steps3', timeout=60)
    assert b.result == 'SUCCESS', b.describe()
    assert [s.log('stdio').stdout for s in b.steps if s.name in ('s1', 's2', 's3')] == \
        ['one\n', 'two\n', 'three\n']
    assert p.text().count('giving back command reference') == 6
    assert 'protocol error' not in p.text()
    assert p.proc.poll() is None


def test_reconnect_and_wrong_password(pb_master, probes, tmp_path):
    # a second worker name works too, and a wrong password is reported as UnauthorizedLogin
    good = probes(pb_master, 'w2', 'pass2')
    pb_master.wait_worker_connected('w2', timeout=30)
    b = pb_master.run_build('hello', timeout=60)
    assert b.result == 'SUCCESS', b.describe()

    rec = str(tmp_path / 'unauthorized.bin')
    bad = probes(pb_master, 'w1', 'not-the-password', record=rec)
    assert bad.wait(30) == 3, bad.text()
    with open(rec, 'rb') as f:
        data = f.read()
    assert b'twisted.cred.error.UnauthorizedLogin' in data
    if os.environ.get('PB_RECORD_DIR'):
        with open(os.path.join(os.environ['PB_RECORD_DIR'], 'recorded-unauthorized'), 'wb') as f:
            f.write(data)
    assert 'login failed (unauthorized): twisted.cred.error.UnauthorizedLogin' in bad.text()
    assert not pb_master.worker_connected('w1')
    bbmaster.wait_for(lambda: "invalid login from user 'w1'" in pb_master.log_tail(20000), 10,
                      'the master to log the refused login')

    unknown = probes(pb_master, 'nosuch', 'x')
    assert unknown.wait(30) == 3, unknown.text()
    assert 'UnauthorizedLogin' in unknown.text()
    assert good.proc.poll() is None


def test_duplicate_worker(pb_master, probes):
    first = probes(pb_master, 'w1', 'pass1')
    pb_master.wait_worker_connected('w1', timeout=30)
    bbmaster.wait_for(lambda: 'logged in' in first.text(), 30, 'the first login')
    second = probes(pb_master, 'w1', 'pass1')
    # the master asks the first one (print "master got a duplicate connection"), which answers,
    # so the newcomer is refused (reference §5.4)
    assert second.wait(40) == 4, second.text()
    assert 'login failed (duplicate): builtins.RuntimeError: rejecting duplicate worker' \
        in second.text()
    assert 'master says: master got a duplicate connection' in first.text()
    assert first.proc.poll() is None
    b = pb_master.run_build('hello', timeout=60)
    assert b.result == 'SUCCESS', b.describe()


def test_record_for_corpus(pb_master, probes, tmp_path):
    """Record the master's bytes of one session (attach, a build): the stream starts with the
    dialect offer and carries the build's calls.  With PB_RECORD_DIR set it is saved there,
    to become a fuzz seed (fuzz/corpus/pb) that replays as a regression test."""
    rec = str(tmp_path / 'master-stream.bin')
    p = probes(pb_master, 'w1', 'pass1', record=rec)
    pb_master.wait_worker_connected('w1', timeout=30)
    b = pb_master.run_build('hello', timeout=60)
    assert b.result == 'SUCCESS', b.describe()
    time.sleep(0.5)
    p.stop()
    with open(rec, 'rb') as f:
        data = f.read()
    assert data.startswith(bytes.fromhex('02800282706204826e6f6e65'))  # ("pb" "none")
    assert b'startCommand' in data and b'startBuild' in data
    out_dir = os.environ.get('PB_RECORD_DIR')
    if out_dir:
        with open(os.path.join(out_dir, 'recorded-master-session'), 'wb') as f:
            f.write(data)
