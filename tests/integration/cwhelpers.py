"""Shared helpers for the cworker integration tests (test_shell.py, test_output.py,
test_lifecycle.py). Not a test module itself.

* `per_kind(builders, kinds)`: one builder per worker kind, each bound to that kind's
  worker name, so a cworker and a stock worker can stay attached to the same master
  at the same time and every build lands on the worker the test asked for.
* `WorkerPool`: module-scoped workers (started lazily, restarted if one died), so one
  master and one worker serve every test of a module.
* `dump_worker_logs`: an autouse fixture (import it into a test module) that prints the
  part of each pool worker's log written during a failed test, plus the master log tail.
* small process/timing helpers: `proc_cpu_seconds`, `proc_peak_rss_kib`, `elapsed_header`.
"""

import os
import re

import pytest

import bbmaster

WORKER_NAMES = {'cworker': 'cw', 'stock': 'stock'}
WORKER_CREDS = (('cw', 'cwpass'), ('stock', 'stockpass'))

_POOL_WORKERS = []  # every worker a WorkerPool started (for dump_worker_logs)


def builder_name(kind, name):
    return name if kind == 'cworker' else f'{name}-{kind}'


def per_kind(builders, kinds=('cworker',)):
    """{name: steps_src} -> master builders dict with one builder per kind in `kinds`
    (cworker keeps the plain name, others get a '-<kind>' suffix)."""
    out = {}
    for name, spec in builders.items():
        if isinstance(spec, str):
            spec = {'steps': spec}
        for kind in kinds:
            d = dict(spec)
            d['workernames'] = [WORKER_NAMES[kind]]
            out[builder_name(kind, name)] = d
    return out


class WorkerPool:
    """Lazily started workers of a module, one per kind, named as in WORKER_NAMES."""

    def __init__(self, master, basedir_factory, cworker_bin, cworker_env=None,
                 cworker_args=()):
        self.master = master
        self.basedir_factory = basedir_factory
        self.cworker_bin = cworker_bin
        self.cworker_env = cworker_env
        self.cworker_args = tuple(cworker_args)
        self.workers = {}

    def worker(self, kind='cworker'):
        """The running, connected worker of `kind` (started or restarted as needed)."""
        w = self.workers.get(kind)
        if w is None:
            name = WORKER_NAMES[kind]
            pw = dict(WORKER_CREDS)[name]
            basedir = str(self.basedir_factory(f'{kind}-pool'))
            if kind == 'cworker':
                w = bbmaster.CWorker(basedir, self.master, name, pw, binary=self.cworker_bin,
                                     env=self.cworker_env, extra_args=self.cworker_args)
            else:
                w = bbmaster.StockWorker(basedir, self.master, name, pw)
            self.workers[kind] = w
            _POOL_WORKERS.append(w)
        if not w.running():
            w.start(timeout=60)
        elif not self.master.worker_connected(w.worker_name):
            w.wait_connected(60)
        return w

    def builder(self, kind, name):
        return builder_name(kind, name)

    def force(self, kind, name, props=None):
        self.worker(kind)
        return self.master.force(self.builder(kind, name), props)

    def run(self, kind, name, props=None, timeout=60):
        """Force a build of `name` on the `kind` worker and wait for it -> Build."""
        brid = self.force(kind, name, props)
        return bbmaster.Build(self.master, self.master.wait_build(brid, timeout))

    def workdir(self, kind, name):
        """The step workdir the master computes for builder `name` (default 'build')."""
        return os.path.join(self.worker(kind).basedir, self.builder(kind, name), 'build')

    def stop(self):
        for w in self.workers.values():
            w.stop()
            if w in _POOL_WORKERS:
                _POOL_WORKERS.remove(w)


@pytest.fixture(autouse=True)
def dump_worker_logs(request):
    """On failure, print what each pool worker logged during the test, and the master log."""
    offsets = {}
    for w in list(_POOL_WORKERS):
        try:
            offsets[id(w)] = os.path.getsize(w.logfile)
        except OSError:
            offsets[id(w)] = 0
    yield
    node = request.node
    failed = any(getattr(node, 'rep_' + p, None) is not None and getattr(node, 'rep_' + p).failed
                 for p in ('setup', 'call'))
    if not failed:
        return
    masters = {}
    for w in list(_POOL_WORKERS):
        try:
            with open(w.logfile, 'rb') as f:
                f.seek(offsets.get(id(w), 0))
                text = f.read()[-8000:].decode('utf-8', 'replace')
        except OSError:
            text = ''
        print(f'\n===== {w.name} {w.worker_name} log during the test ({w.logfile}) =====\n{text}')
        masters[id(w.master)] = w.master
    for m in masters.values():
        print(f'\n===== master log tail ({m.twistd_log}) =====\n{m.log_tail(4000)}')


# ---- small helpers ---------------------------------------------------------------------------

_CLK_TCK = os.sysconf('SC_CLK_TCK')


def proc_cpu_seconds(pid):
    """utime + stime of `pid` in seconds (from /proc/<pid>/stat)."""
    with open(f'/proc/{pid}/stat', 'rb') as f:
        stat = f.read()
    fields = stat[stat.rfind(b')') + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_status_kib(pid, key):
    """A 'kB' value of /proc/<pid>/status (e.g. 'VmHWM', 'VmRSS'), in KiB."""
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    return None


def proc_peak_rss_kib(pid):
    return proc_status_kib(pid, 'VmHWM')


_ELAPSED_RE = re.compile(r'elapsedTime=([0-9.]+)')


def elapsed_header(header):
    """The worker's `elapsedTime=S.ffffff` from a stdio header (float), or None."""
    m = _ELAPSED_RE.search(header)
    return float(m.group(1)) if m else None


def wait_processes(marker, count, timeout=20):
    """Wait until at least `count` processes are tagged with `marker`; returns them."""
    return bbmaster.wait_for(lambda: (lambda p: p if len(p) >= count else None)(
        bbmaster.find_processes(marker)), timeout, f'{count} processes tagged {marker!r}')
