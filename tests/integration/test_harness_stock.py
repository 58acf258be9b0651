"""Self-test of the integration harness (bbmaster.py + conftest.py), using the real Debian
Buildbot 3.7 master and the stock Python buildbot-worker (no cworker needed)."""

import hashlib
import time

import pytest

import bbmaster
from bbmaster import Build

BIG_SIZE = 10 * 1024 * 1024

# Deterministic text generator: run by the worker as a script, and in-process to get the
# expected digest. Lines are short (< 4096 chars, the master's line-split limit) and plain
# ASCII, so what the master stores is byte-for-byte what the command printed.
GEN_SRC = '''\
import sys


def chunks(size):
    alpha = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
    i = n = 0
    buf = []
    while n < size:
        k = i % 62
        line = '%09d ' % i + alpha[k:] + alpha[:k] + alpha[:27] + '\\n'
        if n + len(line) > size:
            line = line[:size - n - 1] + '\\n'
        buf.append(line)
        n += len(line)
        i += 1
        if len(buf) >= 4096:
            yield ''.join(buf).encode()
            buf = []
    if buf:
        yield ''.join(buf).encode()


if __name__ == '__main__':
    for c in chunks(int(sys.argv[1])):
        sys.stdout.buffer.write(c)
'''

_gen_ns = {}
exec(compile(GEN_SRC, 'gen.py', 'exec'), _gen_ns)
gen_chunks = _gen_ns['chunks']

TIMINGS = {}


@pytest.fixture(scope='module')
def gen_script(tmp_path_factory):
    p = tmp_path_factory.mktemp('gen') / 'gen.py'
    p.write_text(GEN_SRC)
    return str(p)


@pytest.fixture(scope='module')
def master(master_factory, gen_script):
    builders = {
        'hello': "[steps.ShellCommand(command='echo hello world')]",
        'exit3': "[steps.ShellCommand(command='exit 3')]",
        'streams': "[steps.ShellCommand(command='echo out1; echo err1 >&2; echo out2; "
                   "echo err2 >&2')]",
        'props': "[steps.ShellCommand(command=util.Interpolate('echo %(prop:greeting)s'))]",
        'big': f"[steps.ShellCommand(command=['/usr/bin/python3', {gen_script!r}, '{BIG_SIZE}'])]",
        'sleeper': "[steps.ShellCommand(command=util.Interpolate('sleep 60 # %(prop:marker)s'), "
                   "env={'CW_MARKER': util.Property('marker')})]",
        'hello_w2': {'steps': "[steps.ShellCommand(command='echo hello from w2')]",
                     'workernames': ['w2']},
    }
    t0 = time.monotonic()
    m = master_factory(builders, workers=[('w1', 'pass1'), ('w2', 'pass2')])
    TIMINGS['master start (incl. template DB on first use)'] = time.monotonic() - t0
    TIMINGS['master start'] = m.last_start_seconds
    return m


@pytest.fixture(scope='module')
def stock_w1(master, tmp_path_factory):
    w = bbmaster.StockWorker(str(tmp_path_factory.mktemp('stock-w1')), master, 'w1', 'pass1')
    t0 = time.monotonic()
    w.start()
    TIMINGS['stock worker create+start+connect'] = time.monotonic() - t0
    yield w
    w.stop()


def test_loopback_only(master):
    addrs = master.listen_addresses()
    assert addrs['msgpack'] == [f'127.0.0.1:{master.msgpack_port}']
    assert addrs['www'] == [f'127.0.0.1:{master.www_port}']


def test_hello_world(master, stock_w1):
    t0 = time.monotonic()
    b = master.run_build('hello')
    TIMINGS['hello-world build'] = time.monotonic() - t0
    assert b.result == 'SUCCESS', b.describe()
    assert [s.name for s in b.steps] == ['worker_preparation', 'shell']
    lg = b.log('shell')
    assert lg.stdout == 'hello world\n'
    assert lg.stderr == ''
    assert 'echo hello world' in lg.header
    raw = lg.raw
    # the DB read-back is exactly what REST serves
    assert raw == master.log_contents_rest(lg.id)
    assert all(line[:1] in 'ohe' for line in raw.splitlines())
    assert 'ohello world\n' in raw


def test_exit_code_3_is_failure(master, stock_w1):
    b = master.run_build('exit3')
    assert b.result == 'FAILURE', b.describe()
    assert b.step('shell').result == 'FAILURE'
    assert 'exit code 3' in b.log('shell').header


def test_stdout_and_stderr_kept_apart(master, stock_w1):
    b = master.run_build('streams')
    assert b.result == 'SUCCESS', b.describe()
    lg = b.log('shell')
    assert lg.stdout == 'out1\nout2\n'
    assert lg.stderr == 'err1\nerr2\n'


def test_force_properties(master, stock_w1):
    b = master.run_build('props', props={'greeting': 'hi there, "world"'})
    assert b.result == 'SUCCESS', b.describe()
    assert b.log('shell').stdout == 'hi there, world\n'  # sh ate the quotes


def test_10mib_stdout_sha256(master, stock_w1):
    expected = hashlib.sha256()
    for c in gen_chunks(BIG_SIZE):
        expected.update(c)
    t0 = time.monotonic()
    b = master.run_build('big', timeout=120)
    TIMINGS['10 MiB stdout build (stock worker)'] = time.monotonic() - t0
    assert b.result == 'SUCCESS', b.describe()
    lg = b.log('shell')
    t0 = time.monotonic()
    digest, size = lg.digest('o')
    TIMINGS['10 MiB log sha256 read-back (DB)'] = time.monotonic() - t0
    assert size == BIG_SIZE
    assert digest == expected.hexdigest()


def test_stop_build_gives_cancelled(master, stock_w1, proc_marker):
    brid = master.force('sleeper', props={'marker': proc_marker})
    build = master.wait_build_started(brid)
    master.wait_step_started(build['buildid'], 'shell')
    # both the `sh -c` (command line) and `sleep` (env CW_MARKER) are found; wait for the
    # sleep itself: the shell's child is a second `/bin/sh -c ...` until it execs sleep
    def sleeping():
        procs = bbmaster.find_processes(proc_marker)
        return len(procs) >= 2 and any(cmd.startswith('sleep 60') for _, cmd in procs) and procs

    procs = bbmaster.wait_for(sleeping, 15, 'the sleep to run')
    assert any(cmd.startswith('sleep 60') for _, cmd in procs), procs
    assert bbmaster.ps_processes(proc_marker), 'ps should see the sh -c command line'
    t0 = time.monotonic()
    master.stop_build(build['buildid'], reason='harness test')
    b = Build(master, master.wait_build(brid, 30))
    TIMINGS['stop build -> CANCELLED'] = time.monotonic() - t0
    assert b.result == 'CANCELLED', b.describe()
    bbmaster.wait_no_process(proc_marker, 10)


@pytest.mark.worker_kinds('stock')
def test_worker_factory_and_workernames(master, worker_factory, worker_kind):
    assert worker_kind == 'stock'
    w = worker_factory(master, name='w2')
    assert isinstance(w, bbmaster.StockWorker) and w.running()
    assert master.worker_connected('w2')
    b = master.run_build('hello_w2')
    assert b.result == 'SUCCESS', b.describe()
    assert b.log('shell').stdout == 'hello from w2\n'
    assert master.worker(name='w2')['workerid'] == master.build(b.id).data['workerid']


# Stand-in for the not-yet-built C worker: takes cworker's command line, checks it, and
# execs the stock worker (same PID), so the CWorker class is exercised end to end.
FAKE_CWORKER = """#!/usr/bin/python3
import argparse, os, stat, subprocess, sys
p = argparse.ArgumentParser()
p.add_argument('--master', required=True)
p.add_argument('--name', required=True)
p.add_argument('--basedir', required=True)
p.add_argument('--password-file', required=True)
p.add_argument('--protocol', required=True, choices=['pb', 'msgpack'])
p.add_argument('--extra-flag', action='store_true')
a = p.parse_args()
assert a.master.startswith('127.0.0.1:'), a.master
assert stat.S_IMODE(os.stat(a.password_file).st_mode) == 0o600
password = open(a.password_file).read()
print('fake cworker', a.master, a.name, a.extra_flag, file=sys.stderr, flush=True)
wd = os.path.join(a.basedir, 'stock')
wire = 'msgpack_experimental_v7' if a.protocol == 'msgpack' else 'pb'
subprocess.run(['/usr/bin/buildbot-worker', 'create-worker', '-q',
                '--protocol=' + wire, wd, a.master, a.name, password], check=True)
os.execv('/usr/bin/python3', ['/usr/bin/python3', '/usr/bin/buildbot-worker', 'start',
                              '--nodaemon', wd])
"""


def test_cworker_class_with_stand_in_binary(master, tmp_path):
    fake = tmp_path / 'fake-cworker'
    fake.write_text(FAKE_CWORKER)
    fake.chmod(0o755)
    w = bbmaster.CWorker(str(tmp_path / 'wd'), master, 'w2', 'pass2', binary=str(fake),
                         extra_args=['--extra-flag'])
    with w:
        assert master.worker_connected('w2')
        assert 'fake cworker 127.0.0.1:%d w2 True' % master.worker_port() in w.log_text()
        b = master.run_build('hello_w2')
        assert b.result == 'SUCCESS', b.describe()
        pid = w.pid
    assert not w.running() and bbmaster._cmdline(pid) is None
    master.wait_worker_disconnected('w2', 15)
    with pytest.raises(bbmaster.HarnessError, match='not found or not executable'):
        bbmaster.CWorker(str(tmp_path / 'wd2'), master, 'w2', 'pass2',
                         binary=str(tmp_path / 'missing')).start()


def test_master_kill_leaves_no_stale_connection(master, worker_factory):
    # 3.7 keeps a SIGKILLed master's connected_workers rows; Master.start() clears them
    w = worker_factory(master, name='w2', kind='stock')
    master.kill()
    w.stop()
    master.start()
    assert not master.worker_connected('w2')
    w.start()
    b = master.run_build('hello_w2')
    assert b.result == 'SUCCESS', b.describe()


def test_master_restart_worker_reconnects(master, stock_w1):
    # keep last: restarts the module's master
    master.wait_worker_connected('w1')
    master.restart()
    TIMINGS['master stop (SIGTERM)'] = master.last_stop_seconds
    TIMINGS['master start (restart)'] = master.last_start_seconds
    t0 = time.monotonic()
    master.wait_worker_connected('w1', timeout=30)
    TIMINGS['stock worker reconnect after restart'] = time.monotonic() - t0
    assert stock_w1.running()
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', b.describe()
    assert b.log('shell').stdout == 'hello world\n'


def test_zz_report_timings(capsys):
    with capsys.disabled():
        print()
        for k, v in TIMINGS.items():
            print(f'  timing: {k}: {v:.2f} s')
