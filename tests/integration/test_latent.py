"""cworker as a latent worker: the master starts a worker process for each build and stops it
afterwards, the way Buildbot's Docker and Kubernetes latent workers start a container.

The test's master.cfg defines `ProcessLatentWorker`, a small driver built on Buildbot 3.7's
`AbstractLatentWorker`:

* `start_instance` spawns the worker with the official container image's variables
  (BUILDMASTER, BUILDMASTER_PORT, WORKERNAME, WORKERPASS, BUILDMASTER_PROTOCOL,
  BUILDBOT_BASEDIR), as DockerLatentWorker's `createEnvironment` passes them to a container.
  cworker reads them itself; the stock worker runs a buildbot.tac that reads them, as the
  official image's does.
* a worker that exits before it attached fails the substantiation at once (newer Buildbot
  polls `check_instance` for an exited container every 10 s; 3.7 has no such hook);
* `stop_instance` does what `docker stop` does after the master let go: the master closes the
  link (build_wait_timeout=0: right after the build), then SIGTERM, then SIGKILL 10 s later.

Asserted: builds pass (cworker and the stock worker over PB, cworker over msgpack); the worker
exits cleanly when stopped (cworker: status 0, without SIGKILL; nothing it started is left); a
worker pointed at a port nobody listens on gives up after --max-retries (maxRetries for the
stock worker) and the build ends RETRY or EXCEPTION within seconds instead of waiting for
missing_timeout.  Measured and printed, never asserted: from the build request to the first
step's command running, and from the end of the build to the worker process gone.

Marked `slow`: the per-protocol passes of scripts/check leave it out (it chooses its protocols
itself); scripts/check's image stage runs it.
"""

import json
import os
import statistics
import time

import pytest

import bbmaster
from cwhelpers import describe_build

pytestmark = pytest.mark.slow

BUILDS_PER_KIND = 3
KINDS = {  # id: (worker kind, protocol)
    'cworker-pb': ('cworker', 'pb'),
    'stock-pb': ('stock', 'pb'),
    'cworker-msgpack': ('cworker', 'msgpack'),
}
BAD_RETRIES = 3
TIMINGS = {}  # id -> {'first_step': [...], 'gone': [...], ...}, printed by the last test

# The first step stamps the moment its command runs (the workers run on this machine: one clock).
STAMP = "[steps.ShellCommand(name='stamp', logEnviron=False, command=['sh', '-c', 'date +%s.%N'])]"

# The stock worker's buildbot.tac, reading the variables the way the official image's does
# (written for this test; the image keeps its own in the buildbot repository).
STOCK_TAC = '''\
import fnmatch
import os
import sys

from twisted.application import service
from twisted.python.log import FileLogObserver, ILogObserver

from buildbot_worker.bot import Worker

basedir = os.environ.get('BUILDBOT_BASEDIR', os.path.abspath(os.path.dirname(__file__)))
application = service.Application('buildbot-worker')
application.setComponent(ILogObserver, FileLogObserver(sys.stdout).emit)
passwd = os.environ.get('WORKERPASS')
patterns = os.environ.get('WORKER_ENVIRONMENT_BLACKLIST', 'WORKERPASS').split()
for var in list(os.environ):
    if any(fnmatch.fnmatch(var, p) for p in patterns):
        del os.environ[var]
Worker(os.environ.get('BUILDMASTER', 'localhost'), int(os.environ.get('BUILDMASTER_PORT', 9989)),
       os.environ.get('WORKERNAME', 'docker'), passwd, basedir, 600, umask=None, maxdelay=300,
       protocol=os.environ.get('BUILDMASTER_PROTOCOL', 'pb'),
       maxRetries=int(os.environ.get('TEST_MAXRETRIES', 10))).setServiceParent(application)
'''

# The latent-worker driver, placed in master.cfg before the builders (Master's head_cfg).
DRIVER = r'''
import json as _json
import os as _os
import time as _time

from twisted.internet import defer as _defer, protocol as _protocol, reactor as _reactor
from twisted.python import failure as _failure
from buildbot.interfaces import LatentWorkerFailedToSubstantiate
from buildbot.worker.latent import AbstractLatentWorker, States as _States


class _WorkerProcess(_protocol.ProcessProtocol):
    """Tells when the worker process has ended, and how."""

    def __init__(self):
        self.done = None          # (exit code or None, signal or None) once ended
        self._waiters = []

    def processEnded(self, reason):
        self.done = (getattr(reason.value, 'exitCode', None), getattr(reason.value, 'signal', None))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.done)

    def wait(self):
        if self.done is not None:
            return _defer.succeed(self.done)
        d = _defer.Deferred()
        self._waiters.append(d)
        return d


class ProcessLatentWorker(AbstractLatentWorker):
    """Starts `argv` with `env` in `cwd` for each build; stops it like `docker stop` does."""

    proc = None
    pp = None

    def checkConfig(self, name, password, argv=None, env=None, cwd=None, stamps=None,
                    kill_after=10, **kwargs):
        super().checkConfig(name, password, **kwargs)

    def reconfigService(self, name, password, argv=None, env=None, cwd=None, stamps=None,
                        kill_after=10, **kwargs):
        self.argv, self.env, self.cwd = argv, env, cwd
        self.stamps, self.kill_after = stamps, kill_after
        return super().reconfigService(name, password, **kwargs)

    def _stamp(self, event, **kw):
        kw.update(worker=self.name, event=event, t=_time.time())
        with open(self.stamps, 'a') as f:
            f.write(_json.dumps(kw) + '\n')

    def start_instance(self, build):
        self._stamp('start_instance')
        pp = _WorkerProcess()
        null = _os.open('/dev/null', _os.O_RDONLY)
        log = _os.open(_os.path.join(self.cwd, 'worker.log'),
                       _os.O_WRONLY | _os.O_CREAT | _os.O_APPEND, 0o644)
        try:
            proc = _reactor.spawnProcess(pp, self.argv[0], self.argv, env=self.env, path=self.cwd,
                                         childFDs={0: null, 1: log, 2: log})
        finally:
            _os.close(null)
            _os.close(log)
        self.proc, self.pp = proc, pp
        self._stamp('spawned', pid=proc.pid)
        pp.wait().addCallback(self._ended, pp)
        return True

    def _ended(self, done, pp):
        self._stamp('exited', status=done[0], signal=done[1])
        if pp is self.pp and self.conn is None and self.state == _States.SUBSTANTIATING_STARTING:
            # the container is gone before its worker attached: fail now rather than at
            # missing_timeout (what newer Buildbot's check_instance does, every 10 s)
            self.proc = self.pp = None
            self.stopMissingTimer()
            self._substantiation_failed(_failure.Failure(LatentWorkerFailedToSubstantiate(
                self.name, f'worker exited (status {done[0]}, signal {done[1]}) before attaching')))

    def attached(self, conn):
        self._stamp('attached')
        return super().attached(conn)

    def buildFinished(self, wfb):
        self._stamp('build_finished')
        return super().buildFinished(wfb)

    @_defer.inlineCallbacks
    def stop_instance(self, fast=False):
        proc, pp = self.proc, self.pp
        self.proc = self.pp = None
        self._stamp('stop_instance')
        if proc is None or pp.done is not None:
            return
        # the master closes the link (_soft_disconnect runs disconnect() beside us) ...
        for _ in range(100):
            if self.conn is None:
                break
            d = _defer.Deferred()
            _reactor.callLater(0.05, d.callback, None)
            yield d
        self._stamp('link_closed', closed=self.conn is None)
        # ... then SIGTERM, and SIGKILL after kill_after seconds, as `docker stop` does
        proc.signalProcess('TERM')
        self._stamp('sigterm')
        killed = []

        def kill():
            if pp.done is None:
                killed.append(True)
                self._stamp('sigkill')
                proc.signalProcess('KILL')
        timer = _reactor.callLater(self.kill_after, kill)
        yield pp.wait()
        if timer.active():
            timer.cancel()
        self._stamp('stopped', killed=bool(killed))
'''

WORKER_DEF = '''\
c['workers'].append(ProcessLatentWorker({name!r}, {password!r}, argv={argv!r}, env={env!r},
                                        cwd={cwd!r}, stamps={stamps!r}, build_wait_timeout=0))
'''


@pytest.fixture(scope='module')
def latent(master_factory, cworker_bin, tmp_path_factory):
    """(master, {id: {'name', 'builder', 'marker', 'cwd'}}): one latent worker and one builder
    per kind, plus two whose workers dial a port nobody listens on."""
    root = tmp_path_factory.mktemp('latent')
    stamps = str(root / 'stamps.jsonl')
    msgpack_port, pb_port, dead_port = bbmaster.free_port(), bbmaster.free_port(), bbmaster.free_port()
    while len({msgpack_port, pb_port, dead_port}) < 3:
        dead_port = bbmaster.free_port()
    ports = {'pb': pb_port, 'msgpack': msgpack_port}
    specs = dict(KINDS)
    specs.update({'cworker-badport': ('cworker', 'pb'), 'stock-badport': ('stock', 'pb')})
    workers, head = {}, [DRIVER]
    for wid, (kind, protocol) in specs.items():
        name = f'lat-{wid}'
        cwd = root / wid
        cwd.mkdir()
        marker = bbmaster.unique_marker('latent')
        bad = wid.endswith('badport')
        env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'HOME': str(cwd),
               'CW_LATENT_MARKER': marker,
               'BUILDMASTER': '127.0.0.1',
               'BUILDMASTER_PORT': str(dead_port if bad else ports[protocol]),
               'BUILDMASTER_PROTOCOL': 'pb' if protocol == 'pb' else 'msgpack_experimental_v7',
               'WORKERNAME': name, 'WORKERPASS': f'pw-{wid}', 'BUILDBOT_BASEDIR': str(cwd)}
        if kind == 'cworker':
            # the image sets CWORKER_MAX_RETRIES=10; fewer keeps the failure test short
            env['CWORKER_MAX_RETRIES'] = str(BAD_RETRIES if bad else 10)
            argv = [cworker_bin]
        else:
            env['TEST_MAXRETRIES'] = str(BAD_RETRIES if bad else 10)
            (cwd / 'buildbot.tac').write_text(STOCK_TAC)
            argv = [bbmaster.PYTHON, '-c', 'from twisted.scripts import twistd; twistd.run()',
                    '--nodaemon', '--pidfile=', '--python=buildbot.tac']
        head.append(WORKER_DEF.format(name=name, password=f'pw-{wid}', argv=argv, env=env,
                                      cwd=str(cwd), stamps=stamps))
        workers[wid] = {'name': name, 'builder': f'b-{wid}', 'marker': marker, 'cwd': str(cwd),
                        'kind': kind}
    builders = {w['builder']: {'steps': STAMP, 'workernames': [w['name']]}
                for w in workers.values()}
    m = master_factory(builders, workers=(), head_cfg='\n'.join(head), msgpack_port=msgpack_port,
                       pb_port=pb_port)
    m.stamps_path = stamps
    yield m, workers
    for w in workers.values():
        bbmaster.kill_processes(w['marker'])


def _stamps(master, name):
    try:
        with open(master.stamps_path) as f:
            return [e for e in map(json.loads, f) if e['worker'] == name]
    except FileNotFoundError:
        return []


def _wait_event(master, name, event, count, timeout):
    return bbmaster.wait_for(
        lambda: (lambda es: es if len(es) >= count else None)(
            [e for e in _stamps(master, name) if e['event'] == event]),
        timeout, f'{count} {event!r} events of {name}')[count - 1]


def _dump(master, w):
    log = bbmaster.tail(os.path.join(w['cwd'], 'worker.log'), 4000)
    return (f"\n--- stamps ---\n{json.dumps(_stamps(master, w['name']), indent=0)}"
            f"\n--- worker log ---\n{log}\n--- master ---\n{master.log_tail(4000)}")


@pytest.mark.parametrize('wid', list(KINDS))
def test_latent_builds_and_clean_stop(latent, wid):
    master, workers = latent
    w = workers[wid]
    rows = {'first_step': [], 'spawn': [], 'attach': [], 'gone': [], 'sigterm_to_exit': [],
            'status': []}
    for i in range(1, BUILDS_PER_KIND + 1):
        t_request = time.time()
        brid = master.force(w['builder'])
        b = bbmaster.Build(master, master.wait_build(brid, timeout=90))
        assert b.result == 'SUCCESS', describe_build(b) + _dump(master, w)
        t_first = float(b.log('stamp').stdout.strip())
        ev = {e: _wait_event(master, w['name'], e, i, 60)
              for e in ('start_instance', 'spawned', 'attached', 'build_finished', 'sigterm',
                        'exited', 'stopped')}
        closed = [e for e in _stamps(master, w['name']) if e['event'] == 'link_closed'][i - 1]
        assert closed['closed'], ('the master did not close the link before SIGTERM',) + (_dump(master, w),)
        exited, stopped = ev['exited'], ev['stopped']
        if w['kind'] == 'cworker':
            assert (exited['status'], exited['signal']) == (0, None), _dump(master, w)
            assert not stopped['killed'], 'cworker needed SIGKILL' + _dump(master, w)
        else:
            assert exited['signal'] in (None, 15) and not stopped['killed'], _dump(master, w)
        # nothing the worker started outlives it
        bbmaster.wait_no_process(w['marker'], timeout=10)
        rows['first_step'].append(t_first - t_request)
        rows['spawn'].append(ev['spawned']['t'] - t_request)
        rows['attach'].append(ev['attached']['t'] - ev['spawned']['t'])
        rows['gone'].append(exited['t'] - ev['build_finished']['t'])
        rows['sigterm_to_exit'].append(exited['t'] - ev['sigterm']['t'])
        rows['status'].append(exited['status'] if exited['signal'] is None
                              else f"signal {exited['signal']}")
        # sanity bounds only: a test never asserts a speed
        assert 0 < rows['first_step'][-1] < 60 and 0 < rows['gone'][-1] < 60, rows
    TIMINGS[wid] = rows


@pytest.mark.parametrize('wid', ['cworker-badport', 'stock-badport'])
def test_worker_that_cannot_connect_fails_the_build_fast(latent, wid):
    """The worker dials a dead port, gives up after its retries and exits; the master fails
    the substantiation then (RETRY), instead of at missing_timeout."""
    master, workers = latent
    w = workers[wid]
    t0 = time.time()
    brid = master.force(w['builder'])
    try:
        build = bbmaster.wait_for(
            lambda: (lambda bs: bs[0] if bs and bs[0]['complete'] else None)(
                master.builds_for_request(brid)), 60, f'the first build of request {brid} to end')
        took = time.time() - t0
        result = bbmaster.result_name(build['results'])
        assert result in ('RETRY', 'EXCEPTION'), (result, _dump(master, w))
        exited = _wait_event(master, w['name'], 'exited', 1, 10)
        if w['kind'] == 'cworker':
            assert exited['status'] == 1, _dump(master, w)   # --max-retries: exit status 1
        # the stock worker stops its reactor when maxRetries runs out: exit status 0
        assert exited['t'] - t0 < 60
    finally:
        # the request went back to the queue: cancel it before the worker's quarantine ends
        try:
            master.rpc(f'buildrequests/{brid}', 'cancel', reason='test over')
        except bbmaster.HarnessError:
            pass
    bbmaster.wait_no_process(w['marker'], timeout=15)
    TIMINGS[wid] = {'fail': [took], 'exit': [exited['t'] - t0], 'status': [exited['status']],
                    'result': [result]}


def _ms(values):
    return f'{statistics.median(values) * 1000:7.0f} ms' if values else '      -'


def test_timings_side_by_side(capsys):
    """Prints what the tests above measured (run in the same session)."""
    if not any(k in TIMINGS for k in KINDS):
        pytest.skip('the latent build tests did not run in this session')
    lines = [f'latent workers, median of {BUILDS_PER_KIND} builds each (this machine, '
             f'{os.cpu_count()} CPUs):',
             f"{'':16} {'request->1st step':>18} {'request->spawn':>15} {'spawn->attach':>14} "
             f"{'build end->gone':>16} {'SIGTERM->exit':>14}  exit status"]
    for wid in KINDS:
        r = TIMINGS.get(wid)
        if r:
            lines.append(f"{wid:16} {_ms(r['first_step']):>18} {_ms(r['spawn']):>15} "
                         f"{_ms(r['attach']):>14} {_ms(r['gone']):>16} "
                         f"{_ms(r['sigterm_to_exit']):>14}  {sorted(set(map(str, r['status'])))}")
    for wid in ('cworker-badport', 'stock-badport'):
        r = TIMINGS.get(wid)
        if r:
            lines.append(f"{wid:16} dead port, {BAD_RETRIES} retries: worker exited after "
                         f"{r['exit'][0]:.1f} s (status {r['status'][0]}), build "
                         f"{r['result'][0]} after {r['fail'][0]:.1f} s")
    with capsys.disabled():
        print('\n' + '\n'.join(lines))
