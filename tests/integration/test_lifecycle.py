"""cworker connection lifecycle against the real 3.7 master: attach latency, password from
the environment, master restart while idle, master SIGKILLed during a step, master frozen
(SIGSTOP) during a step so that only the worker's dead-link timeout can notice."""

import os
import signal
import time

import pytest

import bbmaster
from cwhelpers import (WORKER_CREDS, dump_worker_logs, per_kind, proc_status_kib,  # noqa: F401
                       wait_processes)

# The command guards against a re-run: after a master crash 3.7 may put the interrupted
# request back in the queue; the re-run sees the flag file and exits at once.
SLEEPER = ("[steps.ShellCommand(command=util.Interpolate("
           "'if [ -e flag-%(prop:marker)s ]; then echo rerun; exit 0; fi; "
           "touch flag-%(prop:marker)s; echo started; sleep 1000 # %(prop:marker)s'), "
           "env={'CW_MARKER': util.Property('marker')})]")

BUILDERS = {
    'hello': "[steps.ShellCommand(command='echo hello world')]",
    'sleeper': SLEEPER,
}


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(per_kind(BUILDERS), workers=WORKER_CREDS, quarantine_timeout=1)


def _hello(master):
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', b.describe()
    assert b.log('shell').stdout == 'hello world\n'


class EnvPasswordCWorker(bbmaster.CWorker):
    """cworker started without --password-file: the password comes from CWORKER_PASSWORD."""

    def argv(self):
        argv = super().argv()
        i = argv.index('--password-file')
        return argv[:i] + argv[i + 2:]


def test_spawn_to_attached_latency(master, worker_factory):
    w = worker_factory(master, name='cw', start=False)
    t0 = time.monotonic()
    w.start(wait=False)
    w.wait_connected(30)
    dt = time.monotonic() - t0
    print(f'\n  cworker spawn -> listed connected by the master (REST): {dt * 1000:.0f} ms')
    _hello(master)


def test_password_from_environment(master, tmp_path, cworker_bin):
    pw = dict(WORKER_CREDS)['cw']
    w = EnvPasswordCWorker(str(tmp_path / 'envpw'), master, 'cw', 'unused-file-password',
                           binary=cworker_bin, env={'CWORKER_PASSWORD': pw})
    assert '--password-file' not in w.argv()
    try:
        w.start(timeout=30)
        _hello(master)
        assert pw not in w.log_text()
    finally:
        w.stop()
        master.wait_worker_disconnected('cw', 15)


def test_master_restart_while_idle(master, worker_factory):
    w = worker_factory(master, name='cw')
    master.restart()
    t0 = time.monotonic()
    master.wait_worker_connected('cw', timeout=60)
    dt = time.monotonic() - t0
    print(f'\n  cworker re-attached {dt:.2f} s after the restarted master was up '
          f'(master stop {master.last_stop_seconds:.2f} s, start {master.last_start_seconds:.2f} s)')
    assert dt < 20, f'worker took {dt:.1f} s to re-attach'
    assert w.running()
    _hello(master)


def test_master_killed_during_step(master, worker_factory, proc_marker):
    w = worker_factory(master, name='cw', extra_args=('--dead-timeout', '5'))
    brid = master.force('sleeper', props={'marker': proc_marker})
    build = master.wait_build_started(brid)
    wait_processes(proc_marker, 2)
    master.wait_log_contains(build['buildid'], 'shell', 'ostarted')
    t_kill = time.monotonic()
    master.kill()
    master.start()
    master.wait_worker_connected('cw', timeout=60)
    t_attach = time.monotonic() - t_kill
    bbmaster.wait_no_process(proc_marker, timeout=15)
    assert not bbmaster.ps_processes(proc_marker)
    t_clean = time.monotonic() - t_kill
    print(f'\n  master SIGKILL -> cworker attached to the new master {t_attach:.2f} s; '
          f'-> no process of the step left {t_clean:.2f} s')
    assert w.running()
    _hello(master)


def test_master_frozen_dead_link_timeout(master, worker_factory, proc_marker):
    # SIGSTOP keeps the master's socket open and silent (no FIN, no RST): only the worker's
    # dead-link timeout can notice. The step's processes must go when the link is dropped.
    w = worker_factory(master, name='cw', extra_args=('--dead-timeout', '5'))
    brid = master.force('sleeper', props={'marker': proc_marker})
    build = master.wait_build_started(brid)
    wait_processes(proc_marker, 2)
    master.wait_log_contains(build['buildid'], 'shell', 'ostarted')
    t_stop = time.monotonic()
    os.kill(master.pid, signal.SIGSTOP)
    try:
        bbmaster.wait_no_process(proc_marker, timeout=30)
        t_gone = time.monotonic() - t_stop
    finally:
        master.kill()  # SIGKILL also ends a stopped process
    print(f'\n  master frozen (SIGSTOP) -> step processes gone after {t_gone:.2f} s '
          f'(--dead-timeout 5)')
    assert t_gone < 20
    master.start()
    master.wait_worker_connected('cw', timeout=60)
    bbmaster.wait_no_process(proc_marker, timeout=15)
    assert not bbmaster.ps_processes(proc_marker)
    assert w.running()
    _hello(master)


def _idle_trims(w):
    return [ln for ln in w.log_text().splitlines() if 'idle: RSS' in ln]


def test_idle_worker_gives_back_unused_pages(master, worker_factory):
    """Attached and idle for 2 s, the worker drops the code pages and heap it does not use
    (src/base/memtrim.c); it then runs builds as before, and trims again once idle again."""
    w = worker_factory(master, name='cw', extra_args=('--verbose',))
    deadline = time.monotonic() + 15
    while not _idle_trims(w) and time.monotonic() < deadline:
        time.sleep(0.2)
    trims = _idle_trims(w)
    assert trims, 'no idle trim logged within 15 s of attaching'
    # "idle: RSS A -> B KiB (N mappings dropped, K kept)"
    words = trims[0].split('idle: RSS ')[1].split()
    before, after, dropped = int(words[0]), int(words[2]), int(words[4].lstrip('('))
    print(f'\n  idle trim: VmRSS {before} -> {after} KiB, {dropped} mappings dropped; '
          f'now {proc_status_kib(w.pid, "VmRSS")} KiB')
    assert dropped > 0 and after < before, trims[0]
    for _ in range(2):
        _hello(master)
    deadline = time.monotonic() + 15
    while len(_idle_trims(w)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_idle_trims(w)) >= 2, 'no idle trim after the builds'
    assert w.running()
    _hello(master)
