"""cworker-master (the C master endpoint) against both workers: the stock Python
buildbot-worker 3.7 (msgpack_experimental_v7) and cworker.

Every test starts `cworker-master` as a subprocess on a free loopback port; the worker of
the module (one per kind, module scope, so the tests of one kind run together) keeps
reconnecting to that port, and every `run`/`put`/`get` waits for it to attach.
The stock worker reconnects 1.5-2.5 s after each cworker-master exits, which is most of
the time the stock half of this module takes.
"""

import os
import pty
import re
import signal
import time

import pytest

import bbmaster
import mastercli
from mastercli import (EXIT_LINK_LOST, EXIT_NO_WORKER, EXIT_TIMEOUT, Endpoint, MasterProc,

                       sha256_file)

pytestmark = [pytest.mark.only_protocol('msgpack')]  # the peer is cworker-master, which speaks msgpack

KINDS = ('cworker', 'stock')
MIB = 1 << 20
BIG = 100 * MIB
CWORKER_ARGS = ['--backoff-max', '1']

# cworker-master's own log lines share stderr with the command's stderr
LOG_LINE = re.compile(rb'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z cworker-master: .*\n', re.M)


def selected_kinds():
    env = os.environ.get('CW_WORKER_KINDS')
    return {k.strip() for k in env.split(',')} if env else set(KINDS)


def failed(request):
    node = request.node
    return any(getattr(node, 'rep_' + w, None) is not None and getattr(node, 'rep_' + w).failed
               for w in ('setup', 'call'))


@pytest.fixture(scope='module', params=KINDS)
def wkind(request):
    if request.param not in selected_kinds():
        pytest.skip(f'CW_WORKER_KINDS excludes {request.param}')
    return request.param


@pytest.fixture(scope='session')
def bigfile(tmp_path_factory):
    """100 MiB of base64 text, 76-character lines."""
    p = str(tmp_path_factory.mktemp('mcli-data') / 'big.b64')
    mastercli.make_base64_file(p, BIG)
    return p


@pytest.fixture(scope='session')
def bigbin(tmp_path_factory):
    p = str(tmp_path_factory.mktemp('mcli-data') / 'big.bin')
    mastercli.make_random_file(p, BIG)
    return p


@pytest.fixture(scope='module')
def aw(wkind, tmp_path_factory, request, bigfile, bigbin):
    """The module's worker of kind `wkind` (made after the big files, so no long gap
    leaves the stock worker in a long reconnect backoff)."""
    base = tmp_path_factory.mktemp(f'mcli-{wkind}')
    cw_bin = request.getfixturevalue('cworker_bin') if wkind == 'cworker' else None
    w = mastercli.AttachedWorker(wkind, str(base / 'worker'), Endpoint(), 'w1', 'pass1',
                                 workdir=str(base / 'masters'), cworker_bin=cw_bin,
                                 cworker_args=CWORKER_ARGS)
    yield w
    w.stop()


@pytest.fixture
def w(aw, request):
    """The module worker, with its log and the cworker-master logs printed on failure."""
    off = aw.log_size()
    nm = len(aw.masters)
    yield aw
    if failed(request):
        print(f'\n===== {aw.kind} log (since test start) =====\n{aw.log_text()[off:][-6000:]}')
        for m in aw.masters[nm:]:
            print(f'\n===== cworker-master {m.argv[1:]} rc={m.returncode} stderr =====\n'
                  f'{m.stderr_text()[-4000:]}')


@pytest.fixture
def marker():
    mk = bbmaster.unique_marker('cwm')
    yield mk
    bbmaster.kill_processes(mk)


def cmd_procs(marker, m):
    """Processes tagged with marker, except cworker-master `m` (its argv has the --env)."""
    return [(pid, cmd) for pid, cmd in bbmaster.find_processes(marker) if pid != m.pid]


def cmd_stderr(r):
    """The command's stderr bytes: cworker-master's stderr minus its own log lines."""
    with open(r.proc.err_path, 'rb') as f:
        return LOG_LINE.sub(b'', f.read())


# ---- run ----

def test_run_echo(w):
    r = w.run_master('run', '--', 'echo', 'hello', 'world')
    assert r.rc == 0, r
    assert r.stdout == b'hello world\n', r


def test_run_exit_code(w):
    r = w.run_master('run', '--', 'sh', '-c', 'exit 7')
    assert r.rc == 7, r
    assert r.stdout == b''


def test_run_stdout_stderr_apart(w):
    script = ('printf "out1\\nout2\\n"; printf "err1\\n" >&2; printf "out3 \\303\\251\\n"; '
              'printf "err2\\n" >&2; printf "tail-no-newline"')
    r = w.run_master('run', '--', 'sh', '-c', script)
    assert r.rc == 0, r
    assert r.stdout == b'out1\nout2\nout3 \xc3\xa9\ntail-no-newline\n', r
    assert cmd_stderr(r) == b'err1\nerr2\n', r


@pytest.mark.heavy
def test_run_100mib_stdout(w, bigfile):
    t0 = time.monotonic()
    r = w.run_master('run', '--', 'cat', bigfile, timeout=300)
    dt = time.monotonic() - t0
    assert r.rc == 0, r
    size = os.path.getsize(r.proc.out_path)
    print(f'\n[{w.kind}] run cat 100 MiB: {dt:.1f} s including attach ({BIG / MIB / dt:.0f} MiB/s)')
    assert size == os.path.getsize(bigfile)
    assert sha256_file(r.proc.out_path) == sha256_file(bigfile)
    os.unlink(r.proc.out_path)


def test_run_interrupt(w, marker):
    m = w.start_master('run', '--env', f'CW_MARKER={marker}', '--', 'sh', '-c',
                       'sleep 1000 & sleep 1000; wait')
    procs = bbmaster.wait_for(lambda: len(cmd_procs(marker, m)) >= 3 and cmd_procs(marker, m),
                              60, 'sh and both sleeps to start')
    pgids = {mastercli.pgid_of(pid) for pid, _ in procs} - {None}
    assert len(pgids) == 1, procs  # one group: the command's
    pgid = pgids.pop()
    assert pgid != os.getpgid(w.pid), 'the command must have its own process group'
    t0 = time.monotonic()
    m.signal(signal.SIGINT)
    r = m.wait(30)
    dt = time.monotonic() - t0
    assert r.rc == 130, r
    assert 'interrupting the command' in r.stderr, r
    # the worker confirmed (complete) before cworker-master exited: the group is gone now
    # or within moments (the kernel reaps asynchronously)
    bbmaster.wait_no_process(marker, timeout=5)
    assert mastercli.pgid_members(pgid) == []
    assert bbmaster.ps_processes(marker) == []
    print(f'\n[{w.kind}] SIGINT to exit: {dt:.2f} s')


def test_run_timeout(w, marker):
    r = w.run_master('run', '--timeout', '1', '--env', f'CW_MARKER={marker}', '--',
                     'sleep', '30', timeout=40)
    assert r.rc == EXIT_TIMEOUT, r
    assert r.elapsed < 15, r
    bbmaster.wait_no_process(marker, timeout=5)


def test_run_worker_killed_mid_command(w, marker):
    """kill -9 the worker while `run -- sleep 30` runs: run exits 254 with a clear message."""
    m = w.start_master('run', '--env', f'CW_MARKER={marker}', '--', 'sleep', '30')
    bbmaster.wait_for(lambda: cmd_procs(marker, m), 60, 'sleep to start')
    t0 = time.monotonic()
    w.worker.kill()
    r = m.wait(20)
    dt = time.monotonic() - t0
    assert r.rc == EXIT_LINK_LOST, r
    assert re.search(r'lost the link to worker .w1.', r.stderr), r
    left = bbmaster.find_processes(marker)
    print(f'\n[{w.kind}] worker kill -9 -> run exit in {dt:.2f} s; '
          f'command processes left behind by the dead worker: {len(left)}')
    bbmaster.kill_processes(marker)


# ---- put / get ----

@pytest.mark.parametrize('size', [0, 1, BIG], ids=['0B', '1B', '100MiB'])
def test_put_get_file(w, size, tmp_path, bigbin):
    if size == BIG:
        src = bigbin
    else:
        src = str(tmp_path / f'src-{size}')
        mastercli.make_random_file(src, size)
    remote = f'put-{size}.bin'
    t0 = time.monotonic()
    r = w.run_master('put', src, remote, timeout=300)
    t_put = time.monotonic() - t0
    assert r.rc == 0, r
    dst = os.path.join(w.basedir, remote)
    assert os.path.getsize(dst) == size
    assert sha256_file(dst) == sha256_file(src)

    # get: a different file made on the worker's side
    wsrc = os.path.join(w.basedir, f'wsrc-{size}.bin')
    mastercli.make_random_file(wsrc, size)
    local = str(tmp_path / f'got-{size}.bin')
    t0 = time.monotonic()
    r = w.run_master('get', f'wsrc-{size}.bin', local, timeout=300)
    t_get = time.monotonic() - t0
    assert r.rc == 0, r
    assert os.path.getsize(local) == size
    assert sha256_file(local) == sha256_file(wsrc)
    assert [n for n in os.listdir(tmp_path) if '.cwm-' in n] == []  # no temporary left
    os.unlink(dst)
    os.unlink(wsrc)
    if size == BIG:
        print(f'\n[{w.kind}] put 100 MiB {t_put:.1f} s, get 100 MiB {t_get:.1f} s (incl. attach)')


def test_put_tree(w, tmp_path):
    src = mastercli.make_tree(str(tmp_path / 'tree'))
    r = w.run_master('put', '-r', src, 'put-tree')
    assert r.rc == 0, r
    dst = os.path.join(w.basedir, 'put-tree')
    assert mastercli.tree_manifest(dst) == mastercli.tree_manifest(src)


@pytest.mark.parametrize('compress', [None, 'gz', 'bz2'])
def test_get_tree(w, tmp_path, compress):
    """get -r into a relative LOCAL path (cworker-master runs in tmp_path)."""
    name = f'get-tree-{compress}'
    src = mastercli.make_tree(os.path.join(w.basedir, name))
    args = ['-r'] + (['--compress', compress] if compress else []) + [name, 'got']
    r = w.run_master('get', *args, cwd=str(tmp_path))
    assert r.rc == 0, r
    assert mastercli.tree_manifest(str(tmp_path / 'got')) == mastercli.tree_manifest(src)


def test_get_tree_absolute_local(w, tmp_path):
    """get -r into an absolute LOCAL path (the usual way to call it)."""
    name = 'get-tree-abs'
    src = mastercli.make_tree(os.path.join(w.basedir, name))
    local = str(tmp_path / 'got')
    r = w.run_master('get', '-r', name, local)
    assert r.rc == 0, r
    assert mastercli.tree_manifest(local) == mastercli.tree_manifest(src)


def no_temporaries(d):
    return [n for n in os.listdir(d) if '.cwm-' in n] == []


def test_get_missing_remote_keeps_local(w, tmp_path):
    """A failed get must not touch an existing LOCAL file."""
    local = tmp_path / 'precious.txt'
    local.write_bytes(b'precious data\n')
    r = w.run_master('get', 'no-such-file.bin', str(local))
    assert r.rc == mastercli.EXIT_FAILURE, r
    assert 'no-such-file.bin' in r.stderr, r
    assert local.read_bytes() == b'precious data\n', 'LOCAL was overwritten by a failed get'
    assert no_temporaries(tmp_path)


def test_get_interrupted_keeps_local(w, tmp_path):
    """SIGINT in the middle of a get: LOCAL keeps its old content, no temporary is left."""
    remote = os.path.join(w.basedir, 'sparse-1g.bin')
    with open(remote, 'wb') as f:
        f.truncate(1 << 30)  # sparse: costs no disk, still 1 GiB to send
    local = tmp_path / 'precious.bin'
    local.write_bytes(b'precious data\n')
    m = w.start_master('get', 'sparse-1g.bin', str(local))

    def partial():
        for n in os.listdir(tmp_path):
            if n.startswith('precious.bin.cwm-') and os.path.getsize(tmp_path / n) > 0:
                return n
        return None
    try:
        bbmaster.wait_for(partial, 60, 'the transfer to start')
        m.signal(signal.SIGINT)
        r = m.wait(60)
    finally:
        os.unlink(remote)
    assert r.rc != 0, r
    print(f'\n[{w.kind}] get interrupted: rc={r.rc}; LOCAL now {local.stat().st_size} bytes')
    assert local.read_bytes() == b'precious data\n', \
        f'LOCAL was replaced by {local.stat().st_size} bytes of a partial transfer'
    assert no_temporaries(tmp_path)


# ---- authentication ----

def test_wrong_password_then_right(w):
    pid = w.pid
    off = w.log_size()
    m = w.start_master('run', '--', 'true', password='not-the-password', wait=6)
    r = m.wait(30)
    assert r.rc == EXIT_NO_WORKER, r
    refusals = len(re.findall(r"refused worker 'w1'.*bad name or password", r.stderr))
    print(f'\n[{w.kind}] 401 refusals in 6 s: {refusals}')
    assert refusals >= 2, r
    assert w.running() and (pid is None or w.pid == pid), 'the worker must keep retrying'
    if w.kind == 'cworker':
        seen = w.log_text()[off:].count('master refused worker')
        assert seen >= 2, w.log_text()[off:]
    # the worker is still trying: the right password now works on the same port
    r = w.run_master('run', '--', 'echo', 'ok', timeout=60)
    assert r.rc == 0, r
    assert r.stdout == b'ok\n'


# ---- progress output ----

def test_progress_only_on_a_terminal(w, tmp_path):
    src = mastercli.make_random_file(str(tmp_path / 'p.bin'), 4 * MIB)
    r = w.run_master('put', src, 'progress.bin')
    assert r.rc == 0, r
    assert '\r' not in r.stderr, r
    assert re.search(r'cworker-master: 4194304 bytes in [0-9.]+ s \([0-9.]+ MB/s\)', r.stderr), r
    r = w.run_master('get', 'progress.bin', str(tmp_path / 'back.bin'))
    assert r.rc == 0, r
    assert '\r' not in r.stderr, r
    assert 'bytes in' in r.stderr, r

    # control: with stderr on a terminal, the progress line (with \r) shows up
    mfd, sfd = pty.openpty()
    try:
        m = w.master('put', src, 'progress2.bin', stderr_fd=sfd).start()
        os.close(sfd)
        sfd = None
        w.ensure_running()
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                b = os.read(mfd, 65536)
            except OSError:  # EIO: the slave side is closed (the process exited)
                break
            if not b:
                break
            chunks.append(b)
        res = m.wait(10)
    finally:
        if sfd is not None:
            os.close(sfd)
        os.close(mfd)
    tty_err = b''.join(chunks).decode('utf-8', 'replace')
    assert res.rc == 0, (res, tty_err)
    assert '\r' in tty_err and 'MB' in tty_err, tty_err


# ---- tests without the module worker ----

def test_no_worker_wait(tmp_path):
    m = MasterProc('run', ['--', 'true'], Endpoint(), workdir=str(tmp_path), worker='nobody',
                   password='x', wait=2).start()
    r = m.wait(20)
    assert r.rc == EXIT_NO_WORKER, r
    assert 1.5 < r.elapsed < 10, r
    assert "worker 'nobody' did not attach within 2 s" in r.stderr, r


def test_serve_two_workers_attach_detach(tmp_path, cworker_bin):
    kinds = selected_kinds()
    if kinds != set(KINDS):
        pytest.skip('needs both worker kinds')
    wf = tmp_path / 'workers'
    wf.write_text('# name password\ncw cwpass\nstock stockpass\n')
    ep = Endpoint()
    serve = MasterProc('serve', ['--workers', str(wf)], ep, workdir=str(tmp_path)).start()
    serve.wait_listening()
    cw = bbmaster.CWorker(str(tmp_path / 'cw'), ep, 'cw', 'cwpass', binary=cworker_bin,
                          extra_args=CWORKER_ARGS)
    st = bbmaster.StockWorker(str(tmp_path / 'stock'), ep, 'stock', 'stockpass')
    try:
        cw.start(wait=False)
        st.start(wait=False)

        def count(text):
            return serve.stderr_text().count(text)

        bbmaster.wait_for(lambda: count("worker 'cw' attached") == 1 and
                          count("worker 'stock' attached") == 1, 30, 'both workers attached')
        # both at the same time: neither detached
        assert 'detached' not in serve.stderr_text(), serve.stderr_text()

        cw.kill()
        bbmaster.wait_for(lambda: count("worker 'cw' detached") == 1, 10, 'cw detach logged')
        assert serve.running()
        cw.start(wait=False)
        bbmaster.wait_for(lambda: count("worker 'cw' attached") == 2, 30, 'cw attached again')

        st.kill()
        bbmaster.wait_for(lambda: count("worker 'stock' detached") == 1, 10,
                          'stock detach logged')
        assert serve.running()
        assert count("worker 'cw' detached") == 1  # the other one is unaffected
        st.start(wait=False)
        bbmaster.wait_for(lambda: count("worker 'stock' attached") == 2, 30,
                          'stock attached again')
        serve.signal(signal.SIGINT)
        r = serve.wait(10)
        assert r.rc == 0, r
    except BaseException:
        print(f'\n===== serve stderr =====\n{serve.stderr_text()[-4000:]}')
        print(f'\n===== cworker log =====\n{cw.log_text()[-3000:]}')
        print(f'\n===== stock log =====\n{st.log_text()[-3000:]}')
        raise
    finally:
        if serve.running():
            serve.kill()
        cw.stop(timeout=10)
        st.stop(timeout=10)
