"""Run a real (unmodified, Debian 3.7) Buildbot master and workers for integration tests.

Plain Python (standard library only, no pytest), so it can be imported from a
script as well as from the pytest fixtures in conftest.py::

    from bbmaster import Master, StockWorker, CWorker

    with Master('/tmp/m', {'hello': "[steps.ShellCommand(command='echo hello')]"}) as m:
        with StockWorker('/tmp/w', m, 'w1', 'pass1'):
            b = m.run_build('hello')
            assert b.result == 'SUCCESS'
            assert b.log('shell').stdout == 'hello\\n'

Everything listens on 127.0.0.1 only, on ephemeral ports. Only processes this
module started are ever signalled, always by PID. Anything still running when
the interpreter exits is stopped by an atexit hook, and the processes get
PR_SET_PDEATHSIG so they also go away if the test runner is SIGKILLed.

Logs are read back from the master's SQLite database (see `Master.iter_log_bytes`);
README.md in this directory explains why and gives timings.
"""

import atexit
import bz2
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The Debian buildbot packages live in the system interpreter; the `python3` first
# on PATH may be a different one (pyenv), so everything is run with this one.
PYTHON = os.environ.get('BB_PYTHON') or (
    '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable)
BUILDBOT = os.environ.get('BB_BUILDBOT') or (shutil.which('buildbot', path='/usr/bin') or 'buildbot')
BUILDBOT_WORKER = os.environ.get('BB_BUILDBOT_WORKER') or (
    shutil.which('buildbot-worker', path='/usr/bin') or 'buildbot-worker')

# The protocol the workers speak in this run: 'msgpack' (msgpack_experimental_v7 over
# WebSocket) or 'pb' (Perspective Broker).  scripts/check runs the integration suite once per
# protocol; a test that is about one protocol passes `protocol=` to the worker itself.
PROTOCOL = os.environ.get('CW_PROTOCOL', 'msgpack')
if PROTOCOL not in ('msgpack', 'pb'):
    raise RuntimeError(f'CW_PROTOCOL={PROTOCOL!r}: expected msgpack or pb')

RESULT_NAMES = ['SUCCESS', 'WARNINGS', 'FAILURE', 'SKIPPED', 'EXCEPTION', 'RETRY', 'CANCELLED']

FORCE_SCHEDULER = 'force'
FORCE_USER = 'Tester <t@example.com>'
FORCE_PROP_SLOTS = 10  # number of AnyPropertyParameter slots on the force scheduler

# logchunks.compressed ids of the 3.7 master (buildbot/db/logs.py COMPRESSION_MODE)
_COMPRESSION_READERS = {0: None, 1: zlib.decompress, 2: bz2.decompress}
try:  # lz4 is optional on the master as well
    import lz4.block as _lz4block  # type: ignore
    _COMPRESSION_READERS[3] = _lz4block.decompress
except ImportError:  # pragma: no cover
    pass


class HarnessError(Exception):
    """Something in the test environment did not behave (timeout, crash, REST error)."""


def result_name(results):
    """Buildbot result code (int or None) -> name ('SUCCESS', ...); None while running."""
    if results is None:
        return None
    if 0 <= results < len(RESULT_NAMES):
        return RESULT_NAMES[results]
    return str(results)


def free_port():
    """An unused TCP port on 127.0.0.1 (the kernel's pick; bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def port_open(port, host='127.0.0.1', timeout=0.2):
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_addresses(port):
    """Local addresses ('127.0.0.1:PORT', '[::]:PORT', ...) with a TCP listener on `port`, from `ss -ltn`."""
    out = subprocess.run(['ss', '-Hltn', f'sport = :{port}'], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def wait_for(predicate, timeout, what, interval=0.05):
    """Poll `predicate()` until it returns a true value (returned); HarnessError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f'timed out after {timeout}s waiting for {what}')
        time.sleep(interval)


def tail(path, nbytes=4000):
    """Last `nbytes` of a text file ('' if missing), for error messages."""
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


# --------------------------------------------------------------------------------------------
# Processes

def unique_marker(prefix='marker'):
    """A fresh string to tag test processes with (command line or environment)."""
    return f'{prefix}-{uuid.uuid4().hex[:12]}'


def _cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
    except OSError:
        return None


def _environ_has(pid, marker):
    try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def find_processes(marker, environ=True):
    """[(pid, command line)] of live processes whose command line contains `marker`,
    or (with environ=True) whose environment contains it.

    Zombies are skipped. Matching the environment catches the children of a
    `sh -c '... # marker'` wrapper too (their own argv lacks the marker), as long as
    the marker is put into the step's env, e.g. env={'CW_MARKER': marker}.
    """
    me = os.getpid()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        try:
            with open(f'/proc/{pid}/stat', 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        state = stat[stat.rfind(b')') + 2:stat.rfind(b')') + 3]
        if state in (b'Z', b'X'):
            continue
        cmd = _cmdline(pid)
        if cmd is None:
            continue
        if marker in cmd or (environ and _environ_has(pid, marker)):
            found.append((pid, cmd))
    return found


def process_tree_alive(marker, environ=True):
    """True if any process tagged with `marker` (see find_processes) is alive."""
    return bool(find_processes(marker, environ))


def ps_processes(marker):
    """Same as find_processes(marker, environ=False) but via `ps -eo pid=,args=` (cross-check)."""
    out = subprocess.run(['ps', '-eo', 'pid=,stat=,args='], capture_output=True, text=True,
                         check=True).stdout
    res = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and marker in parts[2] and not parts[1].startswith('Z'):
            res.append((int(parts[0]), parts[2]))
    return res


def wait_no_process(marker, timeout=10, environ=True):
    """Wait until no process tagged with `marker` is alive; HarnessError listing them otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        procs = find_processes(marker, environ)
        if not procs:
            return
        if time.monotonic() >= deadline:
            raise HarnessError(f'processes tagged {marker!r} still alive after {timeout}s: {procs}')
        time.sleep(0.05)


def kill_processes(marker, sig=signal.SIGKILL, environ=True):
    """Clean-up helper: signal the processes tagged with a test's own unique marker.
    Returns the list that was signalled."""
    procs = find_processes(marker, environ)
    for pid, _ in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return procs


def descendants(pid):
    """PIDs of all live descendants of `pid` (from /proc/*/stat ppid links)."""
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat', 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b')') + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


_libc = None


def _pdeathsig():
    # Runs in the child between fork and exec: die with SIGTERM when the test runner dies.
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


def _clean_env(extra=None):
    env = dict(os.environ)
    # the pyenv interpreter's settings must not leak into /usr/bin/python3
    for k in ('PYTHONHOME', 'PYTHONPATH', 'PYTHONSTARTUP', 'VIRTUAL_ENV'):
        env.pop(k, None)
    # cworker honours the proxy variables: a proxy set on the test machine must not be used
    # to reach the master on loopback (test_proxy.py sets them where it means to)
    for k in ('http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY'):
        env.pop(k, None)
    if extra:
        env.update(extra)
    return env


_live = {}  # id(obj) -> obj with _emergency_stop(), for the atexit hook
_live_lock = threading.Lock()


def _register(obj):
    with _live_lock:
        _live[id(obj)] = obj


def _unregister(obj):
    with _live_lock:
        _live.pop(id(obj), None)


@atexit.register
def stop_all():
    """Stop every master/worker this module started and that is still running."""
    with _live_lock:
        objs = list(_live.values())
    for obj in objs:
        with contextlib.suppress(Exception):
            obj._emergency_stop()


class _Process:
    """One child process started by us; signalled only through its own PID."""

    name = 'process'
    stop_timeout = 20.0

    def __init__(self):
        self.proc = None
        self.started_at = None

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc is not None else None

    def _spawn(self, argv, cwd, logpath, env=None):
        if self.running():
            raise HarnessError(f'{self.name} already running (pid {self.pid})')
        logf = open(logpath, 'ab')
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=_pdeathsig)
        finally:
            logf.close()
        self.started_at = time.monotonic()
        _register(self)
        return self.proc

    def _signal(self, sig):
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self, timeout=None):
        """SIGTERM our PID, wait (bounded), then SIGKILL. Returns the exit status (None if never started)."""
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if self.running():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        _unregister(self)
        return self.proc.returncode

    def kill(self):
        """SIGKILL our PID (crash simulation) and reap it."""
        if self.proc is None:
            return None
        self._signal(signal.SIGKILL)
        self.proc.wait(10)
        _unregister(self)
        return self.proc.returncode

    def _emergency_stop(self):
        self.stop(timeout=5)

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------------------------
# Master

_template_lock = threading.Lock()
_template_dir = None

_STUB_WWW_INIT = '''\
# Stub "buildbot_www" written by tests/integration/bbmaster.py (test harness only).
# The 3.7 www service refuses to start without a 'base' www plugin; Debian ships
# no buildbot-www. This empty app makes /api/v2 work without any UI.
from buildbot.www.plugin import Application
ep = Application(__name__, "stub www for tests", ui=False)
'''

_TAC = '''\
# Written by tests/integration/bbmaster.py (test harness only).
import os
import sys

basedir = {basedir!r}

# Stub buildbot_www plugin (see wwwstub/): must be visible to pkg_resources
# before the master loads its www plugins.
_stub = os.path.join(basedir, 'wwwstub')
sys.path.insert(0, _stub)
import pkg_resources
pkg_resources.working_set.add_entry(_stub)

from twisted.application import service
from twisted.python.log import FileLogObserver, ILogObserver
from twisted.python.logfile import LogFile
from buildbot.master import BuildMaster

rotateLength = 10000000
maxRotatedFiles = 10
application = service.Application('buildmaster')
logfile = LogFile.fromFullPath(os.path.join(basedir, "twistd.log"), rotateLength=rotateLength,
                               maxRotatedFiles=maxRotatedFiles)
application.setComponent(ILogObserver, FileLogObserver(logfile).emit)

m = BuildMaster(basedir, 'master.cfg', None)
m.setServiceParent(application)
m.log_rotation.rotateLength = rotateLength
m.log_rotation.maxRotatedFiles = maxRotatedFiles
'''

_CFG_HEAD = '''\
# -*- python -*-
# Written by tests/integration/bbmaster.py for an integration test. Test harness only.
import re

from buildbot.plugins import schedulers, steps, util, worker

# --- TEST-HARNESS-ONLY tweaks of the stock 3.7 master --------------------------------------
from buildbot.worker.protocols.manager import msgpack as _mp_manager

# 1. The msgpack protocol logs every message (including log and file payloads) as a Python
#    repr in twistd.log (class attribute debug = True); a 100 MiB log would write GBs.
#    Switch that off. This is a setting for the test harness only.
_mp_manager.BuildbotWebSocketServerProtocol.debug = {protocol_debug!r}

# 2. c['protocols'] takes only a port number and listens on every interface. The listen
#    string is built in the msgpack Dispatcher; append an interface to bind loopback only.
#    (master.cfg is re-read on reconfig: wrap only once.)
if not getattr(_mp_manager.Dispatcher, '_harness_loopback', False):
    _orig_dispatcher_init = _mp_manager.Dispatcher.__init__

    def _loopback_dispatcher_init(self, config_portstr, portstr):
        _orig_dispatcher_init(self, config_portstr, portstr)
        if 'interface=' not in self.portstr:
            self.portstr += ':interface=127.0.0.1'

    _mp_manager.Dispatcher.__init__ = _loopback_dispatcher_init
    _mp_manager.Dispatcher._harness_loopback = True
# ---------------------------------------------------------------------------------------------

c = BuildmasterConfig = {{}}
c['title'] = 'cworker-test'
c['buildbotURL'] = 'http://127.0.0.1:{www_port}/'
c['buildbotNetUsageData'] = None
c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
c['protocols'] = {{'msgpack_experimental_v7': {{'port': {msgpack_port}}}}}
c['www'] = {{'port': 'tcp:{www_port}:interface=127.0.0.1', 'plugins': {{}}}}
c['logCompressionMethod'] = {log_compression!r}
c['change_source'] = []
c['services'] = []
# force-build properties may be any string
c['validation'] = {{'property_value': re.compile(r'(?s).*')}}

c['workers'] = [worker.Worker(name, password) for name, password in {workers!r}]
_quarantine = {quarantine!r}
if _quarantine is not None:
    for _w in c['workers']:
        _w.quarantine_initial_timeout = _w.quarantine_timeout = _quarantine

c['builders'] = []
'''

_CFG_BUILDER = '''\
c['builders'].append(util.BuilderConfig(
    name={name!r},
    workernames={workernames!r},
    factory=util.BuildFactory({steps}),
    {kwargs}))
'''

_CFG_TAIL = '''\
c['schedulers'] = [schedulers.ForceScheduler(
    name={sched!r},
    builderNames=[b.name for b in c['builders']],
    properties=[util.AnyPropertyParameter('prop%d' % i) for i in range({slots})])]
'''


def _template_db():
    """Path of a pristine state.sqlite made once per process by `buildbot create-master`
    (that takes ~2.3 s; copying the result is free)."""
    global _template_dir
    with _template_lock:
        if _template_dir is None:
            d = tempfile.mkdtemp(prefix='bbmaster-template-')
            r = subprocess.run([PYTHON, BUILDBOT, 'create-master', '-q', '--db=sqlite:///state.sqlite',
                                os.path.join(d, 'm')], env=_clean_env(), capture_output=True, text=True)
            if r.returncode != 0:
                shutil.rmtree(d, ignore_errors=True)
                raise HarnessError(f'buildbot create-master failed:\n{r.stdout}\n{r.stderr}')
            atexit.register(shutil.rmtree, d, True)
            _template_dir = d
        return os.path.join(_template_dir, 'm', 'state.sqlite')


class Master(_Process):
    """A stock Buildbot 3.7 master in `basedir`, msgpack and REST on 127.0.0.1 only.

    builders: {name: steps} where steps is Python source text of a list of steps,
        evaluated in master.cfg with `steps` and `util` imported, e.g.
        "[steps.ShellCommand(command='echo hello')]"; or {name: {'steps': src,
        'workernames': [...], 'kwargs': "extra BuilderConfig kwargs source"}}.
    workers: [(name, password)]; every builder runs on all of them unless overridden.
    extra_cfg: Python source appended to master.cfg (may change anything in `c`).
    head_cfg: Python source inserted before the builders (e.g. a custom step class they use).
    log_compression: c['logCompressionMethod']; 'raw' (default here, stock is 'gz') spares the
        master zlib -9 on every chunk of a 100 MiB log and makes readback a plain copy.
    quarantine_timeout: None keeps the stock 10 s worker quarantine after an EXCEPTION build;
        a number replaces it (test harness only).
    pb_port: a port number adds c['protocols']['pb'] on tcp:PORT:interface=127.0.0.1 next to
        msgpack; None (default) picks a free one when this run's PROTOCOL is 'pb' and opens no
        PB listener otherwise.
    """

    name = 'master'
    stop_timeout = 20.0

    def __init__(self, basedir, builders, workers=(('w1', 'pass1'),), extra_cfg='', *,
                 log_compression='raw', quarantine_timeout=None, protocol_debug=False,
                 msgpack_port=None, www_port=None, pb_port=None, head_cfg=''):
        super().__init__()
        self.basedir = os.path.abspath(basedir)
        self.builders = dict(builders)
        self.worker_creds = [tuple(w) for w in workers]
        self.extra_cfg = extra_cfg
        self.head_cfg = head_cfg
        self.log_compression = log_compression
        self.quarantine_timeout = quarantine_timeout
        self.protocol_debug = protocol_debug
        self.msgpack_port = msgpack_port or free_port()
        self.www_port = www_port or free_port()
        while self.www_port == self.msgpack_port:
            self.www_port = free_port()
        self.pb_port = pb_port
        if self.pb_port is None and PROTOCOL == 'pb':
            self.pb_port = free_port()
            while self.pb_port in (self.msgpack_port, self.www_port):
                self.pb_port = free_port()
        self._builderids = {}
        self._rpc_id = 0
        # never go through an http_proxy from the environment for 127.0.0.1
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.last_start_seconds = None
        self.last_stop_seconds = None
        self.write_config()

    # ---- files -------------------------------------------------------------------------------

    @property
    def url(self):
        return f'http://127.0.0.1:{self.www_port}/'

    @property
    def api_url(self):
        return f'http://127.0.0.1:{self.www_port}/api/v2/'

    @property
    def db_path(self):
        return os.path.join(self.basedir, 'state.sqlite')

    @property
    def twistd_log(self):
        return os.path.join(self.basedir, 'twistd.log')

    def master_cfg(self):
        """The master.cfg text for the current settings."""
        out = [_CFG_HEAD.format(protocol_debug=self.protocol_debug, www_port=self.www_port,
                                msgpack_port=self.msgpack_port,
                                log_compression=self.log_compression,
                                workers=self.worker_creds, quarantine=self.quarantine_timeout)]
        if self.head_cfg:
            out.append('\n# --- head_cfg ---\n' + self.head_cfg + '\n')
        all_workers = [w[0] for w in self.worker_creds]
        for name, spec in self.builders.items():
            if isinstance(spec, str):
                spec = {'steps': spec}
            out.append(_CFG_BUILDER.format(name=name, workernames=list(spec.get('workernames', all_workers)),
                                           steps=spec['steps'], kwargs=spec.get('kwargs', '')))
        if self.pb_port:
            out.append(f"c['protocols']['pb'] = {{'port': 'tcp:{int(self.pb_port)}:interface=127.0.0.1'}}\n")
        out.append(_CFG_TAIL.format(sched=FORCE_SCHEDULER, slots=FORCE_PROP_SLOTS))
        if self.extra_cfg:
            out.append('\n# --- extra_cfg ---\n' + self.extra_cfg + '\n')
        return '\n'.join(out)

    def write_config(self):
        """(Re)write master.cfg, buildbot.tac and the stub www plugin; copy a fresh DB if none."""
        os.makedirs(self.basedir, exist_ok=True)
        with open(os.path.join(self.basedir, 'master.cfg'), 'w') as f:
            f.write(self.master_cfg())
        with open(os.path.join(self.basedir, 'buildbot.tac'), 'w') as f:
            f.write(_TAC.format(basedir=self.basedir))
        stub = os.path.join(self.basedir, 'wwwstub')
        pkg = os.path.join(stub, 'buildbot_www')
        os.makedirs(os.path.join(pkg, 'static'), exist_ok=True)
        with open(os.path.join(pkg, '__init__.py'), 'w') as f:
            f.write(_STUB_WWW_INIT)
        with open(os.path.join(pkg, 'VERSION'), 'w') as f:
            f.write('0.0.0\n')
        with open(os.path.join(pkg, 'static', 'index.html'), 'w') as f:
            f.write('<html><body>REST only: /api/v2</body></html>\n')
        dist = os.path.join(stub, 'buildbot_www-0.0.0.dist-info')
        os.makedirs(dist, exist_ok=True)
        with open(os.path.join(dist, 'METADATA'), 'w') as f:
            f.write('Metadata-Version: 2.1\nName: buildbot-www\nVersion: 0.0.0\n')
        with open(os.path.join(dist, 'entry_points.txt'), 'w') as f:
            f.write('[buildbot.www]\nbase = buildbot_www:ep\n')
        if not os.path.exists(self.db_path):
            shutil.copyfile(_template_db(), self.db_path)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout=60):
        """Start twistd in the foreground; return once REST answers and the msgpack port accepts."""
        self.write_config()
        self._clear_stale_connections()
        t0 = time.monotonic()
        argv = [PYTHON, '-c', 'from twisted.scripts import twistd; twistd.run()',
                '--no_save', '--nodaemon', '--pidfile=', '--logfile=twistd.log',
                '--python=buildbot.tac']
        log_offset = os.path.getsize(self.twistd_log) if os.path.exists(self.twistd_log) else 0
        self._spawn(argv, self.basedir, os.path.join(self.basedir, 'twistd.stdout'), _clean_env())
        self._builderids = {}
        deadline = t0 + timeout
        while True:
            if not self.running():
                rc = self.proc.returncode
                _unregister(self)
                raise HarnessError(f'master exited with status {rc} during startup\n'
                                   f'--- twistd.log ---\n{self._log_since(log_offset)}\n'
                                   f'--- stdout ---\n{tail(os.path.join(self.basedir, "twistd.stdout"))}')
            if self._rest_ok() and port_open(self.msgpack_port) and \
                    (not self.pb_port or port_open(self.pb_port)):
                break
            if time.monotonic() >= deadline:
                self.stop(timeout=5)
                raise HarnessError(f'master did not come up within {timeout}s\n'
                                   f'--- twistd.log ---\n{self._log_since(log_offset)}')
            time.sleep(0.05)
        self.last_start_seconds = time.monotonic() - t0
        return self

    def worker_port(self, protocol=None):
        """The port a worker of `protocol` (default: this run's) connects to."""
        protocol = protocol or PROTOCOL
        if protocol == 'pb':
            if not self.pb_port:
                raise HarnessError('this master has no PB port (pass pb_port=)')
            return self.pb_port
        return self.msgpack_port

    def _clear_stale_connections(self):
        # Test harness only. A 3.7 master that was SIGKILLed leaves its rows in
        # connected_workers; on restart it reuses the same masterid and its housekeeping only
        # deconfigures workers, so REST would report a dead worker as still connected.
        # A clean stop deletes these rows itself; doing it while the master is down is safe.
        if not os.path.exists(self.db_path):
            return
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            with con:
                con.execute('DELETE FROM connected_workers')
        finally:
            con.close()

    def _log_since(self, offset, limit=6000):
        try:
            with open(self.twistd_log, 'rb') as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return ''
        return data[-limit:].decode('utf-8', 'replace')

    def _rest_ok(self):
        try:
            with self._opener.open(self.api_url + 'masters', timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout=None):
        t0 = time.monotonic()
        rc = super().stop(timeout)
        self.last_stop_seconds = time.monotonic() - t0
        return rc

    def restart(self, timeout=60):
        """stop() then start() on the same ports and database."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, nbytes=4000):
        return tail(self.twistd_log, nbytes)

    def listen_addresses(self):
        """{'msgpack': [...], 'www': [...]} local listening addresses, from `ss`."""
        addrs = {'msgpack': listening_addresses(self.msgpack_port),
                 'www': listening_addresses(self.www_port)}
        if self.pb_port:
            addrs['pb'] = listening_addresses(self.pb_port)
        return addrs

    # ---- REST --------------------------------------------------------------------------------

    def get(self, path, **query):
        """GET /api/v2/<path> -> decoded JSON."""
        url = self.api_url + path.lstrip('/')
        if query:
            url += '?' + urllib.parse.urlencode(query)
        try:
            with self._opener.open(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read().decode('utf-8', 'replace')
            raise HarnessError(f'GET {url}: HTTP {e.code}: {body}') from None

    def _one(self, path, key):
        items = self.get(path)[key]
        return items[0] if items else None

    def rpc(self, path, method, **params):
        """JSON-RPC 2.0 POST to /api/v2/<path>; returns `result` or raises HarnessError."""
        self._rpc_id += 1
        body = json.dumps({'jsonrpc': '2.0', 'method': method, 'params': params,
                           'id': self._rpc_id}).encode()
        url = self.api_url + path.lstrip('/')
        req = urllib.request.Request(url, data=body, method='POST',
                                     headers={'Content-Type': 'application/json'})
        try:
            with self._opener.open(req, timeout=30) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode('utf-8', 'replace')
            raise HarnessError(f'POST {url} {method}: HTTP {e.code}: {text}') from None
        if 'error' in reply:
            raise HarnessError(f'POST {url} {method}: {reply["error"]}')
        return reply.get('result')

    def workers(self):
        """All worker dicts from /api/v2/workers."""
        return self.get('workers')['workers']

    def worker(self, name):
        """The worker dict, or None if the master does not know the worker (yet): right after
        start the REST port answers before the master has created the configured workers'
        rows, and /workers/<name> is then a 404."""
        try:
            return self._one(f'workers/{urllib.parse.quote(name)}', 'workers')
        except HarnessError as e:
            if ': HTTP 404:' in str(e):
                return None
            raise

    def worker_connected(self, name):
        w = self.worker(name)
        return bool(w and w.get('connected_to'))

    def wait_worker_connected(self, name, timeout=30):
        try:
            return wait_for(lambda: self.worker_connected(name), timeout,
                            f'worker {name!r} to connect')
        except HarnessError as e:
            raise HarnessError(f'{e}\n--- master twistd.log ---\n{self.log_tail()}') from None

    def wait_worker_disconnected(self, name, timeout=30):
        return wait_for(lambda: not self.worker_connected(name), timeout,
                        f'worker {name!r} to disconnect')

    def builderid(self, builder):
        if builder not in self._builderids:
            for b in self.get('builders')['builders']:
                self._builderids[b['name']] = b['builderid']
        try:
            return self._builderids[builder]
        except KeyError:
            raise HarnessError(f'no builder {builder!r} on the master '
                               f'(have {sorted(self._builderids)})') from None

    def force(self, builder, props=None, reason='integration test'):
        """Force a build of `builder` (optional string properties); returns the buildrequest id."""
        params = {'builderid': self.builderid(builder), 'reason': reason, 'username': FORCE_USER}
        props = dict(props or {})
        if len(props) > FORCE_PROP_SLOTS:
            raise HarnessError(f'at most {FORCE_PROP_SLOTS} properties per forced build')
        for i, (k, v) in enumerate(props.items()):
            params[f'prop{i}_name'] = str(k)
            params[f'prop{i}_value'] = str(v)
        result = self.rpc(f'forceschedulers/{FORCE_SCHEDULER}', 'force', **params)
        # result = [buildsetid, {"<builderid>": buildrequestid}]
        return int(next(iter(result[1].values())))

    def buildrequest(self, brid):
        return self._one(f'buildrequests/{brid}', 'buildrequests')

    def builds_for_request(self, brid):
        """All builds of a buildrequest (more than one after a RETRY), oldest first."""
        return sorted(self.get(f'buildrequests/{brid}/builds')['builds'], key=lambda b: b['buildid'])

    def wait_build_started(self, brid, timeout=30):
        """Wait until the request has a build; returns that build dict."""
        return wait_for(lambda: (self.builds_for_request(brid) or [None])[-1], timeout,
                        f'a build for buildrequest {brid} to start')

    def wait_build(self, brid, timeout=60):
        """Wait until buildrequest `brid` is complete; returns the last build dict (with 'results')."""
        def done():
            br = self.buildrequest(brid)
            if br and br['complete']:
                builds = self.builds_for_request(brid)
                if not builds:
                    raise HarnessError(f'buildrequest {brid} completed without a build '
                                       f'(results {result_name(br["results"])})')
                if builds[-1]['complete']:
                    return builds[-1]
            return None
        try:
            return wait_for(done, timeout, f'buildrequest {brid} to finish', interval=0.05)
        except HarnessError as e:
            builds = self.builds_for_request(brid)
            raise HarnessError(f'{e}; builds so far: {builds}') from None

    def wait_build_finished(self, buildid, timeout=60):
        """Wait until one particular build is complete (e.g. the RETRY build after a worker
        crash, while its request goes back to the queue); returns a Build."""
        d = wait_for(lambda: (lambda b: b if b and b['complete'] else None)(
            self._one(f'builds/{buildid}', 'builds')), timeout, f'build {buildid} to finish')
        return Build(self, d)

    def build(self, buildid):
        """Build object for an existing build id."""
        return Build(self, self._one(f'builds/{buildid}', 'builds'))

    def build_steps(self, buildid):
        return sorted(self.get(f'builds/{buildid}/steps')['steps'], key=lambda s: s['number'])

    def step_logs(self, stepid):
        return self.get(f'steps/{stepid}/logs')['logs']

    def log_info(self, logid):
        return self._one(f'logs/{logid}', 'logs')

    def wait_step_started(self, buildid, step_name, timeout=30):
        """Wait until step `step_name` of a build has started; returns its dict."""
        def started():
            for s in self.build_steps(buildid):
                if s['name'] == step_name and s.get('started_at'):
                    return s
            return None
        return wait_for(started, timeout, f'step {step_name!r} of build {buildid} to start')

    def wait_log_contains(self, buildid, step_name, text, log_name='stdio', timeout=30):
        """Wait until a (possibly running) step's log contains `text` (raw stored form)."""
        def found():
            for s in self.build_steps(buildid):
                if s['name'] != step_name:
                    continue
                for lg in self.step_logs(s['stepid']):
                    if lg['name'] == log_name and text in self.log_contents_rest(lg['logid']):
                        return lg
            return None
        return wait_for(found, timeout, f'{text!r} in log {log_name!r} of step {step_name!r}',
                        interval=0.1)

    def stop_build(self, buildid, reason='stopped by test'):
        """JSON-RPC stop on /builds/<id>; the build ends CANCELLED."""
        return self.rpc(f'builds/{buildid}', 'stop', reason=reason)

    def run_build(self, builder, timeout=60, props=None):
        """force() + wait_build() -> Build."""
        brid = self.force(builder, props)
        return Build(self, self.wait_build(brid, timeout))

    # ---- logs --------------------------------------------------------------------------------

    def log_contents_rest(self, logid, offset=0, limit=None):
        """Stored log text through REST /logs/<id>/contents (one request; fine for small logs)."""
        q = {'offset': offset}
        if limit is not None:
            q['limit'] = limit
        d = self.get(f'logs/{logid}/contents', **q)['logchunks']
        return d[0]['content'] if d else ''

    def _db(self):
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        return con

    def _log_row(self, con, logid):
        row = con.execute('SELECT type, complete, num_lines FROM logs WHERE id=?', (logid,)).fetchone()
        if row is None:
            raise HarnessError(f'no log {logid} in {self.db_path}')
        return row

    def iter_log_bytes(self, logid, channel=None):
        """Yield the stored content of log `logid` as UTF-8 bytes, chunk by chunk, straight
        from the master's SQLite database (one read transaction = consistent snapshot even
        while the master recompresses the log).

        channel=None: exactly what the master stores, i.e. what REST /contents returns (for
        'stdio' logs every line starts with its channel letter 'o', 'e' or 'h').
        channel='o'/'e'/'h': only the lines of that channel of a stream ('s') log, prefix
        removed, each ending in '\\n'. For text/html logs (no prefixes) channel is ignored.
        """
        con = self._db()
        try:
            con.execute('BEGIN')
            ltype, _complete, _n = self._log_row(con, logid)
            if ltype != 's':
                channel = None
            ch = channel.encode() if channel else None
            others = [b'\n' + c for c in (b'o', b'e', b'h') if c != ch]
            cur = con.execute('SELECT content, compressed FROM logchunks WHERE logid=? '
                              'ORDER BY first_line', (logid,))
            while True:
                rows = cur.fetchmany(64)
                if not rows:
                    break
                for content, compressed in rows:
                    reader = _COMPRESSION_READERS.get(compressed)
                    if compressed and reader is None:
                        raise HarnessError(f'log {logid}: unsupported chunk compression {compressed}')
                    data = reader(content) if reader else bytes(content)
                    # a chunk holds whole lines joined by '\n', without the final '\n'
                    if ch is None:
                        yield data + b'\n'
                    elif data[:1] == ch and not any(o in data for o in others):
                        # fast path: the whole chunk is one channel
                        yield data[1:].replace(b'\n' + ch, b'\n') + b'\n'
                    else:
                        out = [line[1:] + b'\n' for line in data.split(b'\n') if line[:1] == ch]
                        if out:
                            yield b''.join(out)
            con.execute('COMMIT')
        finally:
            con.close()

    def log_bytes(self, logid, channel=None):
        return b''.join(self.iter_log_bytes(logid, channel))

    def log_text(self, logid, channel=None):
        """Stored log content as str. channel=None: raw stored form (channel prefixes kept for
        stdio logs); 'o' / 'e' / 'h': that channel only, prefixes removed, '\\n' line ends."""
        return self.log_bytes(logid, channel).decode('utf-8')

    def log_raw(self, logid):
        return self.log_text(logid, None)

    def log_stdout(self, logid):
        return self.log_text(logid, 'o')

    def log_stderr(self, logid):
        return self.log_text(logid, 'e')

    def log_header(self, logid):
        return self.log_text(logid, 'h')

    def log_digest(self, logid, channel='o'):
        """(sha256 hex, size in bytes) of a log (see iter_log_bytes for `channel`), streamed."""
        h = hashlib.sha256()
        n = 0
        for piece in self.iter_log_bytes(logid, channel):
            h.update(piece)
            n += len(piece)
        return h.hexdigest(), n

    def log_sha256(self, logid, channel='o'):
        return self.log_digest(logid, channel)[0]

    def __repr__(self):
        return (f'<Master {self.basedir} pid={self.pid} msgpack={self.msgpack_port} '
                f'www={self.www_port}>')


class Log:
    """A log of a finished step; content is fetched lazily."""

    def __init__(self, master, d):
        self.master = master
        self.data = d
        self.id = d['logid']
        self.name = d['name']
        self.slug = d['slug']
        self.type = d['type']
        self.num_lines = d['num_lines']

    @property
    def raw(self):
        """Stored text, channel prefixes kept for stdio logs."""
        return self.master.log_text(self.id)

    @property
    def stdout(self):
        return self.master.log_text(self.id, 'o')

    @property
    def stderr(self):
        return self.master.log_text(self.id, 'e')

    @property
    def header(self):
        return self.master.log_text(self.id, 'h')

    def text(self, channel=None):
        return self.master.log_text(self.id, channel)

    def sha256(self, channel='o'):
        return self.master.log_sha256(self.id, channel)

    def digest(self, channel='o'):
        return self.master.log_digest(self.id, channel)

    def __repr__(self):
        return f'<Log {self.name!r} id={self.id} type={self.type} lines={self.num_lines}>'


class Step:
    def __init__(self, master, d):
        self.master = master
        self.data = d
        self.id = d['stepid']
        self.name = d['name']
        self.number = d['number']
        self.results = d['results']
        self.result = result_name(d['results'])
        self.state_string = d['state_string']
        self.logs = {lg['name']: Log(master, lg) for lg in master.step_logs(self.id)}

    def log(self, name='stdio'):
        try:
            return self.logs[name]
        except KeyError:
            raise HarnessError(f'step {self.name!r} has no log {name!r} (has {list(self.logs)})') from None

    def __repr__(self):
        return f'<Step {self.number} {self.name!r} {self.result} {self.state_string!r}>'


class Build:
    """A finished build: .result ('SUCCESS', ...), .steps, .step(name), .log(step, log)."""

    def __init__(self, master, d):
        self.master = master
        self.data = d
        self.id = d['buildid']
        self.number = d['number']
        self.results = d['results']
        self.result = result_name(d['results'])
        self.state_string = d['state_string']
        self._steps = None

    @property
    def steps(self):
        if self._steps is None:
            self._steps = [Step(self.master, s) for s in self.master.build_steps(self.id)]
        return self._steps

    def step(self, name):
        for s in self.steps:
            if s.name == name:
                return s
        raise HarnessError(f'build {self.id} has no step {name!r} (has {[s.name for s in self.steps]})')

    def log(self, step_name, log_name='stdio'):
        return self.step(step_name).log(log_name)

    def describe(self):
        """Multi-line summary (for assertion messages)."""
        lines = [f'build {self.id} #{self.number}: {self.result} ({self.state_string})']
        for s in self.steps:
            lines.append(f'  step {s.number} {s.name}: {s.result} ({s.state_string}) '
                         f'logs={list(s.logs)}')
        return '\n'.join(lines)

    def __repr__(self):
        return f'<Build {self.id} {self.result} {self.state_string!r}>'


# --------------------------------------------------------------------------------------------
# Workers

class _Worker(_Process):
    def wait_connected(self, timeout=30):
        """Wait until the master reports this worker connected; fails early if the worker exits."""
        def check():
            if not self.running():
                raise HarnessError(f'{self.name} {self.worker_name} exited with status '
                                   f'{self.returncode}\n--- {self.name} log ---\n'
                                   f'{self.log_text()[-4000:]}')
            return self.master.worker_connected(self.worker_name)
        try:
            wait_for(check, timeout, f'worker {self.worker_name!r} to connect')
        except HarnessError as e:
            if not self.running():
                raise
            raise HarnessError(f'{e}\n--- {self.name} log ---\n{self.log_text()[-4000:]}\n'
                               f'--- master twistd.log ---\n{self.master.log_tail()}') from None

    def log_text(self):
        try:
            with open(self.logfile, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def descendants(self):
        """PIDs of the live processes below this worker (its build commands)."""
        return descendants(self.pid) if self.running() else []


class StockWorker(_Worker):
    """The stock Python buildbot-worker 3.7 (protocol: 'msgpack' or 'pb'; default PROTOCOL)."""

    name = 'stock worker'

    def __init__(self, basedir, master, name, password, protocol_debug=False, protocol=None):
        super().__init__()
        self.protocol = protocol or PROTOCOL
        self.basedir = os.path.abspath(basedir)
        self.master = master
        self.worker_name = name
        self.password = password
        self.protocol_debug = protocol_debug
        self.logfile = os.path.join(self.basedir, 'twistd.log')
        self._created = False

    def create(self):
        if os.path.exists(os.path.join(self.basedir, 'buildbot.tac')):
            os.remove(os.path.join(self.basedir, 'buildbot.tac'))
        wire = 'msgpack_experimental_v7' if self.protocol == 'msgpack' else 'pb'
        r = subprocess.run([PYTHON, BUILDBOT_WORKER, 'create-worker', '-q',
                            f'--protocol={wire}', self.basedir,
                            f'127.0.0.1:{worker_port(self.master, self.protocol)}',
                            self.worker_name, self.password],
                           env=_clean_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise HarnessError(f'buildbot-worker create-worker failed:\n{r.stdout}\n{r.stderr}')
        with open(os.path.join(self.basedir, 'buildbot.tac'), 'a') as f:
            f.write('\n# Test harness only: the worker logs every msgpack message as a repr;\n'
                    '# a big build log would fill the disk.\n'
                    'from buildbot_worker.msgpack import BuildbotWebSocketClientProtocol\n'
                    f'BuildbotWebSocketClientProtocol.debug = {self.protocol_debug!r}\n')
        self._created = True

    def start(self, wait=True, timeout=30):
        """create-worker (first time), `buildbot-worker start --nodaemon`; optionally wait until
        the master reports the worker connected."""
        if not self._created:
            self.create()
        self._spawn([PYTHON, BUILDBOT_WORKER, 'start', '--nodaemon', self.basedir], self.basedir,
                    os.path.join(self.basedir, 'stdout.log'), _clean_env())
        if wait:
            self.wait_connected(timeout)
        return self


def worker_port(master, protocol):
    """The port of `master` (a Master or a stand-in with .msgpack_port) for `protocol`."""
    wp = getattr(type(master), 'worker_port', None)
    if wp is not None:
        return master.worker_port(protocol)
    if protocol != 'msgpack':
        raise HarnessError(f'{type(master).__name__} stands in for a msgpack master only; '
                           f'give the worker protocol="msgpack"')
    return master.msgpack_port


def default_cworker_bin():
    return os.environ.get('CWORKER_BIN') or os.path.join(REPO_ROOT, 'build', 'src', 'worker', 'cworker')


class CWorker(_Worker):
    """The C worker: `<bin> --master 127.0.0.1:PORT --protocol P --name N --basedir D
    --password-file F` (protocol: 'msgpack' or 'pb'; default PROTOCOL)."""

    name = 'cworker'

    def __init__(self, basedir, master, name, password, binary=None, extra_args=(), env=None,
                 protocol=None):
        super().__init__()
        self.protocol = protocol or PROTOCOL
        self.basedir = os.path.abspath(basedir)
        self.master = master
        self.worker_name = name
        self.password = password
        self.binary = binary or default_cworker_bin()
        self.extra_args = list(extra_args)
        self.env = env
        self.logfile = os.path.join(self.basedir, 'cworker.log')
        self.password_file = os.path.join(self.basedir, 'password')

    def argv(self):
        return [self.binary, '--master', f'127.0.0.1:{worker_port(self.master, self.protocol)}',
                '--protocol', self.protocol, '--name', self.worker_name, '--basedir', self.basedir,
                '--password-file', self.password_file] + self.extra_args

    def start(self, wait=True, timeout=30):
        if not os.access(self.binary, os.X_OK):
            raise HarnessError(f'cworker binary not found or not executable: {self.binary} '
                               '(build it, or set CWORKER_BIN)')
        os.makedirs(self.basedir, exist_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(self.password)
        os.chmod(self.password_file, 0o600)
        self._spawn(self.argv(), self.basedir, self.logfile, _clean_env(self.env))
        if wait:
            self.wait_connected(timeout)
        return self


def make_worker(kind, basedir, master, name='w1', password='pass1', **kw):
    """'stock' -> StockWorker, 'cworker' -> CWorker (extra kwargs go to the class)."""
    if kind == 'stock':
        return StockWorker(basedir, master, name, password, **kw)
    if kind == 'cworker':
        return CWorker(basedir, master, name, password, **kw)
    raise ValueError(f'unknown worker kind {kind!r}')

