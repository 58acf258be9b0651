"""Perspective Broker specifics of cworker against the stock 3.7 master's `pb` port (reference
perspective-broker.md, "PB" below): what has no msgpack counterpart or behaves differently there.
The generic behaviour (every command, output, transfers, lifecycle) is covered by the rest of the
suite, which scripts/check runs once per protocol.

The stock buildbot-worker over PB is the reference where behaviours are compared
(`both_workers`); where the stock worker is known to fail (PB §10.1: block sizes above banana's
640 KiB) the test asserts that failure too, so it can tell the two apart.
"""

import os
import re
import signal
import subprocess
import time

import pytest

import bbmaster
from cwhelpers import (WORKER_CREDS, WorkerPool, describe_build, dump_worker_logs,  # noqa: F401
                       per_kind, sha256_file, write_random_file)

pytestmark = pytest.mark.only_protocol('pb')

BOTH = ('cworker', 'stock')
SRC = "util.Property('src')"
DEST = "util.Property('dest')"
MIB = 1 << 20

# A step that runs N remote commands on the worker in one build: every command hands the
# worker a RemoteCommand reference; without the worker's decrefs the master refuses the
# 1023rd (PB §4.4, §10.5).
HEAD_CFG = '''
from buildbot.process import buildstep as _buildstep, remotecommand as _remotecommand
from twisted.internet import defer as _defer


class ManyCommands(_buildstep.BuildStep):
    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n = n

    @_defer.inlineCallbacks
    def run(self):
        log = yield self.addLog('stdio')
        for i in range(self.n):
            cmd = _remotecommand.RemoteCommand('stat', {'file': 'nothing-here-%d' % i})
            yield self.runCommand(cmd)
            if cmd.rc != 2:  # ENOENT, as the stock worker reports it
                yield log.addStderr('command %d: rc %r\\n' % (i, cmd.rc))
                return util.FAILURE
        yield log.addStdout('%d commands\\n' % self.n)
        return util.SUCCESS
'''

BUILDERS_BOTH = {
    'hello': "[steps.ShellCommand(command='echo hello world')]",
    'download': f"[steps.FileDownload(mastersrc={SRC}, workerdest={DEST})]",
    'strdownload': "[steps.StringDownload('string download \\u00e9\\n', workerdest='s.txt', "
                   "mode=0o640)]",
    'vocab': "[steps.StringDownload(s, workerdest=s + '.txt') for s in ('None', 'copy', 'list')]",
    'keepstamp': f"[steps.FileUpload(workersrc={SRC}, masterdest={DEST}, keepstamp=True)]",
    'bigup': f"[steps.FileUpload(workersrc={SRC}, masterdest={DEST}, blocksize={MIB})]",
}
BUILDERS_CW = {
    'many': "[ManyCommands(1100, name='many')]",
    'bigdown': f"[steps.FileDownload(mastersrc={SRC}, workerdest={DEST}, blocksize={MIB})]",
    'sleep': "[steps.ShellCommand(command=['sleep', util.Property('seconds', default=30)])]",
}


@pytest.fixture(scope='module')
def master(master_factory):
    builders = per_kind(BUILDERS_BOTH, BOTH)
    builders.update(per_kind(BUILDERS_CW))
    return master_factory(builders, workers=WORKER_CREDS + (('solo', 'solopass'),),
                          head_cfg=HEAD_CFG, quarantine_timeout=1,
                          pb_port=bbmaster.free_port())


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin, protocol='pb',
                   cworker_args=('--verbose',))
    yield p
    p.stop()


def _connects(w):
    return len(re.findall(r'connected to master \S+ \(Perspective Broker', w.log_text()))


# ---- builds ------------------------------------------------------------------------------------

@pytest.mark.both_workers
def test_hello_and_worker_info(pool, worker_kind):
    b = pool.run(worker_kind, 'hello')
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'hello world\n'
    # the master keeps admin/host/access_uri/version in workerinfo (the rest become properties)
    info = pool.master.worker(pool.worker(worker_kind).worker_name)['workerinfo']
    assert info['version'].startswith('cworker ' if worker_kind == 'cworker' else '3.7'), info
    props = pool.master.get(f"builds/{b.id}", property='*')['builds'][0]['properties']
    assert props['builddir'][0] == os.path.join(pool.worker(worker_kind).basedir,
                                                pool.builder(worker_kind, 'hello'))


def test_1100_commands_in_one_connection(pool):
    w = pool.worker('cworker')
    before = _connects(w)
    b = pool.run('cworker', 'many', timeout=300)
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('many').stdout == '1100 commands\n'
    assert _connects(w) == before, 'the link was re-established during the build'


@pytest.mark.both_workers
def test_file_and_string_downloads(pool, worker_kind, tmp_path):
    # the 3.7 master sends the data over PB (its msgpack bug does not apply here)
    src = tmp_path / 'src.bin'
    write_random_file(str(src), MIB + 123, seed=7)
    dest = os.path.join(pool.workdir(worker_kind, 'download'), 'got.bin')
    b = pool.run(worker_kind, 'download', props={'src': str(src), 'dest': 'got.bin'})
    assert b.result == 'SUCCESS', describe_build(b)
    assert sha256_file(dest) == sha256_file(str(src))

    b = pool.run(worker_kind, 'strdownload')
    assert b.result == 'SUCCESS', describe_build(b)
    path = os.path.join(pool.workdir(worker_kind, 'strdownload'), 's.txt')
    with open(path, 'rb') as f:
        assert f.read() == 'string download \u00e9\n'.encode()
    assert os.stat(path).st_mode & 0o777 == 0o640

    # contents equal to banana vocabulary words arrive compressed (PB §2.3, §10.15)
    b = pool.run(worker_kind, 'vocab')
    assert b.result == 'SUCCESS', describe_build(b)
    for word in ('None', 'copy', 'list'):
        with open(os.path.join(pool.workdir(worker_kind, 'vocab'), word + '.txt'), 'rb') as f:
            assert f.read() == word.encode()


@pytest.mark.both_workers
def test_upload_keepstamp(pool, worker_kind, tmp_path):
    # over PB the master's utime works (over msgpack it fails: reference msgpack §8)
    wd = pool.workdir(worker_kind, 'keepstamp')
    os.makedirs(wd, exist_ok=True)
    src = os.path.join(wd, 'stamped.bin')
    write_random_file(src, 70000, seed=3)
    os.utime(src, (1_000_000_000.5, 1_234_567_890.25))
    dest = tmp_path / 'stamped.bin'
    b = pool.run(worker_kind, 'keepstamp', props={'src': 'stamped.bin', 'dest': str(dest)})
    assert b.result == 'SUCCESS', describe_build(b)
    st = os.stat(dest)
    assert abs(st.st_mtime - 1_234_567_890.25) < 0.01
    assert abs(st.st_atime - 1_000_000_000.5) < 0.01
    assert sha256_file(str(dest)) == sha256_file(src)


@pytest.mark.both_workers
def test_blocksize_above_the_banana_limit(pool, worker_kind, tmp_path):
    """blocksize=1 MiB: cworker caps each write (and read) at 655,360 bytes and succeeds;
    the stock worker cannot encode its write and the step ends EXCEPTION (PB §10.1)."""
    wd = pool.workdir(worker_kind, 'bigup')
    os.makedirs(wd, exist_ok=True)
    src = os.path.join(wd, 'big.bin')
    write_random_file(src, 3 * MIB + 5, seed=11)
    dest = tmp_path / 'big.bin'
    b = pool.run(worker_kind, 'bigup', props={'src': 'big.bin', 'dest': str(dest)})
    if worker_kind == 'stock':
        assert b.result == 'EXCEPTION', describe_build(b)
        return
    assert b.result == 'SUCCESS', describe_build(b)
    assert sha256_file(str(dest)) == sha256_file(src)
    # the download side (the stock worker makes the master loop on RETRY: not run)
    msrc = tmp_path / 'down.bin'
    write_random_file(str(msrc), 3 * MIB + 7, seed=12)
    b = pool.run('cworker', 'bigdown', props={'src': str(msrc), 'dest': 'down.bin'})
    assert b.result == 'SUCCESS', describe_build(b)
    assert sha256_file(os.path.join(pool.workdir('cworker', 'bigdown'), 'down.bin')) == \
        sha256_file(str(msrc))


def test_interrupt_then_builder_reusable(pool, proc_marker):
    pool.worker('cworker')
    brid = pool.master.force('sleep', props={'seconds': '30'})
    build = pool.master.wait_build_started(brid)
    pool.master.wait_log_contains(build['buildid'], 'shell', 'sleep', log_name='stdio')
    pool.master.stop_build(build['buildid'])
    b = bbmaster.Build(pool.master, pool.master.wait_build(brid, 30))
    assert b.result == 'CANCELLED', describe_build(b)
    b = pool.run('cworker', 'hello')
    assert b.result == 'SUCCESS', describe_build(b)


# ---- the link ----------------------------------------------------------------------------------

def test_reconfig_adds_a_builder(master_factory, worker_factory, tmp_path):
    """setBuilderList again with one more builder: old builders keep working, the new one
    works, one connection throughout (PB §6.5, §11.2 item 6)."""
    m = master_factory({'a': "[steps.ShellCommand(command='echo a')]"},
                       workers=(('rw', 'rwpass'),), pb_port=bbmaster.free_port())
    w = worker_factory(m, name='rw', protocol='pb', extra_args=('--verbose',))
    assert m.run_build('a').result == 'SUCCESS'
    m.builders['b'] = "[steps.ShellCommand(command='echo b')]"
    m.write_config()
    os.kill(m.pid, signal.SIGHUP)  # buildbot reconfig
    bbmaster.wait_for(lambda: '2 builder(s): ready for builds' in w.log_text(), 30,
                      'the second setBuilderList')
    bbmaster.wait_for(lambda: m.builderid('b') is not None, 30, 'builder b')
    for name in ('b', 'a'):
        b = m.run_build(name)
        assert b.result == 'SUCCESS', describe_build(b)
        assert b.log('shell').stdout == f'{name}\n'
    assert _connects(w) == 1
    del m.builders['b']
    m.write_config()
    os.kill(m.pid, signal.SIGHUP)


@pytest.mark.both_workers
def test_master_kill_stops_the_worker(master_factory, worker_factory, worker_kind):
    """REST `kill`: the master calls the Bot's shutdown(); the worker exits 0 and does not
    come back (PB §6.4)."""
    m = master_factory({'k': "[steps.ShellCommand(command='echo k')]"},
                       workers=(('kw', 'kwpass'),), pb_port=bbmaster.free_port())
    w = worker_factory(m, name='kw', protocol='pb')
    workerid = m.worker('kw')['workerid']
    m.rpc(f'workers/{workerid}', 'kill', reason='test')
    bbmaster.wait_for(lambda: not w.running(), 20, 'the worker to exit')
    assert w.returncode == 0
    time.sleep(1)
    assert not m.worker_connected('kw')


@pytest.mark.parametrize('how', ['file', 'signal'])
@pytest.mark.both_workers
def test_graceful_shutdown_requested_by_the_worker(master_factory, worker_factory, worker_kind,
                                                   how):
    """allow-shutdown: the worker asks (perspective shutdown()); the running build finishes
    SUCCESS, then the master stops the worker, which exits 0 (PB §6.4)."""
    m = master_factory({'g': "[steps.ShellCommand(command='sleep 3; echo done')]"},
                       workers=(('gw', 'gwpass'),), pb_port=bbmaster.free_port())
    if worker_kind == 'cworker':
        w = worker_factory(m, name='gw', protocol='pb',
                           extra_args=('--allow-shutdown', how, '--verbose'))
    else:
        w = worker_factory(m, name='gw', protocol='pb', start=False)
        w.create()
        tac_path = os.path.join(w.basedir, 'buildbot.tac')
        with open(tac_path) as f:
            tac = f.read()
        assert 'allow_shutdown = None' in tac
        with open(tac_path, 'w') as f:
            f.write(tac.replace('allow_shutdown = None', f'allow_shutdown = {how!r}'))
        w.start()
    brid = m.force('g')
    build = m.wait_build_started(brid)
    time.sleep(0.5)
    t0 = time.monotonic()
    if how == 'file':
        stamp = os.path.join(w.basedir, 'shutdown.stamp')
        with open(stamp, 'w'):
            pass
        os.utime(stamp, None)
    else:
        os.kill(w.pid, signal.SIGHUP)
    b = m.wait_build_finished(build['buildid'], 60)
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'done\n'
    bbmaster.wait_for(lambda: not w.running(), 30, 'the worker to exit')
    print(f'\n  {worker_kind} allow-shutdown={how}: exited {time.monotonic() - t0:.1f} s after '
          f'the request')
    assert w.returncode == 0
    assert not m.worker_connected('gw')


@pytest.mark.parametrize('name,password', [('solo', 'wrong'), ('nobody', 'x')])
def test_refused_login_backs_off(master, worker_factory, tmp_path, cworker_bin, name, password):
    """Wrong password or unknown name: named in the log, retried with backoff (no busy loop,
    no crash) (PB §5.3, §11.2 item 16)."""
    w = bbmaster.CWorker(str(tmp_path / 'w'), master, name, password, binary=cworker_bin,
                         protocol='pb', extra_args=('--backoff-max', '2'))
    w.start(wait=False)
    try:
        time.sleep(6)
        assert w.running()
        log = w.log_text()
        assert 'wrong worker name or password' in log, log[-3000:]
        attempts = log.count('wrong worker name or password')
        assert 2 <= attempts <= 12, log[-3000:]
    finally:
        w.stop()


def test_duplicate_name_waits_for_the_first(master, worker_factory, tmp_path, cworker_bin):
    """A second worker with an attached worker's name is refused and retries; once the first
    is gone it attaches (PB §5.4, §11.2 item 17)."""
    first = worker_factory(master, name='solo', protocol='pb')
    second = bbmaster.CWorker(str(tmp_path / 'second'), master, 'solo', 'solopass',
                              binary=cworker_bin, protocol='pb',
                              extra_args=('--backoff-max', '1'))
    second.start(wait=False)
    try:
        bbmaster.wait_for(lambda: 'another worker with this name' in second.log_text(), 20,
                          'the duplicate refusal')
        assert first.running() and second.running()
        first.stop()
        bbmaster.wait_for(lambda: 'attached to master' in second.log_text(), 30,
                          'the second worker to attach')
        b = master.run_build('hello')  # 'hello' runs on cw; check solo is really attached
        assert master.worker_connected('solo')
        del b
    finally:
        second.stop()


def test_keepalive_interval(master_factory, worker_factory):
    m = master_factory({'k': "[steps.ShellCommand(command='true')]"},
                       workers=(('ka', 'kapass'),), pb_port=bbmaster.free_port())
    w = worker_factory(m, name='ka', protocol='pb',
                       extra_args=('--keepalive', '1', '--ping-interval', '0', '--verbose'))
    n0 = w.log_text().count('answered keepalive')
    time.sleep(5.5)
    n = w.log_text().count('answered keepalive') - n0
    assert 4 <= n <= 7, w.log_text()[-2000:]


def test_stock_create_worker_tac_runs_unchanged(master, tmp_path, cworker_bin):
    """A buildbot.tac written by the stock `buildbot-worker create-worker` (protocol pb, the
    default) runs through --from-tac with no other option."""
    base = tmp_path / 'tacworker'
    r = subprocess.run([bbmaster.PYTHON, bbmaster.BUILDBOT_WORKER, 'create-worker', '-q',
                        str(base), f'127.0.0.1:{master.pb_port}', 'solo', 'solopass'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    log = open(tmp_path / 'tac.log', 'wb')
    p = subprocess.Popen([cworker_bin, '--from-tac', str(base / 'buildbot.tac')],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        master.wait_worker_connected('solo', timeout=30)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
        log.close()
    text = (tmp_path / 'tac.log').read_text()
    assert 'Perspective Broker' in text


def test_wrong_port_hints(master, tmp_path, cworker_bin):
    """PB to the msgpack port, and msgpack to the PB port: a log line saying which port is
    which, and retries (no crash, no hang)."""
    cases = [('pb', master.msgpack_port, 'Perspective Broker greeting'),
             ('msgpack', master.pb_port, 'Perspective Broker')]
    procs = []
    pwfile = tmp_path / 'password'
    pwfile.write_text('solopass')
    pwfile.chmod(0o600)
    for proto, port, _ in cases:
        (tmp_path / proto).mkdir()
        logf = open(tmp_path / f'{proto}.log', 'wb')
        procs.append((subprocess.Popen(
            [cworker_bin, '--master', f'127.0.0.1:{port}', '--protocol', proto, '--name', 'solo',
             '--basedir', str(tmp_path / proto), '--password-file', str(pwfile),
             '--backoff-max', '1'], stdout=logf, stderr=subprocess.STDOUT), logf))
    def hinted():
        return all(hint in (tmp_path / f'{proto}.log').read_text() for proto, _, hint in cases)

    try:
        # the PB worker names the msgpack port when no greeting came within 10 s; a loaded
        # machine (the sanitizer passes side by side) may take longer to log it
        deadline = time.monotonic() + 40
        while not hinted() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # a retry or two more: still no crash, no hang
        alive = [p.poll() is None for p, _ in procs]
    finally:
        for p, logf in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
            logf.close()
    assert all(alive), alive
    for proto, _, hint in cases:
        text = (tmp_path / f'{proto}.log').read_text()
        assert hint in text, text[-2000:]
