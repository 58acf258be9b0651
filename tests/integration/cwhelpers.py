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
* `describe_build`: Build.describe() plus the master's exception text (for assertion messages).
* file helpers for the transfer tests: `write_random_file`, `sha256_file`, `tree_snapshot`,
  `assert_same_tree`, `leftovers`.
"""

import fnmatch
import hashlib
import os
import random
import re
import stat

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
                 cworker_args=(), protocol=None):
        self.master = master
        self.protocol = protocol  # None: this run's (bbmaster.PROTOCOL)
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
                                     env=self.cworker_env, extra_args=self.cworker_args,
                                     protocol=self.protocol)
            else:
                w = bbmaster.StockWorker(basedir, self.master, name, pw, protocol=self.protocol)
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


def describe_build(b):
    """b.describe() plus the last line of each step's 'err.text' log (the exception the
    master recorded for an EXCEPTION step, e.g. "worker is too old, ..."), for assertion
    messages."""
    out = [b.describe()]
    for s in b.steps:
        if 'err.text' in s.logs:
            lines = [ln.strip() for ln in s.logs['err.text'].raw.splitlines() if ln.strip()]
            exc = [ln for ln in lines if _EXC_LINE_RE.search(ln)]
            out.append(f'  {s.name} err.text: {(exc or lines or [""])[-1][:500]}')
    return '\n'.join(out)


_EXC_LINE_RE = re.compile(r'\w(Error|Exception|Failure)\b.*:')


def wait_processes(marker, count, timeout=20):
    """Wait until at least `count` processes are tagged with `marker`; returns them."""
    return bbmaster.wait_for(lambda: (lambda p: p if len(p) >= count else None)(
        bbmaster.find_processes(marker)), timeout, f'{count} processes tagged {marker!r}')


# ---- files and trees (transfer / fs tests) -----------------------------------------------------

def write_random_file(path, size, seed=0, mode=None):
    """Write `size` pseudo-random bytes (deterministic for a seed) to `path`; returns the
    sha256 hex digest. Written in 4 MiB pieces, so big files cost no big memory."""
    rnd = random.Random(seed)
    h = hashlib.sha256()
    with open(path, 'wb') as f:
        left = size
        while left > 0:
            n = min(left, 4 << 20)
            piece = rnd.randbytes(n)
            f.write(piece)
            h.update(piece)
            left -= n
    if mode is not None:
        os.chmod(path, mode)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            piece = f.read(1 << 20)
            if not piece:
                return h.hexdigest()
            h.update(piece)


def tree_snapshot(root, mtimes=False):
    """{relative path: description} of everything below `root` (root itself is ''),
    without following symlinks. A description is a tuple:
    ('dir', mode) | ('file', mode, size, sha256) | ('link', target) | ('other', S_IFMT),
    where mode is the permission bits (S_IMODE); with mtimes=True files also get
    their integer mtime appended."""
    out = {}

    def describe(path):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return ('link', os.readlink(path))
        if stat.S_ISDIR(st.st_mode):
            return ('dir', stat.S_IMODE(st.st_mode))
        if stat.S_ISREG(st.st_mode):
            d = ('file', stat.S_IMODE(st.st_mode), st.st_size, sha256_file(path))
            return d + (int(st.st_mtime),) if mtimes else d
        return ('other', stat.S_IFMT(st.st_mode))

    out[''] = describe(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:   # os.walk does not descend into symlinked dirs
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = describe(full)
    return out


def assert_same_tree(src, dst, mtimes=False, root_mode=True):
    """Assert that the trees below `src` and `dst` are equal entry by entry (types, permission
    bits, sizes, sha256, symlink targets, optionally file mtimes). root_mode=False ignores
    the mode of the two roots themselves."""
    a, b = tree_snapshot(src, mtimes), tree_snapshot(dst, mtimes)
    if not root_mode:
        a.pop(''), b.pop('')
    problems = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            problems.append(f'missing in {dst}: {k!r} {a[k]}')
        elif k not in a:
            problems.append(f'extra in {dst}: {k!r} {b[k]}')
        elif a[k] != b[k]:
            problems.append(f'differs: {k!r} source {a[k]} != copy {b[k]}')
    assert not problems, 'trees differ:\n  ' + '\n  '.join(problems)
    return a


def leftovers(directory, pattern):
    """Names in `directory` (not recursive) matching the glob `pattern`; [] if no directory."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
