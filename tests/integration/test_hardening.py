"""Hardening of cworker against cworker-master (the C master endpoint): many master restarts,
links dropped in the middle of 100 MiB, a slow master under 1 GiB of output, 200 concurrent
commands, graceful drain on SIGTERM/SIGINT, and the worker's limits.

The real-master counterparts (10 master restarts, master killed during a 100 MiB step or
upload, new builds refused while draining, --kill-grace, a black-holed link) are in
test_hardening_master.py.

Every test starts its own cworker (the memory tests need a fresh process for VmHWM, the
drain tests end it). Numbers are printed: run with -s to see them.

    /usr/bin/python3 -m pytest tests/integration/test_hardening.py -v -s
"""

import os
import re
import signal
import time

import pytest

import bbmaster
import mastercli
from hardening_util import (SANITIZED, RssSampler, fd_count, fd_kinds, fd_targets, format_smaps_top,
                            generator_sha256, proc_status, wait_fds_back)
from mastercli import EXIT_LINK_LOST, Endpoint, MasterProc, sha256_file

pytestmark = [pytest.mark.only_protocol('msgpack')]  # the peer is cworker-master, which speaks msgpack

MIB = 1 << 20
# item 3: what cworker's memory may grow by (over its idle RSS after attach) while a slow master
# takes 1 GiB of output.  The bound is on growth, not the absolute figure: shared-library pages
# (RssFile: libc, libcrypto, libarchive's closure) depend on the build and the distribution.
GROWTH_BOUND_KIB = 4 * 1024


def assert_bounded_growth(s, idle):
    if SANITIZED:
        return
    grow_anon = s.peak_anon - idle['RssAnon']
    grow_hwm = s.hwm - idle['VmRSS']
    assert grow_anon < GROWTH_BOUND_KIB and grow_hwm < GROWTH_BOUND_KIB, (
        f'memory grew too much: RssAnon {idle["RssAnon"]} -> {s.peak_anon} KiB (+{grow_anon}), '
        f'VmRSS {idle["VmRSS"]} -> VmHWM {s.hwm} KiB (+{grow_hwm}); bound +{GROWTH_BOUND_KIB} KiB')
FAST_ARGS = ['--backoff-max', '1']


@pytest.fixture(autouse=True)
def _cworker_selected():
    kinds = os.environ.get('CW_WORKER_KINDS')
    if kinds and 'cworker' not in kinds.split(','):
        pytest.skip('CW_WORKER_KINDS excludes cworker')


def _failed(request):
    node = request.node
    return any(getattr(node, 'rep_' + w, None) is not None and getattr(node, 'rep_' + w).failed
               for w in ('setup', 'call'))


@pytest.fixture
def make_aw(tmp_path, cworker_bin, request):
    """make_aw(*cworker_args, name='w') -> AttachedWorker (not started: its first
    run_master/start_master starts it). Stopped at teardown; logs printed on failure."""
    made = []

    def factory(*args, name='w'):
        aw = mastercli.AttachedWorker('cworker', str(tmp_path / f'{name}-worker'), Endpoint(),
                                      'w1', 'pass1', workdir=str(tmp_path / f'{name}-masters'),
                                      cworker_bin=cworker_bin, cworker_args=list(args))
        made.append(aw)
        return aw

    yield factory
    if _failed(request):
        for aw in made:
            print(f'\n===== cworker log ({aw.basedir}) =====\n{aw.log_text()[-6000:]}')
            for m in aw.masters[-4:]:
                print(f'\n===== cworker-master {m.argv[1:4]}... rc={m.returncode} faults='
                      f'{m.env.get("CWORKER_MASTER_FAULTS", "")[:60]!r} stderr =====\n'
                      f'{m.stderr_text()[-3000:]}')
    for aw in made:
        aw.stop()


@pytest.fixture
def marker():
    mk = bbmaster.unique_marker('cwh')
    yield mk
    bbmaster.kill_processes(mk)


def attach(aw):
    """Start the worker (if needed) and let it attach once; -> its PID."""
    r = aw.run_master('run', '--', 'true', timeout=60)
    assert r.rc == 0, r
    return aw.pid


def follow_up(aw, pid):
    """The same cworker process attaches to a fresh cworker-master and runs a command."""
    r = aw.run_master('run', '--', 'echo', 'follow-up', timeout=60)
    assert r.rc == 0, r
    assert r.stdout == b'follow-up\n', r
    assert aw.pid == pid and aw.running(), 'cworker was restarted or died'


# ---- 1. cworker-master serve killed and started again 100 times while the worker is idle ----

SERVE_CYCLES = 100


@pytest.mark.heavy
def test_serve_restarted_100_times_idle(tmp_path, cworker_bin):
    """`serve` started and stopped 100 times on one port (odd cycles SIGKILL, even cycles
    SIGTERM, which closes with a Close frame); the same cworker attaches every time. fds and
    VmRSS after the 1st and the 100th attach are compared."""
    wf = tmp_path / 'workers'
    wf.write_text('w1 pass1\n')
    ep = Endpoint()
    cw = bbmaster.CWorker(str(tmp_path / 'cw'), ep, 'w1', 'pass1', binary=cworker_bin,
                          extra_args=FAST_ARGS)
    serve = None
    seen = {}
    t0 = time.monotonic()
    attach_times = []
    try:
        cw.start(wait=False)
        pid = cw.pid
        for i in range(1, SERVE_CYCLES + 1):
            serve = MasterProc('serve', ['--workers', str(wf)], ep,
                               workdir=str(tmp_path / 'serve')).start()
            ts = time.monotonic()
            bbmaster.wait_for(lambda: "worker 'w1' attached" in serve.stderr_text()
                              or not serve.running(), 30, f'attach #{i}')
            assert serve.running(), serve.stderr_text()
            # the worker's own view: one 'attached' line per cycle
            bbmaster.wait_for(lambda: cw.log_text().count('attached to master') >= i, 10,
                              f'cworker to log attach #{i}')
            attach_times.append(time.monotonic() - ts)
            assert cw.running() and cw.pid == pid, f'cworker died in cycle {i}'
            if i in (1, SERVE_CYCLES):
                st = proc_status(pid)
                seen[i] = (fd_count(pid), st['VmRSS'], st['RssAnon'], fd_targets(pid))
            if i % 2:
                serve.kill()
            else:
                serve.signal(signal.SIGTERM)
                r = serve.wait(10)
                assert r.rc == 0, r
            for p in (serve.out_path, serve.err_path):  # 100 of each otherwise
                if i not in (1, SERVE_CYCLES):
                    os.unlink(p)
        total = time.monotonic() - t0
        log = cw.log_text()
        assert log.count('attached to master') == SERVE_CYCLES, log[-3000:]
        assert 'error' not in log.lower(), [ln for ln in log.splitlines() if 'error' in ln.lower()]
        (fd1, rss1, anon1, l1), (fdn, rssn, anonn, ln) = seen[1], seen[SERVE_CYCLES]
        print(f'\n[serve x{SERVE_CYCLES}] {total:.1f} s, attach after start: median '
              f'{sorted(attach_times)[len(attach_times) // 2]:.2f} s, max {max(attach_times):.2f} s'
              f'\n  after attach #1:   {fd1} fds, VmRSS {rss1} KiB (RssAnon {anon1})'
              f'\n  after attach #{SERVE_CYCLES}: {fdn} fds, VmRSS {rssn} KiB (RssAnon {anonn})'
              f'\n  fds #1:   {l1}\n  fds #{SERVE_CYCLES}: {ln}')
        assert abs(fdn - fd1) <= 2, (l1, ln)
        assert SANITIZED or rssn <= rss1 + 512, f'VmRSS grew from {rss1} to {rssn} KiB'
    except BaseException:
        print(f'\n===== cworker log =====\n{cw.log_text()[-4000:]}')
        if serve is not None:
            print(f'\n===== last serve stderr =====\n{serve.stderr_text()[-3000:]}')
        raise
    finally:
        if serve is not None and serve.running():
            serve.kill()
        cw.stop(timeout=10)


# ---- 2. link dropped in the middle of 100 MiB of output, and of a 100 MiB upload ----

def test_drop_during_100mib_output(make_aw, tmp_path, marker):
    aw = make_aw(*FAST_ARGS)
    big = mastercli.make_base64_file(str(tmp_path / 'big.txt'), 100 * MIB)
    pid = attach(aw)
    base_fds = fd_kinds(pid)
    off = aw.log_size()
    # `cat` is blocked on its full pipe (backpressure) when the link goes; the `sleep` would
    # outlive a command that is not killed
    m = aw.start_master('run', '--env', f'CW_MARKER={marker}', '--', 'sh', '-c',
                        f'cat {big}; sleep 1000 # {marker}', faults='drop_after=300')
    r = m.wait(120)
    got = os.path.getsize(m.out_path)
    print(f'\n[drop_after=300 during run -- cat 100 MiB] rc={r.rc}, {got} bytes arrived '
          f'before the drop')
    assert r.rc == EXIT_LINK_LOST, r
    assert 'fault injection: dropping the link' in r.stderr, r
    assert 0 < got < 100 * MIB, 'the drop must happen in the middle of the output'
    bbmaster.wait_for(lambda: 'connection to master lost' in aw.log_text()[off:], 10,
                      'cworker to notice the drop')
    bbmaster.wait_for(lambda: not mastercli.procs_except(marker, m.pid), 10,
                      'the command (cat, sh, sleep) to be killed')
    assert not bbmaster.ps_processes(marker)   # cworker-master (argv has the marker) exited
    assert 'interrupting (connection lost)' in aw.log_text()[off:]
    assert aw.pid == pid and aw.running()
    follow_up(aw, pid)
    wait_fds_back(pid, base_fds)
    assert not [t for t in fd_targets(pid) if big in t]


def test_drop_during_100mib_upload(make_aw, tmp_path):
    aw = make_aw(*FAST_ARGS)
    pid = attach(aw)
    src = os.path.join(aw.basedir, 'big-up.bin')
    mastercli.make_random_file(src, 100 * MIB)
    src_sha = sha256_file(src)
    base_fds = fd_kinds(pid)
    off = aw.log_size()
    local = str(tmp_path / 'got.bin')
    # cworker-master asks for 1 MiB blocks: the link goes after ~31 MiB
    m = aw.start_master('get', 'big-up.bin', local, faults='drop_after=35')
    r = m.wait(120)
    print(f'\n[drop_after=35 during get 100 MiB] rc={r.rc}; local file left: '
          f'{os.path.exists(local)}; files in {tmp_path}: {sorted(os.listdir(tmp_path))}')
    assert r.rc == EXIT_LINK_LOST, r
    assert 'fault injection: dropping the link' in r.stderr, r
    bbmaster.wait_for(lambda: 'connection to master lost' in aw.log_text()[off:], 10,
                      'cworker to notice the drop')
    # the worker lets go of the file being uploaded
    bbmaster.wait_for(lambda: not [t for t in fd_targets(pid) if t.startswith(src)], 10,
                      'cworker to close the uploaded file')
    assert aw.pid == pid and aw.running()
    assert not os.path.exists(local) or os.path.getsize(local) < 100 * MIB
    follow_up(aw, pid)
    wait_fds_back(pid, base_fds)
    # and the same upload goes through completely afterwards
    r = aw.run_master('get', 'big-up.bin', local, timeout=120)
    assert r.rc == 0, r
    assert sha256_file(local) == src_sha
    assert aw.pid == pid


# ---- 3. a slow master while a command writes 1 GiB to stdout ----

GEN_1GIB = 'yes abcdefghijklmnopqrstuvwxyz0123456789 | head -c 1073741824'


@pytest.mark.heavy
def test_slow_master_1gib_output_bounded_memory(make_aw):
    exp_sha, exp_size = generator_sha256(GEN_1GIB)
    # --dead-timeout 0: the 8 s stall must not make the worker drop the link
    aw = make_aw('--dead-timeout', '0', *FAST_ARGS)
    pid = attach(aw)
    idle = proc_status(pid)
    off = aw.log_size()
    t0 = time.monotonic()
    with RssSampler(pid, 0.1) as s:
        m = aw.start_master('run', '--', 'sh', '-c', GEN_1GIB,
                            faults='stall_after=20,stall_ms=8000')
        r = m.wait(600)
    duration = time.monotonic() - t0
    got_size = os.path.getsize(m.out_path)
    got_sha = sha256_file(m.out_path)
    os.unlink(m.out_path)
    print(f'\n[1 GiB stdout, master stalled 8 s after 20 messages] {duration:.1f} s, rc={r.rc}'
          f'\n  idle after attach: VmRSS {idle["VmRSS"]} KiB, RssAnon {idle["RssAnon"]} KiB, '
          f'RssFile {idle["RssFile"]} KiB'
          f'\n  during the run: {s.describe()}'
          f'\n  largest mappings now:\n{format_smaps_top(pid)}')
    assert r.rc == 0, r
    assert 'fault injection: stalling' in r.stderr, r
    log = aw.log_text()[off:]
    assert 'finished' in log and 'connection to master lost' not in log[:log.index('finished')], \
        'the link was lost while the command ran'
    assert got_size == exp_size, f'{got_size} bytes arrived, {exp_size} expected'
    assert got_sha == exp_sha, 'the bytes differ from the generator\'s (order or content)'
    assert duration > 8, 'the stall did not happen'
    assert_bounded_growth(s, idle)


# ---- 4. 200 commands at once ----

PARALLEL = 200
LINES = 50
PAR_SCRIPT = ('i=$CW_RUN_INDEX; n=0; while [ $n -lt %d ]; do echo "idx=$i line=$n"; '
              'n=$((n+1)); done; echo "err idx=$i" >&2; sleep 0.$((i %% 10)); '
              'echo "idx=$i end"; exit $((i %% 5))' % LINES)


def parse_blocks(stdout):
    """'=== [i] exit C' blocks -> {i: (C, [lines])}; asserts no index appears twice."""
    blocks = {}
    cur = None
    for line in stdout.decode().splitlines():
        m = re.fullmatch(r'=== \[(\d+)\] exit (-?\d+)', line)
        if m:
            i = int(m.group(1))
            assert i not in blocks, f'block {i} printed twice'
            blocks[i] = (int(m.group(2)), [])
            cur = i
        else:
            assert cur is not None, f'output before the first block header: {line!r}'
            blocks[cur][1].append(line)
    return blocks


def test_200_concurrent_commands(make_aw, marker):
    aw = make_aw(*FAST_ARGS)
    pid = attach(aw)
    t0 = time.monotonic()
    r = aw.run_master('run', '--parallel', str(PARALLEL), '--env', f'CW_MARKER={marker}', '--',
                      'sh', '-c', PAR_SCRIPT, timeout=180)
    dt = time.monotonic() - t0
    print(f'\n[run --parallel {PARALLEL}] rc={r.rc} in {dt:.2f} s')
    assert r.rc == 1, r  # the first non-zero exit code in index order: index 1 -> 1
    blocks = parse_blocks(r.stdout)
    assert sorted(blocks) == list(range(PARALLEL))
    bad = []
    for i, (code, lines) in blocks.items():
        want = [f'idx={i} line={n}' for n in range(LINES)] + [f'idx={i} end']
        if code != i % 5:
            bad.append(f'[{i}] exit {code}, expected {i % 5}')
        if lines != want:
            foreign = sorted({ln.split()[0] for ln in lines} - {f'idx={i}'})
            bad.append(f'[{i}] {len(lines)} lines, foreign: {foreign[:5]}, first: {lines[:2]}')
    assert not bad, '\n'.join(bad[:20])
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith('err idx=')]
    assert sorted(errs) == sorted(f'err idx={i}' for i in range(PARALLEL))
    log = aw.log_text()
    assert len(re.findall(r'command \d+ finished', log)) >= PARALLEL + 1
    bbmaster.wait_for(lambda: not mastercli.procs_except(marker, r.proc.pid), 10,
                      'no command process left')
    assert aw.pid == pid and aw.running()
    follow_up(aw, pid)


# ---- 5. graceful drain: SIGTERM, --drain-timeout, a second signal, SIGINT ----

def _start_cmd(aw, marker, script):
    m = aw.start_master('run', '--env', f'CW_MARKER={marker}', '--', 'sh', '-c',
                        f'{script} # {marker}')
    bbmaster.wait_for(lambda: b'start\n' in m.stdout_bytes() or not m.running(), 30,
                      'the command to print "start"')
    assert m.running(), m.wait(5)
    cmd_pids = [p for p, _ in mastercli.procs_except(marker, m.pid)]
    assert cmd_pids, 'the command process is not visible'
    leaders = [p for p in cmd_pids if mastercli.pgid_of(p) == p]
    assert leaders, f'no process group leader among {cmd_pids}'
    return m, leaders[0]


def _wait_worker_exit(aw, timeout):
    try:
        return aw.worker.proc.wait(timeout)
    except Exception:
        raise AssertionError(f'cworker did not exit within {timeout} s:\n{aw.log_text()[-3000:]}')


def _assert_clean_exit(aw, rc, marker, m, pgid):
    assert rc == 0, f'cworker exit status {rc}'
    assert not mastercli.procs_except(marker, m.pid), 'a command process outlived cworker'
    if pgid:
        assert not mastercli.pgid_members(pgid), f'process group {pgid} still has members'
    assert 'exited' in aw.log_text().splitlines()[-1], aw.log_text()[-1000:]


def test_drain_sigterm_lets_the_command_finish(make_aw, marker):
    aw = make_aw(*FAST_ARGS)
    attach(aw)
    m, pgid = _start_cmd(aw, marker, 'echo start; sleep 3; echo end')
    t0 = time.monotonic()
    os.kill(aw.pid, signal.SIGTERM)
    bbmaster.wait_for(lambda: 'draining' in aw.log_text(), 5, 'cworker to start draining')
    time.sleep(1)
    assert aw.running(), 'cworker must wait for the running command'
    rc = _wait_worker_exit(aw, 30)
    dt = time.monotonic() - t0
    r = m.wait(10)
    print(f'\n[drain] SIGTERM -> cworker exit {rc} after {dt:.2f} s; run rc={r.rc} '
          f'stdout={r.stdout!r}')
    assert r.rc == 0 and r.stdout == b'start\nend\n', r
    assert 1.5 < dt < 10, 'the command should have run to its end (~3 s), then cworker exit'
    assert 'interrupting' not in aw.log_text()
    _assert_clean_exit(aw, rc, marker, m, pgid)


def test_drain_timeout_interrupts(make_aw, marker):
    aw = make_aw('--drain-timeout', '2', *FAST_ARGS)
    attach(aw)
    m, pgid = _start_cmd(aw, marker, 'echo start; sleep 1000')
    t0 = time.monotonic()
    os.kill(aw.pid, signal.SIGTERM)
    time.sleep(1)
    assert aw.running(), 'cworker must drain for --drain-timeout 2 first'
    assert mastercli.pgid_members(pgid), 'the command must still run during the drain'
    rc = _wait_worker_exit(aw, 20)
    dt = time.monotonic() - t0
    r = m.wait(10)
    print(f'\n[--drain-timeout 2] SIGTERM -> cworker exit {rc} after {dt:.2f} s; run rc={r.rc}')
    assert 1.8 < dt < 8, dt
    assert 'drain deadline passed' in aw.log_text()
    assert r.rc == 137, r   # the master got the command's end (killed by SIGKILL)
    _assert_clean_exit(aw, rc, marker, m, pgid)


def test_second_sigterm_interrupts_the_drain(make_aw, marker):
    aw = make_aw(*FAST_ARGS)    # --drain-timeout 60 (default)
    attach(aw)
    m, pgid = _start_cmd(aw, marker, 'echo start; sleep 1000')
    os.kill(aw.pid, signal.SIGTERM)
    bbmaster.wait_for(lambda: 'draining' in aw.log_text(), 5, 'cworker to start draining')
    time.sleep(0.5)
    assert aw.running()
    t0 = time.monotonic()
    os.kill(aw.pid, signal.SIGTERM)
    rc = _wait_worker_exit(aw, 15)
    dt = time.monotonic() - t0
    r = m.wait(10)
    print(f'\n[second SIGTERM] -> cworker exit {rc} after {dt:.2f} s; run rc={r.rc}')
    assert dt < 3, dt
    assert r.rc == 137, r
    _assert_clean_exit(aw, rc, marker, m, pgid)


def test_sigint_interrupts_at_once(make_aw, marker):
    aw = make_aw(*FAST_ARGS)
    attach(aw)
    m, pgid = _start_cmd(aw, marker, 'echo start; sleep 1000')
    t0 = time.monotonic()
    os.kill(aw.pid, signal.SIGINT)
    rc = _wait_worker_exit(aw, 15)
    dt = time.monotonic() - t0
    r = m.wait(10)
    print(f'\n[SIGINT] -> cworker exit {rc} after {dt:.2f} s; run rc={r.rc}')
    assert dt < 3, dt
    assert 'draining' not in aw.log_text()
    assert 'stopping: SIGINT received' in aw.log_text()
    assert r.rc == 137, r
    _assert_clean_exit(aw, rc, marker, m, pgid)


# ---- 6. limits ----

BUSY_RE = r'worker busy: 2 commands running \(limit --max-commands 2\)'


def _max_commands_run(make_aw, marker):
    aw = make_aw('--max-commands', '2', *FAST_ARGS)
    pid = attach(aw)
    r = aw.run_master('run', '--parallel', '5', '--env', f'CW_MARKER={marker}', '--', 'sh', '-c',
                      'echo "out $CW_RUN_INDEX"; sleep 1', timeout=60)
    return aw, pid, r


def test_max_commands_refuses_beyond_the_limit(make_aw, marker):
    aw, pid, r = _max_commands_run(make_aw, marker)
    print(f'\n[--max-commands 2, run --parallel 5] rc={r.rc}\n{r.stdout.decode()}{r.stderr}')
    blocks = parse_blocks(r.stdout)
    ran = {i: b for i, b in blocks.items() if b[0] == 0}
    refused = {i: b for i, b in blocks.items() if b[0] != 0}
    assert sorted(blocks) == list(range(5))
    assert len(ran) == 2 and len(refused) == 3, blocks
    for i, (code, lines) in ran.items():
        assert lines == [f'out {i}'], (i, lines)
    for i, (code, lines) in refused.items():
        assert lines == [], (i, lines)   # the command never started
    assert r.rc != 0, r
    assert len(re.findall(BUSY_RE, r.stderr)) == 3, r.stderr
    assert len(re.findall(r'refused: ' + BUSY_RE, aw.log_text())) == 3
    # the limit counts running commands: two at once work again afterwards
    r2 = aw.run_master('run', '--parallel', '2', '--', 'true', timeout=60)
    assert r2.rc == 0, r2
    assert aw.pid == pid


def test_max_commands_refusal_shows_in_its_block(make_aw, marker):
    """Each refused copy's block must carry the worker's refusal, so that the message can be
    told apart per index (`--parallel` promises one block per copy)."""
    aw, pid, r = _max_commands_run(make_aw, marker)
    blocks = parse_blocks(r.stdout)
    refused = sorted(i for i, b in blocks.items() if b[0] != 0)
    assert len(refused) == 3, blocks
    missing = [i for i in refused
               if not any(re.search(BUSY_RE, ln) for ln in blocks[i][1]) and
               not re.search(rf'\[{i}\].*{BUSY_RE}', r.stderr)]
    assert not missing, (
        f'the refusal is not part of the blocks of copies {missing}: stdout=\n'
        f'{r.stdout.decode()}\nstderr=\n{r.stderr}')


def test_max_message_oversize_reconnects(make_aw):
    aw = make_aw('--max-message', '65536', *FAST_ARGS)
    pid = attach(aw)
    off = aw.log_size()
    r = aw.run_master('run', '--', 'true', faults='oversize=1048576', timeout=30)
    log = aw.log_text()[off:]
    line = mastercli.first_line(log, 'connection to master lost')
    print(f'\n[--max-message 65536, 1 MiB message] run rc={r.rc}; cworker: {line}')
    assert r.rc == EXIT_LINK_LOST, r
    assert line and re.search(r'size limit|exceeds|too (large|big)', line), log
    assert SANITIZED or proc_status(pid)['VmHWM'] < 16 * 1024, \
        'the oversize message must not be buffered'
    follow_up(aw, pid)


def test_stalled_master_several_producers_bounded_memory(make_aw):
    """Four commands flood output while the master stops reading for 6 s: the worker's
    memory stays within the bound of the 1 GiB test (per-command buffers are bounded,
    producers are paused)."""
    aw = make_aw('--dead-timeout', '0', *FAST_ARGS)
    pid = attach(aw)
    idle = proc_status(pid)
    per = 32 * MIB
    gen = f'yes "flood $CW_RUN_INDEX 0123456789abcdefghijklmnopqrstuvwxyz" | head -c {per}'
    with RssSampler(pid, 0.1) as s:
        m = aw.start_master('run', '--parallel', '4', '--', 'sh', '-c', gen,
                            faults='stall_after=30,stall_ms=6000')
        r = m.wait(300)
    print(f'\n[4 x 32 MiB, master stalled 6 s] rc={r.rc} in {r.elapsed:.1f} s; {s.describe()}')
    assert r.rc == 0, r
    assert 'fault injection: stalling' in r.stderr, r
    blocks = parse_blocks(r.stdout)
    assert sorted(blocks) == [0, 1, 2, 3]
    for i, (code, lines) in blocks.items():
        assert code == 0
        assert sum(len(ln) + 1 for ln in lines) in (per, per + 1), i
        assert all(ln.startswith(f'flood {i} ') or f'flood {i} '.startswith(ln)
                   for ln in lines), f'foreign lines in block {i}'
    assert_bounded_growth(s, idle)

def test_max_pending_output_small_limit_loses_nothing(make_aw):
    """--max-pending-output 8192 (a command's pipes pause at 8 KiB of unsent output, resume
    below 4 KiB): 16 MiB through a master that stalls for 3 s arrive whole and in order,
    and the worker's memory does not grow with it."""
    aw = make_aw('--dead-timeout', '0', '--max-pending-output', '8192', *FAST_ARGS)
    pid = attach(aw)
    idle = proc_status(pid)
    gen = 'seq 1 2000000'
    with RssSampler(pid, 0.1) as s:
        m = aw.start_master('run', '--', 'sh', '-c', gen, faults='stall_after=20,stall_ms=3000')
        r = m.wait(300)
    with open(m.out_path, 'rb') as f:
        got = f.read()
    os.unlink(m.out_path)
    print(f'\n[--max-pending-output 8192, master stalled 3 s] rc={r.rc} in {r.elapsed:.1f} s, '
          f'{len(got)} bytes; {s.describe()}')
    assert r.rc == 0, r
    assert 'fault injection: stalling' in r.stderr, r
    assert got == b''.join(b'%d\n' % i for i in range(1, 2000001))
    assert_bounded_growth(s, idle)
