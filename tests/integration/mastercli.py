"""Drive `cworker-master` (the C master endpoint) and a worker attached to it.

Plain Python (no pytest), like bbmaster.py, whose worker classes and process helpers it
reuses:

    ep = Endpoint()                                     # a free loopback port
    w = AttachedWorker('cworker', '/tmp/w', ep, 'w1', 'pw')
    r = w.run_master('run', '--', 'echo', 'hi')         # starts cworker-master, then the worker
    assert r.rc == 0 and r.stdout == b'hi\\n'

* `Endpoint` stands in for bbmaster.Master: the worker classes only need `.msgpack_port`.
  Workers are started with wait=False; `cworker-master` itself waits for the attach.
* `MasterProc` is one `cworker-master` process. stdout and stderr go to separate files
  (a 100 MiB `run` must not go through a pipe). The password is passed in
  CWORKER_PASSWORD, never on the command line. `faults=` sets CWORKER_MASTER_FAULTS.
  Only its own PID is ever signalled.
* Tree helpers: `make_tree`, `tree_manifest` (types, sha256 of files, link targets).
"""

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time

import bbmaster

MASTER_BIN = os.environ.get('CWORKER_MASTER_BIN') or os.path.join(
    bbmaster.REPO_ROOT, 'build', 'src', 'master', 'cworker-master')

# exit codes of cworker-master (see its --help)
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_NO_WORKER = 125
EXIT_LINK_LOST = 254
EXIT_FAILURE = 255


class Endpoint:
    """A loopback port for one cworker-master at a time; enough of a 'master' for the
    bbmaster worker classes (they read .msgpack_port)."""

    def __init__(self, port=None):
        self.msgpack_port = port or bbmaster.free_port()

    @property
    def listen(self):
        return f'127.0.0.1:{self.msgpack_port}'

    def worker_connected(self, name):  # used only by wait_connected(), which we do not call
        return False

    def log_tail(self, nbytes=4000):
        return ''


class MasterResult:
    def __init__(self, proc):
        self.proc = proc
        self.rc = proc.returncode
        self.elapsed = proc.elapsed

    @property
    def stdout(self):
        return self.proc.stdout_bytes()

    @property
    def stderr(self):
        return self.proc.stderr_text()

    def __repr__(self):
        err = self.stderr
        return (f'<cworker-master {self.proc.sub} rc={self.rc} {self.elapsed:.2f}s '
                f'stderr={err[-3000:]!r}>')


class MasterProc(bbmaster._Process):
    """One cworker-master process: `sub` (run/put/get/serve) on endpoint `ep`."""

    name = 'cworker-master'
    stop_timeout = 10.0
    _count = 0

    def __init__(self, sub, args, ep, *, workdir, worker=None, password=None, faults=None,
                 env=None, wait=None, verbose=False, binary=None, stderr_fd=None, cwd=None):
        super().__init__()
        MasterProc._count += 1
        self.sub = sub
        self.ep = ep
        self.binary = binary or MASTER_BIN
        self.argv = [self.binary, sub, '--listen', ep.listen]
        if worker is not None:
            self.argv += ['--worker', worker]
        if wait is not None:
            self.argv += ['--wait', str(wait)]
        if verbose:
            self.argv += ['--verbose']
        self.argv += [str(a) for a in args]
        os.makedirs(workdir, exist_ok=True)
        tag = f'm{MasterProc._count:03d}-{sub}'
        self.out_path = os.path.join(workdir, f'{tag}.out')
        self.err_path = os.path.join(workdir, f'{tag}.err')
        self.env = bbmaster._clean_env(env)
        self.env.pop('CWORKER_MASTER_FAULTS', None)
        self.env.pop('CWORKER_PASSWORD', None)
        if password is not None:
            self.env['CWORKER_PASSWORD'] = password
        if faults:
            self.env['CWORKER_MASTER_FAULTS'] = faults
        self.stderr_fd = stderr_fd  # e.g. a pty slave, for the progress test
        self.cwd = cwd
        self.t0 = None
        self.elapsed = None

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise bbmaster.HarnessError(f'cworker-master not found at {self.binary}: build it '
                                        '(ninja -C build) or set CWORKER_MASTER_BIN')
        with open(self.out_path, 'wb') as out:
            err = self.stderr_fd if self.stderr_fd is not None else open(self.err_path, 'wb')
            try:
                self.t0 = time.monotonic()
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=err, env=self.env, cwd=self.cwd,
                                             start_new_session=True,
                                             preexec_fn=bbmaster._pdeathsig)
            finally:
                if self.stderr_fd is None:
                    err.close()
        self.started_at = self.t0
        bbmaster._register(self)
        return self

    def wait_listening(self, timeout=10):
        """Wait for the 'listening on' log line (the port is bound)."""
        bbmaster.wait_for(lambda: 'listening on' in self.stderr_text() or not self.running(),
                          timeout, 'cworker-master to listen')
        if not self.running() and 'listening on' not in self.stderr_text():
            raise bbmaster.HarnessError(f'cworker-master exited: {self.stderr_text()}')
        return self

    def wait(self, timeout):
        """Wait for the exit -> MasterResult; on timeout SIGKILL it and raise."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise bbmaster.HarnessError(
                f'cworker-master {self.sub} did not exit within {timeout}s; stderr:\n'
                f'{self.stderr_text()[-4000:]}') from None
        if self.elapsed is None:
            self.elapsed = time.monotonic() - self.t0
        bbmaster._unregister(self)
        return MasterResult(self)

    def signal(self, sig):
        self._signal(sig)

    def kill(self):
        rc = super().kill()
        if self.elapsed is None and self.t0 is not None:
            self.elapsed = time.monotonic() - self.t0
        return rc

    def _emergency_stop(self):
        self.kill()

    def stdout_bytes(self):
        with open(self.out_path, 'rb') as f:
            return f.read()

    def stderr_text(self):
        try:
            with open(self.err_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def log_has(self, text):
        return text in self.stderr_text()


class AttachedWorker:
    """A worker (cworker or stock) that keeps connecting to one Endpoint, and the
    cworker-master invocations a test runs against it."""

    def __init__(self, kind, basedir, ep, name='w1', password='pass1', *, workdir,
                 cworker_bin=None, cworker_args=(), verbose=False):
        self.kind = kind
        self.ep = ep
        self.name = name
        self.password = password
        self.workdir = workdir  # where MasterProc output files go
        kw = {}
        if kind == 'cworker':
            kw = {'binary': cworker_bin, 'extra_args': list(cworker_args) +
                  (['--verbose'] if verbose else [])}
        self.worker = bbmaster.make_worker(kind, basedir, ep, name, password, **kw)
        self.masters = []

    @property
    def basedir(self):
        return self.worker.basedir

    @property
    def pid(self):
        return self.worker.pid

    def running(self):
        return self.worker.running()

    def ensure_running(self):
        if not self.worker.running():
            self.worker.start(wait=False)
        return self

    def log_text(self):
        return self.worker.log_text()

    def log_size(self):
        return len(self.log_text())

    def master(self, sub, *args, password=None, worker=None, **kw):
        """A MasterProc for this worker (not started)."""
        m = MasterProc(sub, args, self.ep, workdir=self.workdir,
                       worker=self.name if worker is None else worker,
                       password=self.password if password is None else password, **kw)
        self.masters.append(m)
        return m

    def start_master(self, sub, *args, **kw):
        """Start cworker-master first (so the worker's next attempt finds it), then make
        sure the worker runs."""
        m = self.master(sub, *args, **kw).start()
        m.wait_listening()
        self.ensure_running()
        return m

    def run_master(self, sub, *args, timeout=120, **kw):
        """Start cworker-master `sub` with args and wait for it -> MasterResult."""
        return self.start_master(sub, *args, **kw).wait(timeout)

    def stop(self):
        for m in self.masters:
            if m.running():
                m.kill()
        self.worker.stop(timeout=10)


# ---- files and trees ----

def sha256_file(path, bufsize=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def make_base64_file(path, size):
    """A text file of about `size` bytes: base64 of random data, 76-char lines."""
    raw = (size * 57 + 76) // 77  # 57 input bytes make one 77-byte line
    with open(path, 'wb') as out:
        subprocess.run(f'head -c {raw} /dev/urandom | base64 -w 76', shell=True, stdout=out,
                       check=True)
    return path


def make_random_file(path, size):
    with open(path, 'wb') as out:
        subprocess.run(['head', '-c', str(size), '/dev/urandom'], stdout=out, check=True)
    return path


def make_tree(root):
    """A small tree: nested dirs, an empty dir, a symlink to a file and one to a dir,
    a file with a space in its name, an empty file, a binary file."""
    os.makedirs(root)
    os.makedirs(os.path.join(root, 'a', 'b', 'c'))
    os.makedirs(os.path.join(root, 'empty dir'))
    os.makedirs(os.path.join(root, 'a', 'empty'))
    files = {
        'top.txt': b'top level\n',
        'with space.txt': b'a file with a space in its name\n',
        'a/one.txt': b'one\n' * 1000,
        'a/b/two.bin': bytes(range(256)) * 40 + os.urandom(3000),
        'a/b/c/deep.txt': b'deep\n',
        'a/zero': b'',
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), 'wb') as f:
            f.write(data)
    os.symlink('a/b/c/deep.txt', os.path.join(root, 'link to deep'))
    os.symlink('b', os.path.join(root, 'a', 'blink'))
    return root


def tree_manifest(root):
    """{relpath: ('dir',) | ('file', sha256) | ('link', target)} of everything below root
    (symlinks are not followed; temporary files of cworker-master would show up too)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ('link', os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ('dir',)
            elif os.path.isfile(p):
                out[rel] = ('file', sha256_file(p))
            else:
                out[rel] = ('other',)
    return out


# ---- processes ----

def pgid_members(pgid):
    """Live (non-zombie) PIDs in process group `pgid`."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat', 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b')') + 2:].split()
        if rest[0] in (b'Z', b'X'):
            continue
        if int(rest[2]) == pgid:
            found.append(int(entry))
    return found


def pgid_of(pid):
    with contextlib.suppress(OSError):
        return os.getpgid(pid)
    return None


def log_since(text, offset):
    return text[offset:]


_TS = re.compile(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ')


def log_time(line):
    """Seconds since the epoch of a '2026-11-28T04:34:54.566Z prog: ...' log line, or None."""
    m = _TS.match(line)
    if not m:
        return None
    import calendar
    t = time.strptime(m.group(1)[:19], '%Y-%m-%dT%H:%M:%S')
    return calendar.timegm(t) + int(m.group(1)[20:]) / 1000.0


def first_line(text, needle):
    for line in text.splitlines():
        if needle in line:
            return line
    return None


def kill_pid(pid, sig=signal.SIGKILL):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def procs_except(marker, *pids):
    """bbmaster.find_processes(marker) without the given PIDs (a cworker-master's own argv
    holds the marker when it was passed with --env)."""
    skip = {p for p in pids if p}
    return [(pid, cmd) for pid, cmd in bbmaster.find_processes(marker) if pid not in skip]


# ---- msgpack by hand (the fault tests need broken encodings too) ----

def mp_str(s):
    b = s.encode() if isinstance(s, str) else s
    n = len(b)
    if n < 32:
        return bytes([0xa0 | n]) + b
    if n < 256:
        return b'\xd9' + bytes([n]) + b
    return b'\xda' + n.to_bytes(2, 'big') + b


def mp_int(i):
    if 0 <= i < 128:
        return bytes([i])
    if 0 <= i < 65536:
        return b'\xcd' + i.to_bytes(2, 'big')
    return b'\xd3' + i.to_bytes(8, 'big', signed=True)


def mp_map(pairs):
    """pairs: [(key bytes already packed or str, value bytes already packed)]."""
    assert len(pairs) < 16
    out = bytes([0x80 | len(pairs)])
    for k, v in pairs:
        out += (mp_str(k) if isinstance(k, str) else k) + v
    return out


NIL = b'\xc0'
