"""Hardening of cworker against the real Debian Buildbot 3.7 master: the master stopped and
started again many times while the worker is idle, the master killed in the middle of a
100 MiB output step and of a 100 MiB FileUpload, a draining worker refusing new builds,
--kill-grace, and a link that black-holes traffic (TCP proxy) instead of failing.

Already in test_lifecycle.py (not repeated here): master SIGSTOPped longer than
--dead-timeout during a step, master SIGKILLed during a step, one master restart while idle.

The cworker-master counterparts are in test_hardening.py. Numbers are printed (-s).

    /usr/bin/python3 -m pytest tests/integration/test_hardening_master.py -v -s
    /usr/bin/python3 -m pytest tests/integration/test_hardening_master.py -v -s -m slow  # 100 restarts
"""

import os
import re
import signal
import time

import pytest

import bbmaster
import mastercli
from cwhelpers import (WORKER_CREDS, describe_build, dump_worker_logs, per_kind,  # noqa: F401
                       wait_processes, write_random_file)
from hardening_util import (SANITIZED, BlackholeProxy, fd_count, fd_kinds, fd_targets, proc_status,
                            wait_fds_back)

MIB = 1 << 20
FAST_ARGS = ('--backoff-max', '1')

# A re-run guard as in test_lifecycle.py: after a master crash 3.7 may put the interrupted
# request back in the queue; the re-run sees the flag file and exits at once.
BIGOUT = ("[steps.ShellCommand(command=util.Interpolate("
          "'if [ -e flag-%(prop:marker)s ]; then echo rerun; exit 0; fi; "
          "touch flag-%(prop:marker)s; "
          "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz "
          "| head -c 104857600; sleep 1000 # %(prop:marker)s'), "
          "env={'CW_MARKER': util.Property('marker')})]")

# Prints 'start', then waits (at most 60 s) for the file named by the 'flag' property.
GATE = ("[steps.ShellCommand(command=util.Interpolate("
        "'echo start; i=0; while [ ! -e %(prop:flag)s ] && [ $i -lt 600 ]; do sleep 0.1; "
        "i=$((i+1)); done; echo end # %(prop:marker)s'), "
        "env={'CW_MARKER': util.Property('marker')})]")

# Ignores SIGTERM (and so does its sleep); sigtermTime makes the worker's interrupt a
# SIGTERM first, so only --kill-grace's SIGKILL can end it.
TRAPPER = ("[steps.ShellCommand(command=util.Interpolate("
           "'trap \"\" TERM; echo started; sleep 1000 # %(prop:marker)s'), sigtermTime=60, "
           "env={'CW_MARKER': util.Property('marker')})]")

BUILDERS = {
    'hello': "[steps.ShellCommand(command='echo hello world')]",
    'bigout': BIGOUT,
    'up': "[steps.FileUpload(workersrc=util.Property('src'), masterdest=util.Property('dest'))]",
    'gate': GATE,
    'trapper': TRAPPER,
}


@pytest.fixture(autouse=True)
def _cworker_selected():
    kinds = os.environ.get('CW_WORKER_KINDS')
    if kinds and 'cworker' not in kinds.split(','):
        pytest.skip('CW_WORKER_KINDS excludes cworker')


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(per_kind(BUILDERS), workers=WORKER_CREDS, quarantine_timeout=1)


def _hello(master):
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'hello world\n'


def _cancel_request(master, brid):
    """A request whose build ended RETRY goes back to the queue and would run on the next
    test's worker: cancel it (no-op if it is complete)."""
    try:
        if not master.buildrequest(brid)['complete']:
            master.rpc(f'buildrequests/{brid}', 'cancel', reason='hardening test clean-up')
    except Exception as e:  # clean-up only
        print(f'(could not cancel buildrequest {brid}: {e})')


def _attaches(w):
    return w.log_text().count('attached to master')


def _snapshot(pid):
    st = proc_status(pid)
    return {'fds': fd_count(pid), 'rss': st['VmRSS'], 'anon': st['RssAnon'],
            'list': fd_targets(pid)}


# ---- 1. the master stopped and started again, same ports, while the worker is idle ----

@pytest.mark.heavy
@pytest.mark.parametrize('cycles', [10, pytest.param(100, marks=pytest.mark.slow)])
def test_master_restarted_while_idle(master, worker_factory, cycles):
    """Master.stop() (SIGTERM) + start() on the same ports `cycles` times; the same cworker
    re-attaches each time. fds and VmRSS after the 1st and the last re-attach are compared.
    (100 cycles take ~5-6 min with a 1.3-2.5 s master start: marked slow; the 100-cycle run
    without the slow mark is test_hardening.py::test_serve_restarted_100_times_idle.)"""
    w = worker_factory(master, name='cw', extra_args=FAST_ARGS)
    pid = w.pid
    seen = {}
    t0 = time.monotonic()
    reattach = []
    for i in range(1, cycles + 1):
        n = _attaches(w)
        master.stop()
        master.start()
        ts = time.monotonic()
        master.wait_worker_connected('cw', timeout=60)
        bbmaster.wait_for(lambda: _attaches(w) > n, 30, f're-attach #{i} in the worker log')
        reattach.append(time.monotonic() - ts)
        assert w.running() and w.pid == pid, f'cworker died in cycle {i}'
        if i in (1, cycles):
            time.sleep(0.3)  # let the master's attach sequence settle
            seen[i] = _snapshot(pid)
    total = time.monotonic() - t0
    a, b = seen[1], seen[cycles]
    print(f'\n[real master stop/start x{cycles}] {total:.1f} s; re-attach after start(): '
          f'median {sorted(reattach)[len(reattach) // 2]:.2f} s, max {max(reattach):.2f} s'
          f'\n  after re-attach #1:  {a["fds"]} fds, VmRSS {a["rss"]} KiB (RssAnon {a["anon"]})'
          f'\n  after re-attach #{cycles}: {b["fds"]} fds, VmRSS {b["rss"]} KiB '
          f'(RssAnon {b["anon"]})\n  fds #1: {a["list"]}\n  fds #{cycles}: {b["list"]}')
    assert abs(b['fds'] - a['fds']) <= 2, (a['list'], b['list'])
    assert SANITIZED or b['rss'] <= a['rss'] + 512, \
        f'VmRSS grew from {a["rss"]} to {b["rss"]} KiB'
    assert 'error' not in w.log_text().lower()
    _hello(master)


# ---- 2. the master killed in the middle of a 100 MiB step / a 100 MiB upload ----

def _stdio_logid(master, buildid, step='shell', timeout=30):
    def find():
        for s in master.build_steps(buildid):
            if s['name'] == step:
                for lg in master.step_logs(s['stepid']):
                    if lg['name'] == 'stdio':
                        return lg['logid']
        return None
    return bbmaster.wait_for(find, timeout, f'the stdio log of step {step!r}')


def test_master_killed_during_100mib_output(master, worker_factory, proc_marker, request):
    w = worker_factory(master, name='cw', extra_args=FAST_ARGS)
    pid = w.pid
    base_fds = fd_kinds(pid)
    brid = master.force('bigout', props={'marker': proc_marker})
    request.addfinalizer(lambda: _cancel_request(master, brid))
    build = master.wait_build_started(brid)
    logid = _stdio_logid(master, build['buildid'])
    # about 7 MiB stored: the step is well under way (100 MiB take ~20 s on this master)
    lines = bbmaster.wait_for(lambda: (lambda n: n if n >= 100000 else None)(
        master.log_info(logid)['num_lines']), 60, '100000 lines of output in the master',
        interval=0.05)
    wait_processes(proc_marker, 2)
    off = len(w.log_text())
    t_kill = time.monotonic()
    master.kill()
    bbmaster.wait_no_process(proc_marker, timeout=15)
    t_clean = time.monotonic() - t_kill
    assert 'connection to master lost' in w.log_text()[off:]
    master.start()
    master.wait_worker_connected('cw', timeout=60)
    t_attach = time.monotonic() - t_kill
    print(f'\n[master SIGKILL after {lines} lines of a 100 MiB step] step processes gone '
          f'{t_clean:.2f} s after the kill; attached to the new master {t_attach:.2f} s')
    assert not bbmaster.ps_processes(proc_marker)
    assert w.running() and w.pid == pid, 'cworker crashed or was restarted'
    _hello(master)
    bbmaster.wait_no_process(proc_marker, timeout=15)   # a re-run (if any) exits at once
    wait_fds_back(pid, base_fds)


def test_master_killed_during_100mib_upload(master, worker_factory, tmp_path, request):
    w = worker_factory(master, name='cw', extra_args=FAST_ARGS)
    pid = w.pid
    base_fds = fd_kinds(pid)
    src, dest = tmp_path / 'src', tmp_path / 'dest'
    src.mkdir()
    dest.mkdir()
    big = src / 'big.bin'
    write_random_file(big, 100 * MIB, seed=11)
    brid = master.force('up', props={'src': str(big), 'dest': str(dest / 'big.bin')})
    request.addfinalizer(lambda: _cancel_request(master, brid))
    master.wait_build_started(brid)

    def moved():
        for n in os.listdir(dest):
            try:
                if os.path.getsize(dest / n) >= 10 * MIB:
                    return n
            except FileNotFoundError:
                pass
        return None
    bbmaster.wait_for(moved, 60, '10 MiB uploaded to the master', interval=0.01)
    assert [t for t in fd_targets(pid) if t.startswith(str(big))], 'worker not reading the file'
    off = len(w.log_text())
    t_kill = time.monotonic()
    master.kill()
    # the worker lets go of the file at once
    bbmaster.wait_for(lambda: not [t for t in fd_targets(pid) if t.startswith(str(big))], 10,
                      'cworker to close the file it was uploading')
    t_closed = time.monotonic() - t_kill
    assert 'connection to master lost' in w.log_text()[off:]
    os.unlink(big)  # a re-run of the request after the restart fails at once
    master.start()
    master.wait_worker_connected('cw', timeout=60)
    t_attach = time.monotonic() - t_kill
    print(f'\n[master SIGKILL during a 100 MiB FileUpload] file closed by the worker '
          f'{t_closed:.2f} s after the kill; attached to the new master {t_attach:.2f} s')
    assert w.running() and w.pid == pid, 'cworker crashed or was restarted'
    assert not bbmaster.descendants(pid), 'the worker has child processes'
    _hello(master)
    # a complete upload works afterwards
    small = src / 'small.bin'
    write_random_file(small, 3 * MIB + 5, seed=12)
    b = bbmaster.Build(master, master.wait_build(
        master.force('up', props={'src': str(small), 'dest': str(dest / 'small.bin')}), 60))
    assert b.result == 'SUCCESS', describe_build(b)
    assert (dest / 'small.bin').read_bytes() == small.read_bytes()
    wait_fds_back(pid, base_fds)


# ---- 5. drain: a new build is refused while the running one finishes; --kill-grace ----

def _gate_build_and_sigterm(master, w, proc_marker, flag, request):
    """Force a 'gate' build, wait until its step printed 'start', SIGTERM the worker and
    wait until it drains; -> (brid, build dict)."""
    brid = master.force('gate', props={'marker': proc_marker, 'flag': str(flag)})
    request.addfinalizer(lambda: _cancel_request(master, brid))
    b = master.wait_build_started(brid)
    master.wait_log_contains(b['buildid'], 'shell', 'ostart')
    os.kill(w.pid, signal.SIGTERM)
    bbmaster.wait_for(lambda: 'draining' in w.log_text(), 5, 'cworker to start draining')
    return brid, b


def test_drain_refuses_new_builds(master, worker_factory, proc_marker, tmp_path, request):
    """SIGTERM while a step runs: a build forced in the meantime is refused with the
    worker's 'shutting down' message while the step goes on; then cworker exits 0.
    (cworker-master cannot show the refusal: a second `run` cannot reach a worker whose link
    is held by another cworker-master process, which owns the port.)"""
    w = worker_factory(master, name='cw', extra_args=FAST_ARGS)
    flag = tmp_path / 'go'
    _gate_build_and_sigterm(master, w, proc_marker, flag, request)
    b2 = bbmaster.Build(master, master.wait_build(master.force('hello'), 60))
    print(f'\n[drain] build forced during the drain: {b2.result}\n{describe_build(b2)}')
    assert b2.result == 'EXCEPTION', describe_build(b2)
    assert 'refused: the worker is shutting down' in w.log_text()
    assert 'worker is shutting down; command refused' in describe_build(b2)
    assert w.running(), 'cworker must still drain'
    assert bbmaster.find_processes(proc_marker), 'the running step must go on'
    flag.touch()
    rc = w.proc.wait(30)
    assert rc == 0, f'cworker exit status {rc}'
    assert 'stopping: every command finished' in w.log_text()
    assert not bbmaster.find_processes(proc_marker)


def test_drain_lets_the_running_build_finish(master, worker_factory, proc_marker, tmp_path,
                                             request):
    """The point of draining: the build that runs when SIGTERM comes ends with its own
    result (SUCCESS), not as a lost-connection RETRY that the master schedules again."""
    w = worker_factory(master, name='cw', extra_args=FAST_ARGS)
    flag = tmp_path / 'go'
    brid, b1 = _gate_build_and_sigterm(master, w, proc_marker, flag, request)
    time.sleep(0.5)
    flag.touch()
    rc = w.proc.wait(30)
    assert rc == 0, f'cworker exit status {rc}'
    assert not bbmaster.find_processes(proc_marker)
    b1 = master.wait_build_finished(b1['buildid'], 60)
    tail = [ln for ln in w.log_text().splitlines() if 'command' in ln or 'stopping' in ln
            or 'exited' in ln][-4:]
    print(f'\n[drain] the build that was running when SIGTERM came: {b1.result} '
          f'({b1.state_string!r}); shell step {b1.step("shell").result}; cworker:\n  ' +
          '\n  '.join(tail))
    assert b1.step('shell').result == 'SUCCESS', describe_build(b1)
    assert b1.log('shell').stdout == 'start\nend\n'
    assert b1.result == 'SUCCESS', describe_build(b1)


def test_kill_grace_bounds_the_exit(master, worker_factory, proc_marker, request):
    """--drain-timeout 0 --kill-grace 2: SIGTERM interrupts at once; the step ignores the
    interrupt's SIGTERM (sigtermTime=60), so after 2 s cworker SIGKILLs its process group
    and exits 0."""
    w = worker_factory(master, name='cw',
                       extra_args=FAST_ARGS + ('--drain-timeout', '0', '--kill-grace', '2'))
    brid = master.force('trapper', props={'marker': proc_marker})
    request.addfinalizer(lambda: _cancel_request(master, brid))
    build = master.wait_build_started(brid)
    master.wait_log_contains(build['buildid'], 'shell', 'ostarted')
    wait_processes(proc_marker, 2)
    t0 = time.monotonic()
    os.kill(w.pid, signal.SIGTERM)
    time.sleep(1)
    assert bbmaster.find_processes(proc_marker), 'SIGTERM is ignored by the step'
    rc = w.proc.wait(20)
    dt = time.monotonic() - t0
    print(f'\n[--kill-grace 2, step ignoring SIGTERM] cworker exit {rc} after {dt:.2f} s')
    assert rc == 0
    assert 1.8 < dt < 8, dt
    assert 'killing their process groups' in w.log_text()
    assert not bbmaster.find_processes(proc_marker)
    b = master.wait_build_finished(build['buildid'], 60)
    print(f'  the build: {b.result} ({b.state_string!r})')


# ---- 7. a link that black-holes traffic (TCP proxy) ----

class _ViaProxy:
    """The master as a worker sees it through the proxy: only the port differs."""

    def __init__(self, master, proxy):
        self._master = master
        self.msgpack_port = proxy.port

    def worker_port(self, protocol=None):
        return self.msgpack_port

    def __getattr__(self, name):
        return getattr(self._master, name)


DEAD_TIMEOUT = 4


def test_blackholed_link_detected_and_recovered(master, worker_factory):
    # (master SIGSTOPped longer than --dead-timeout: test_lifecycle.py
    #  ::test_master_frozen_dead_link_timeout)
    proxy = BlackholeProxy(master.worker_port())
    try:
        w = worker_factory(_ViaProxy(master, proxy), name='cw',
                           extra_args=FAST_ARGS + ('--dead-timeout', str(DEAD_TIMEOUT),
                                                   '--ping-interval', '1'))
        pid = w.pid
        _hello(master)
        off = len(w.log_text())
        n = _attaches(w)
        t_hole = time.time()
        proxy.blackhole()
        bbmaster.wait_for(lambda: 'link dead' in w.log_text()[off:], DEAD_TIMEOUT + 10,
                          'cworker to declare the link dead')
        line = mastercli.first_line(w.log_text()[off:], 'link dead')
        detect = mastercli.log_time(line) - t_hole
        master_sees = master.worker_connected('cw')
        # keep it black-holed a while: reconnect attempts go into the hole too
        time.sleep(2)
        assert w.running() and w.pid == pid
        t_resume = time.monotonic()
        closed = proxy.resume()
        master.wait_worker_connected('cw', timeout=60)
        bbmaster.wait_for(lambda: _attaches(w) > n, 30, 'cworker to attach again')
        t_back = time.monotonic() - t_resume
        print(f'\n[black-holed link, --dead-timeout {DEAD_TIMEOUT} --ping-interval 1] detected '
              f'after {detect:.2f} s: {line}\n  master still listed the worker as connected '
              f'at that time: {master_sees}; {proxy.dropped_bytes} bytes dropped; '
              f'{closed} poisoned connection(s) closed on resume; attached again '
              f'{t_back:.2f} s after forwarding resumed')
        # the timeout runs from the last byte received, which may precede the hole by up to
        # the ping interval (1 s): the log line says how long the silence was
        silent = float(re.search(r'nothing received for ([0-9.]+) s', line).group(1))
        assert silent >= DEAD_TIMEOUT - 0.05, line
        assert DEAD_TIMEOUT - 1.5 <= detect <= DEAD_TIMEOUT + 2, detect
        assert w.running() and w.pid == pid
        _hello(master)
    finally:
        proxy.close()
