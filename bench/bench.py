"""cworker vs the stock Python buildbot-worker 3.7, side by side (driven by bench/run).

Both workers are measured over both Buildbot worker protocols: msgpack_experimental_v7
(WebSocket) and Perspective Broker (PB, TCP).  A "kind" is a worker and a protocol:
stock-msgpack, cworker-msgpack, stock-pb, cworker-pb.

Every run starts a FRESH stock Debian Buildbot 3.7 master (tests/integration/bbmaster.py;
with a PB listener for the PB kinds), attaches one worker to it and measures, in this order:

  spawn -> attached, idle RSS 3 s after attach, a warm-up build (not measured),
  50 x `true` in one build, 50 x SetProperty in one build (master-only baseline),
  a 100 MiB stdout step, a 200 MiB FileUpload, a 200 MiB DirectoryUpload (200 x 1 MiB),
  peak RSS (VmHWM) over all of that;

then a 200 MiB FileDownload: over PB from the same stock master (FileDownload step); over
msgpack the 3.7 master cannot send file data, so the worker is attached to `cworker-master`
(`cworker-master put`).

Runs alternate stock-msgpack, cworker-msgpack, stock-pb, cworker-pb, stock-msgpack, ...
Afterwards the C-against-C limits (cworker + cworker-master over msgpack, no Python in the
data path) are measured against the raw loopback limit (socat), and the installed footprint
is computed (bench/footprint.py).

Only processes started here are ever signalled, always by PID.  Everything listens on
127.0.0.1.  Exit status: 0 if every measurement succeeded and its data checked out, 1
otherwise; no speed is asserted.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))
sys.path.insert(0, HERE)

import bbmaster  # noqa: E402
import mastercli  # noqa: E402
import footprint  # noqa: E402
import scale  # noqa: E402
from hardening_util import proc_status  # noqa: E402

MIB = 1 << 20
CLK_TCK = os.sysconf('SC_CLK_TCK')
WORKERS = ('stock', 'cworker')
PROTOCOLS = ('msgpack', 'pb')
PROTOCOL_NAMES = {'msgpack': 'msgpack', 'pb': 'PB'}
# the order of one round of runs: the two workers alternate within each protocol
KINDS = tuple(f'{w}-{p}' for p in PROTOCOLS for w in WORKERS)
POLL = 0.005  # seconds between database polls (attach and build completion)


def split_kind(kind):
    """'cworker-pb' -> ('cworker', 'pb')."""
    worker, _, protocol = kind.partition('-')
    return worker, protocol


# --------------------------------------------------------------------------------------------
# /proc readings

# proc_status(pid) -> {key: KiB}: the tests' reader of /proc/PID/status (imported above)


class Cpu:
    """CPU time of a process (all its threads, dead ones included): utime+stime from
    /proc/PID/stat (1/CLK_TCK = 10 ms resolution), plus the ns counters of the live threads
    (/proc/PID/task/*/schedstat) to refine small differences."""

    def __init__(self, pid):
        with open(f'/proc/{pid}/stat', 'rb') as f:
            stat = f.read()
        fields = stat[stat.rfind(b')') + 2:].split()
        self.ticks = int(fields[11]) + int(fields[12])
        self.tasks = {}
        try:
            for tid in os.listdir(f'/proc/{pid}/task'):
                try:
                    with open(f'/proc/{pid}/task/{tid}/schedstat') as f:
                        self.tasks[tid] = int(f.read().split()[0])
                except OSError:
                    pass
        except OSError:
            pass

    def __sub__(self, before):
        """Seconds between two readings.  The tick counter is the truth (+-1 tick); when the
        difference is small and the ns counters of the threads agree with it within a tick,
        the ns value is used (a thread that lived and died in between is invisible to them,
        hence the check)."""
        coarse = (self.ticks - before.ticks) / CLK_TCK
        fine = sum(ns - before.tasks.get(tid, 0) for tid, ns in self.tasks.items()) / 1e9
        if coarse < 0.5 and abs(fine - coarse) <= 1.5 / CLK_TCK:
            return fine
        return coarse


def proc_pss_kib(pid):
    """Proportional set size (shared pages divided among their users), KiB."""
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            if line.startswith('Pss:'):
                return int(line.split()[1])
    return None


def proc_rss_by_mapping(pid):
    """{mapping name: Rss KiB} from /proc/PID/smaps (anonymous mappings as '[anon]')."""
    out = {}
    name = None
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if re.match(r'^[0-9a-f]+-[0-9a-f]+$', parts[0]):
                name = os.path.basename(parts[5]) if len(parts) >= 6 else '[anon]'
            elif parts[0] == 'Rss:' and name is not None:
                out[name] = out.get(name, 0) + int(parts[1])
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                return h.hexdigest()
            h.update(b)


# --------------------------------------------------------------------------------------------
# data

def make_text_file(path, size, line_len=100):
    """About `size` bytes of base64 text in lines of `line_len` bytes (newline included)."""
    raw = size * (line_len - 1) // line_len * 3 // 4
    with open(path, 'wb') as out:
        subprocess.run(f'head -c {raw} /dev/urandom | base64 -w {line_len - 1}', shell=True,
                       stdout=out, check=True)
    return path


def make_random_file(path, size):
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    return path


def tree_digest(root):
    """{relative path: (size, sha256)} of the regular files below root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = (os.path.getsize(p), sha256_file(p))
    return out


# --------------------------------------------------------------------------------------------
# one run against the stock master

BUILDERS = '''\
warmup      [steps.ShellCommand(name='warm', command=['true'])]
steps       [steps.ShellCommand(name='t%02d' % i, command=['true']) for i in range({nsteps})]
masteronly  [steps.SetProperty(name='p%02d' % i, property='p', value='v') for i in range({nsteps})]
log         [steps.ShellCommand(name='cat', command=['cat', {logfile!r}])]
upfile      [steps.FileUpload(workersrc={upfile!r}, masterdest={upfile_dest!r})]
updir       [steps.DirectoryUpload(workersrc={updir!r}, masterdest={updir_dest!r})]
downfile    [steps.FileDownload(mastersrc={downfile!r}, workerdest={downfile_dest!r})]
'''


class Bench:
    def __init__(self, args):
        self.a = args
        self.work = args.workdir
        self.data = os.path.join(self.work, 'data')
        self.results = {k: [] for k in KINDS}   # kind -> [per-run dict]
        self.cvc = []                            # C-vs-C per-run dicts
        self.floors = []                         # byte-pump CPU per run (run_floor)
        self.failures = []                       # (what, message)
        self.notes = []

    # ---- helpers ----

    def log(self, msg):
        print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)

    def fail(self, what, exc):
        msg = ''.join(traceback.format_exception_only(type(exc), exc)).strip()
        self.failures.append((what, msg[-3000:]))
        self.log(f'FAILED: {what}: {msg[-3000:]}')

    def prepare_data(self):
        a = self.a
        os.makedirs(self.data, exist_ok=True)
        self.log('generating data files')
        self.logfile = make_text_file(os.path.join(self.data, 'log.txt'), a.log_mib * MIB)
        self.logfile_sha = sha256_file(self.logfile)
        self.logfile_size = os.path.getsize(self.logfile)
        self.upfile = make_random_file(os.path.join(self.data, 'up.bin'), a.upload_mib * MIB)
        self.upfile_sha = sha256_file(self.upfile)
        self.updir = os.path.join(self.data, 'tree')
        os.makedirs(self.updir, exist_ok=True)
        per = a.dir_mib * MIB // a.dir_files
        for i in range(a.dir_files):
            make_random_file(os.path.join(self.updir, f'f{i:03d}.bin'), per)
        self.updir_digest = tree_digest(self.updir)
        self.downfile = make_random_file(os.path.join(self.data, 'down.bin'), a.download_mib * MIB)
        self.downfile_sha = sha256_file(self.downfile)
        if not a.skip_cvc:
            # C against C runs on tmpfs when there is room (source + 2 copies + margin): it
            # measures the protocol, not the disk's writeback
            self.cvc_root = self.work
            need = 3 * a.cvc_mib * MIB + 512 * MIB
            if a.cvc_tmpfs and os.path.isdir('/dev/shm'):
                st = os.statvfs('/dev/shm')
                if st.f_bavail * st.f_frsize > need:
                    self.cvc_root = tempfile.mkdtemp(prefix='cworker-bench-cvc-', dir='/dev/shm')
            self.cvc_fs = 'tmpfs (/dev/shm)' if self.cvc_root.startswith('/dev/shm') else 'disk'
            self.cvcfile = make_text_file(os.path.join(self.cvc_root, 'cvc.txt'), a.cvc_mib * MIB)
            self.cvcfile_sha = sha256_file(self.cvcfile)
            self.cvcfile_size = os.path.getsize(self.cvcfile)

    def builders(self, rundir):
        text = BUILDERS.format(nsteps=self.a.steps, logfile=self.logfile, upfile=self.upfile,
                               upfile_dest=os.path.join(rundir, 'dest-file.bin'),
                               updir=self.updir, updir_dest=os.path.join(rundir, 'dest-tree'),
                               downfile=self.downfile,
                               downfile_dest=os.path.join(rundir, 'dest-down.bin'))
        out = {}
        for line in text.splitlines():
            name, src = line.split(None, 1)
            out[name] = src
        return out

    # ---- database polling (no load on the master's REST) ----

    @staticmethod
    def _db(master):
        return sqlite3.connect(master.db_path, timeout=30, isolation_level=None)

    def wait_attached(self, db, name, proc, timeout):
        """Poll connected_workers every POLL s; returns time.monotonic() when the row is seen."""
        q = ('SELECT COUNT(*) FROM connected_workers c JOIN workers w ON c.workerid = w.id '
             'WHERE w.name = ?')
        deadline = time.monotonic() + timeout
        while True:
            if db.execute(q, (name,)).fetchone()[0]:
                return time.monotonic()
            if not proc.running():
                raise bbmaster.HarnessError(f'worker exited ({proc.returncode}):\n'
                                            f'{proc.log_text()[-3000:]}')
            if time.monotonic() > deadline:
                raise bbmaster.HarnessError(f'worker did not attach within {timeout} s')
            time.sleep(POLL)

    def wait_request(self, db, brid, timeout):
        deadline = time.monotonic() + timeout
        while True:
            row = db.execute('SELECT complete FROM buildrequests WHERE id = ?', (brid,)).fetchone()
            if row and row[0]:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise bbmaster.HarnessError(f'build request {brid} not complete after {timeout} s')
            time.sleep(POLL)

    def measure_build(self, m, db, w, builder, timeout=900):
        """Force `builder`, wait for it through the DB; wall time, worker and master CPU."""
        wc0, mc0 = Cpu(w.pid), Cpu(m.pid)
        t0 = time.monotonic()
        brid = m.force(builder, reason='bench')
        t1 = self.wait_request(db, brid, timeout)
        wc1, mc1 = Cpu(w.pid), Cpu(m.pid)
        b = bbmaster.Build(m, m.builds_for_request(brid)[-1])
        if b.result != 'SUCCESS':
            raise bbmaster.HarnessError(f'{builder}: build {b.result}\n{b.describe()}')
        return {'wall': t1 - t0, 'wcpu': wc1 - wc0, 'mcpu': mc1 - mc0, 'build': b}

    @staticmethod
    def command_lifetime_ms(worker, w, n):
        """Median lifetime of the last n commands as the worker logs it: cworker's
        'command ID finished in S s' (start_command received -> finished), the stock worker's
        'elapsedTime: S' (process spawned -> exited)."""
        pat = (r'command \S+ finished in ([0-9.]+) s' if worker == 'cworker'
               else r'elapsedTime: ([0-9.]+)')
        vals = [float(x) * 1000 for x in re.findall(pat, w.log_text())]
        return statistics.median(vals[-n:]) if len(vals) >= n else None

    # ---- one run: a fresh master, one worker ----

    @staticmethod
    def _ports(n):
        """n distinct free loopback ports."""
        ports = []
        while len(ports) < n:
            p = bbmaster.free_port()
            if p not in ports:
                ports.append(p)
        return ports

    def make_worker(self, kind, basedir, master):
        worker, protocol = split_kind(kind)
        return bbmaster.make_worker(worker, basedir, master, 'w1', 'pass1', protocol=protocol,
                                    **({'binary': self.a.cworker} if worker == 'cworker' else {}))

    def run_master_phase(self, kind, i, r):
        a = self.a
        worker, protocol = split_kind(kind)
        rundir = os.path.join(self.work, f'run{i}-{kind}')
        os.makedirs(rundir)
        # the PB kinds get a PB listener next to msgpack; the msgpack kinds none (the master's
        # configuration is otherwise the same)
        ports = self._ports(3)
        m = bbmaster.Master(os.path.join(rundir, 'master'), self.builders(rundir),
                            msgpack_port=ports[0], www_port=ports[1],
                            pb_port=ports[2] if protocol == 'pb' else None)
        w = None
        db = None
        try:
            m.start()
            db = self._db(m)
            # the workers table gets its rows a moment after REST answers; let the master settle
            bbmaster.wait_for(lambda: db.execute("SELECT 1 FROM workers WHERE name='w1'").fetchone(),
                              30, 'the master to configure its worker')
            time.sleep(a.settle)
            w = self.make_worker(kind, os.path.join(rundir, 'worker'), m)
            if worker == 'stock':
                w.create()  # create-worker is set-up, not start-up: not timed
            t0 = time.monotonic()
            w.start(wait=False)
            t1 = self.wait_attached(db, 'w1', w, 60)
            r['attach_ms'] = (t1 - t0) * 1000
            w.wait_connected(30)  # REST agrees
            time.sleep(max(0.0, a.idle_wait - (time.monotonic() - t1)))
            st = proc_status(w.pid)
            r['idle_rss'] = st['VmRSS'] / 1024
            r['idle_rss_anon'] = st.get('RssAnon', 0) / 1024
            r['idle_rss_file'] = st.get('RssFile', 0) / 1024
            r['idle_pss'] = proc_pss_kib(w.pid) / 1024
            r['idle_rss_by_mapping_kib'] = dict(list(proc_rss_by_mapping(w.pid).items())[:12])
            self.log(f'  {kind}: attached in {r["attach_ms"]:.0f} ms, idle RSS {r["idle_rss"]:.2f} MiB')

            self.measure_build(m, db, w, 'warmup')

            x = self.measure_build(m, db, w, 'steps')
            r['steps_wall'], r['steps_wcpu'], r['steps_mcpu'] = x['wall'], x['wcpu'], x['mcpu']
            r['steps_mcpu_ms'] = x['mcpu'] / a.steps * 1000
            r['step_ms'] = x['wall'] / a.steps * 1000
            x = self.measure_build(m, db, w, 'masteronly')
            r['masteronly_step_ms'] = x['wall'] / a.steps * 1000
            r['step_over_ms'] = r['step_ms'] - r['masteronly_step_ms']
            r['step_wcpu_ms'] = r['steps_wcpu'] / a.steps * 1000
            r['step_offmaster_ms'] = (r['steps_wall'] - r['steps_mcpu']) / a.steps * 1000
            r['step_cmd_ms'] = self.command_lifetime_ms(worker, w, a.steps)
            self.log(f'  {kind}: {a.steps} steps {r["steps_wall"]:.2f} s '
                     f'({r["step_ms"]:.1f} ms/step, master-only {r["masteronly_step_ms"]:.1f})')

            x = self.measure_build(m, db, w, 'log')
            r['log_wall'], r['log_wcpu'], r['log_mcpu'] = x['wall'], x['wcpu'], x['mcpu']
            lg = x['build'].log('cat')
            digest, size = lg.digest('o')
            if digest != self.logfile_sha:
                raise bbmaster.HarnessError(f'stdout log differs: {size} bytes stored, '
                                            f'{self.logfile_size} expected')
            self.log(f'  {kind}: {a.log_mib} MiB stdout {r["log_wall"]:.2f} s, worker CPU '
                     f'{r["log_wcpu"]:.3f} s, master CPU {r["log_mcpu"]:.2f} s')

            x = self.measure_build(m, db, w, 'upfile')
            r['upfile_wall'], r['upfile_wcpu'], r['upfile_mcpu'] = x['wall'], x['wcpu'], x['mcpu']
            dest = os.path.join(rundir, 'dest-file.bin')
            if sha256_file(dest) != self.upfile_sha:
                raise bbmaster.HarnessError('FileUpload: uploaded file differs')
            os.unlink(dest)
            self.log(f'  {kind}: FileUpload {r["upfile_wall"]:.2f} s, worker CPU {r["upfile_wcpu"]:.3f} s')

            x = self.measure_build(m, db, w, 'updir')
            r['updir_wall'], r['updir_wcpu'], r['updir_mcpu'] = x['wall'], x['wcpu'], x['mcpu']
            dest = os.path.join(rundir, 'dest-tree')
            if tree_digest(dest) != self.updir_digest:
                raise bbmaster.HarnessError('DirectoryUpload: uploaded tree differs')
            shutil.rmtree(dest)
            self.log(f'  {kind}: DirectoryUpload {r["updir_wall"]:.2f} s, worker CPU {r["updir_wcpu"]:.3f} s')

            r['peak_rss'] = proc_status(w.pid)['VmHWM'] / 1024

            if protocol == 'pb':
                # over PB the 3.7 master sends file data (over msgpack it answers nil: see
                # run_download_phase); last, so that peak_rss covers the same work for both
                x = self.measure_build(m, db, w, 'downfile')
                r['dlfile_wall'], r['dlfile_wcpu'], r['dlfile_mcpu'] = x['wall'], x['wcpu'], x['mcpu']
                dest = os.path.join(rundir, 'dest-down.bin')
                if sha256_file(dest) != self.downfile_sha:
                    raise bbmaster.HarnessError('FileDownload: downloaded file differs')
                os.unlink(dest)
                r['dlfile_peak_rss'] = proc_status(w.pid)['VmHWM'] / 1024
                self.log(f'  {kind}: FileDownload {r["dlfile_wall"]:.2f} s, worker CPU '
                         f'{r["dlfile_wcpu"]:.3f} s, master CPU {r["dlfile_mcpu"]:.2f} s')
        finally:
            if db is not None:
                db.close()
            if w is not None:
                w.stop(timeout=20)
            m.stop()
            if not a.keep:
                shutil.rmtree(rundir, ignore_errors=True)

    # ---- cworker-master: FileDownload (and the C-vs-C transfers) ----

    def cm_run(self, ep, sub, args, workdir):
        """Start one cworker-master (returns once it listens); cm_wait() collects it."""
        p = mastercli.MasterProc(sub, args, ep, workdir=workdir, worker='w1', password='pass1',
                                 binary=self.a.cworker_master)
        p.start()
        # like MasterProc.wait_listening(), but without Popen.poll(): that would reap the
        # process and lose its rusage (cm_wait() reaps it with wait4)
        deadline = time.monotonic() + 10
        while 'listening on' not in p.stderr_text():
            if os.waitid(os.P_PID, p.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            if time.monotonic() > deadline:
                raise bbmaster.HarnessError('cworker-master did not listen within 10 s')
            time.sleep(0.002)
        return p

    def cm_wait(self, p, timeout=1800):
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                raise bbmaster.HarnessError(f'cworker-master {p.sub} timed out')
            time.sleep(0.002)
        t_exit = time.time()
        p.proc.returncode = os.waitstatus_to_exitcode(status)
        bbmaster._unregister(p)
        err = p.stderr_text()
        line = mastercli.first_line(err, 'attached from')
        t_att = mastercli.log_time(line) if line else None
        if p.proc.returncode != 0:
            raise bbmaster.HarnessError(f'cworker-master {p.sub} exited {p.proc.returncode}:\n'
                                        f'{err[-3000:]}')
        own = re.search(r'(\d+) bytes in ([0-9.]+) s', err)
        return {'rc': p.proc.returncode, 'err': err, 'span': t_exit - t_att if t_att else None,
                'cpu': ru.ru_utime + ru.ru_stime, 'out': p.out_path,
                'own_secs': float(own.group(2)) if own else None}

    def run_download_phase(self, kind, i, r):
        rundir = os.path.join(self.work, f'dl{i}-{kind}')
        os.makedirs(rundir)
        ep = mastercli.Endpoint()
        w = self.make_worker(kind, os.path.join(rundir, 'worker'), ep)
        try:
            # attach once (start-up CPU is not part of the figure), then once more to see what
            # a reconnect + trivial command costs, then the download
            p = self.cm_run(ep, 'run', ['--', 'true'], rundir)
            w.start(wait=False)
            self.cm_wait(p, 120)
            c0 = Cpu(w.pid)
            p = self.cm_run(ep, 'run', ['--', 'true'], rundir)
            self.cm_wait(p, 120)
            c1 = Cpu(w.pid)
            r['reconnect_wcpu_ms'] = (c1 - c0) * 1000
            p = self.cm_run(ep, 'put', [self.downfile, 'down.bin'], rundir)
            x = self.cm_wait(p)
            c2 = Cpu(w.pid)
            r['down_wall'] = x['span']
            r['down_wcpu'] = c2 - c1
            got = os.path.join(w.basedir, 'down.bin')
            if sha256_file(got) != self.downfile_sha:
                raise bbmaster.HarnessError('download: file differs')
            os.unlink(got)
            r['down_peak_rss'] = proc_status(w.pid)['VmHWM'] / 1024
            self.log(f'  {kind}: FileDownload (cworker-master put) {r["down_wall"]:.2f} s, '
                     f'worker CPU {r["down_wcpu"]:.3f} s')
        finally:
            w.stop(timeout=20)
            if not self.a.keep:
                shutil.rmtree(rundir, ignore_errors=True)

    # ---- C against C ----

    def raw_socket(self, src, dest):
        """The same bytes through a plain loopback TCP connection (socat file -> socat file)."""
        port = bbmaster.free_port()
        blk = str(self.a.socat_block)
        srv = subprocess.Popen(['socat', '-u', '-b', blk, f'OPEN:{src},rdonly',
                                f'TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr'],
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            bbmaster.wait_for(lambda: bbmaster.listening_addresses(port), 10, 'socat to listen',
                              interval=0.01)
            t0 = time.monotonic()
            cli = subprocess.run(['socat', '-u', '-b', blk, f'TCP4:127.0.0.1:{port}',
                                  f'CREATE:{dest}'], stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=600)
            wall = time.monotonic() - t0
            srv.wait(30)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
        if cli.returncode or os.path.getsize(dest) != os.path.getsize(src):
            raise bbmaster.HarnessError(f'socat copy failed: {cli.stderr[-2000:]!r}')
        os.unlink(dest)
        return wall

    def pump_cpu(self, src, block, through_pipe):
        """CPU seconds (user+sys) of socat moving src into a loopback TCP connection with no
        processing at all, block bytes per read: the kernel's share of a worker's log path
        (through_pipe: the file is piped in by cat, as a command's output) or upload path (read
        from the file).  The receiver (socat to /dev/null) drains as fast as it can."""
        port = bbmaster.free_port()
        rcv = subprocess.Popen(['socat', '-u', f'TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr',
                                'OPEN:/dev/null'], stdin=subprocess.DEVNULL)
        cat = None
        try:
            bbmaster.wait_for(lambda: bbmaster.listening_addresses(port), 10, 'socat to listen',
                              interval=0.01)
            dst = f'TCP4:127.0.0.1:{port}'
            if through_pipe:
                cat = subprocess.Popen(['cat', src], stdout=subprocess.PIPE)
                snd = subprocess.Popen(['socat', '-u', '-b', str(block), '-', dst],
                                       stdin=cat.stdout)
                cat.stdout.close()
            else:
                snd = subprocess.Popen(['socat', '-u', '-b', str(block), f'OPEN:{src},rdonly', dst],
                                       stdin=subprocess.DEVNULL)
            _, status, ru = os.wait4(snd.pid, 0)
            snd.returncode = os.waitstatus_to_exitcode(status)
            rcv.wait(30)
        finally:
            for p in (cat, rcv):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        if snd.returncode or rcv.returncode:
            raise bbmaster.HarnessError(f'socat pump failed ({snd.returncode}, {rcv.returncode})')
        return ru.ru_utime + ru.ru_stime

    def run_floor(self, i):
        """The byte pumps of the log and upload rows, once per run (see pump_cpu)."""
        r = {'log_pump': self.pump_cpu(self.logfile, 64 * 1024, True),
             'up_pump': self.pump_cpu(self.upfile, 256 * 1024, False)}
        self.floors.append(r)
        self.log(f'  byte pumps (socat, CPU): {self.a.log_mib} MiB pipe -> TCP {r["log_pump"]:.3f} s, '
                 f'{self.a.upload_mib} MiB file -> TCP {r["up_pump"]:.3f} s')

    def run_cvc(self, i):
        a = self.a
        r = {}
        self.cvc.append(r)
        rundir = os.path.join(self.cvc_root, f'cvc{i}')
        os.makedirs(rundir)
        size = self.cvcfile_size
        ep = mastercli.Endpoint()
        w = self.make_worker('cworker-msgpack', os.path.join(rundir, 'worker'), ep)
        try:
            r['raw_wall'] = self.raw_socket(self.cvcfile, os.path.join(rundir, 'raw.out'))
            r['raw_mbs'] = size / 1e6 / r['raw_wall']
            self.log(f'  raw loopback (socat file -> file): {r["raw_mbs"]:.0f} MB/s')

            p = self.cm_run(ep, 'run', ['--', 'true'], rundir)
            w.start(wait=False)
            self.cm_wait(p, 60)

            c0 = Cpu(w.pid)
            p = self.cm_run(ep, 'run', ['--', 'cat', self.cvcfile], rundir)
            x = self.cm_wait(p)
            c1 = Cpu(w.pid)
            if sha256_file(x['out']) != self.cvcfile_sha:
                raise bbmaster.HarnessError('run -- cat: output differs')
            os.unlink(x['out'])
            r['run_wall'], r['run_wcpu'], r['run_mcpu'] = x['span'], c1 - c0, x['cpu']
            r['run_mbs'] = size / 1e6 / x['span']
            self.log(f'  run -- cat: {r["run_mbs"]:.0f} MB/s, worker CPU {r["run_wcpu"]:.2f} s, '
                     f'master CPU {r["run_mcpu"]:.2f} s')

            p = self.cm_run(ep, 'put', [self.cvcfile, 'cvc.bin'], rundir)
            x = self.cm_wait(p)
            c2 = Cpu(w.pid)
            got = os.path.join(w.basedir, 'cvc.bin')
            if sha256_file(got) != self.cvcfile_sha:
                raise bbmaster.HarnessError('put: file differs')
            r['put_wall'], r['put_wcpu'], r['put_mcpu'] = x['span'], c2 - c1, x['cpu']
            r['put_mbs'] = size / 1e6 / x['span']
            self.log(f'  put: {r["put_mbs"]:.0f} MB/s, worker CPU {r["put_wcpu"]:.2f} s, '
                     f'master CPU {r["put_mcpu"]:.2f} s')

            local = os.path.join(rundir, 'get.out')
            p = self.cm_run(ep, 'get', ['cvc.bin', local], rundir)
            x = self.cm_wait(p)
            c3 = Cpu(w.pid)
            if sha256_file(local) != self.cvcfile_sha:
                raise bbmaster.HarnessError('get: file differs')
            os.unlink(local)
            os.unlink(got)
            r['get_wall'], r['get_wcpu'], r['get_mcpu'] = x['span'], c3 - c2, x['cpu']
            r['get_mbs'] = size / 1e6 / x['span']
            self.log(f'  get: {r["get_mbs"]:.0f} MB/s, worker CPU {r["get_wcpu"]:.2f} s, '
                     f'master CPU {r["get_mcpu"]:.2f} s')
        finally:
            w.stop(timeout=20)
            if not a.keep:
                shutil.rmtree(rundir, ignore_errors=True)

    # ---- the whole thing ----

    def run(self):
        a = self.a
        t_start = time.monotonic()
        self.loadavg_start = os.getloadavg()
        if self.loadavg_start[0] > 0.5:
            self.log(f'note: load average is {self.loadavg_start[0]:.2f} before starting; '
                     'other work on this machine will add variance')
        self.prepare_data()
        for i in range(a.runs):
            try:
                self.run_floor(i)
            except Exception as e:  # noqa: BLE001
                self.fail(f'run {i + 1}: byte pumps', e)
            for kind in a.kinds:
                self.log(f'run {i + 1}/{a.runs}: {kind}')
                r = {'loadavg': os.getloadavg()[0]}
                self.results[kind].append(r)
                try:
                    self.run_master_phase(kind, i, r)
                except Exception as e:  # noqa: BLE001 - report and go on
                    self.fail(f'run {i + 1} {kind}: stock-master phase', e)
                if split_kind(kind)[1] != 'msgpack':
                    continue
                try:
                    self.run_download_phase(kind, i, r)
                except Exception as e:  # noqa: BLE001
                    self.fail(f'run {i + 1} {kind}: FileDownload via cworker-master', e)
        if not a.skip_cvc:
            for i in range(a.cvc_runs):
                self.log(f'C against C {i + 1}/{a.cvc_runs} ({a.cvc_mib} MiB)')
                try:
                    self.run_cvc(i)
                except Exception as e:  # noqa: BLE001
                    self.fail(f'C against C run {i + 1}', e)
        try:  # the master endpoint at scale (bench/scale.py)
            self.scale = scale.bench_run(a, self.log)
        except Exception as e:  # noqa: BLE001
            self.fail('master endpoint scale', e)
        self.log('installed footprint')
        os.makedirs(a.out_dir, exist_ok=True)
        try:
            self.footprint = footprint.measure(
                a.cworker, cache_path=os.path.join(a.out_dir, '.footprint-cache.json'))
        except Exception as e:  # noqa: BLE001
            self.footprint = None
            self.fail('footprint', e)
        self.loadavg_end = os.getloadavg()
        self.elapsed = time.monotonic() - t_start


# --------------------------------------------------------------------------------------------
# report

BOTH = PROTOCOLS
T_IDLE = ('≤ 2.4 MiB', lambda c, s: c <= 2.4)  # issue 14
T_ATTACH = ('≤ 30 ms', lambda c, s: c <= 30)
T_STEP = ('≤ 2 ms', lambda c, s: c <= 2)
T_INSTALLED_MIB = 10  # issue 14: Debian packages added to a minimal Debian 12 + the binary
# key, label, unit, the protocols it is measured over,
# {protocol: (target text, check(cworker median, stock median) -> bool)}
FIGURES = [
    ('idle_rss', 'idle RSS 3 s after attach', 'MiB', BOTH, {'msgpack': T_IDLE, 'pb': T_IDLE}),
    ('idle_rss_anon', '  of which anonymous (heap, stacks)', 'MiB', BOTH, {}),
    ('idle_rss_file', '  of which file-backed (binary, shared libraries)', 'MiB', BOTH, {}),
    ('idle_pss', '  idle PSS (shared pages divided among their users)', 'MiB', BOTH, {}),
    ('peak_rss', 'peak RSS (VmHWM), whole run on the Buildbot master', 'MiB', BOTH, {}),
    ('attach_ms', 'spawn → master lists the worker connected', 'ms', BOTH,
     {'msgpack': T_ATTACH, 'pb': T_ATTACH}),
    ('log_wall', '{log_mib} MiB stdout step: build wall time', 's', BOTH, {}),
    ('log_wcpu', '{log_mib} MiB stdout step: worker CPU', 's', BOTH,
     {'msgpack': ('≤ 1/40 of stock', lambda c, s: c <= s / 40),
      'pb': ('≤ 1/20 of stock (issue 13)', lambda c, s: c <= s / 20)}),
    ('log_mcpu', '{log_mib} MiB stdout step: master CPU', 's', BOTH, {}),
    ('upfile_wall', '{upload_mib} MiB FileUpload: build wall time', 's', BOTH, {}),
    ('upfile_wcpu', '{upload_mib} MiB FileUpload: worker CPU', 's', BOTH,
     {'msgpack': ('≤ 1/12 of stock', lambda c, s: c <= s / 12)}),
    ('upfile_mcpu', '{upload_mib} MiB FileUpload: master CPU', 's', BOTH, {}),
    ('updir_wall', '{dir_mib} MiB DirectoryUpload ({dir_files} files): build wall time', 's', BOTH, {}),
    ('updir_wcpu', '{dir_mib} MiB DirectoryUpload: worker CPU', 's', BOTH, {}),
    ('updir_mcpu', '{dir_mib} MiB DirectoryUpload: master CPU', 's', BOTH, {}),
    ('down_wall', '{download_mib} MiB FileDownload (cworker-master put): wall time', 's',
     ('msgpack',), {}),
    ('down_wcpu', '{download_mib} MiB FileDownload: worker CPU (incl. the reconnect)', 's',
     ('msgpack',), {}),
    ('reconnect_wcpu_ms', 'reconnect + one trivial command: worker CPU', 'ms', ('msgpack',), {}),
    ('dlfile_wall', '{download_mib} MiB FileDownload (stock master, 16 KiB blocks): build wall time',
     's', ('pb',), {}),
    ('dlfile_wcpu', '{download_mib} MiB FileDownload: worker CPU', 's', ('pb',), {}),
    ('dlfile_mcpu', '{download_mib} MiB FileDownload: master CPU', 's', ('pb',), {}),
    ('dlfile_peak_rss', 'peak RSS (VmHWM) with the FileDownload too', 'MiB', ('pb',), {}),
    ('steps_wall', '{steps} × `true` in one build: build wall time', 's', BOTH, {}),
    ('steps_wcpu', '{steps} × `true`: worker CPU', 's', BOTH, {}),
    ('steps_mcpu', '{steps} × `true`: master CPU', 's', BOTH, {}),
    ('step_ms', 'per step (build time / {steps})', 'ms', BOTH, {}),
    ('masteronly_step_ms', 'master-only baseline per step ({steps} × SetProperty)', 'ms', BOTH, {}),
    ('step_over_ms', '  per step above the master-only baseline', 'ms', BOTH, {}),
    ('steps_mcpu_ms', 'master CPU per step', 'ms', BOTH, {}),
    ('step_offmaster_ms', 'per step, time the master is not on the CPU ((wall − master CPU) / {steps})',
     'ms', BOTH, {'msgpack': T_STEP, 'pb': T_STEP}),
    ('step_cmd_ms', '  command lifetime as the worker logs it (median)', 'ms', BOTH, {}),
]
NOT_CHARTED = ('step_over_ms', 'masteronly_step_ms', 'steps_mcpu_ms', 'step_offmaster_ms',
               'dlfile_peak_rss')

# the same worker over PB against over msgpack: key, label, unit
CROSS = [
    ('idle_rss', 'idle RSS 3 s after attach', 'MiB'),
    ('idle_rss_anon', '  of which anonymous (heap, stacks)', 'MiB'),
    ('idle_rss_file', '  of which file-backed (binary, shared libraries)', 'MiB'),
    ('idle_pss', '  idle PSS', 'MiB'),
    ('peak_rss', 'peak RSS (VmHWM), whole run on the Buildbot master', 'MiB'),
    ('attach_ms', 'spawn → master lists the worker connected', 'ms'),
    ('log_wcpu', '{log_mib} MiB stdout step: worker CPU', 's'),
    ('log_wall', '{log_mib} MiB stdout step: build wall time', 's'),
    ('log_mcpu', '{log_mib} MiB stdout step: master CPU', 's'),
    ('upfile_wcpu', '{upload_mib} MiB FileUpload: worker CPU', 's'),
    ('upfile_wall', '{upload_mib} MiB FileUpload: build wall time', 's'),
    ('updir_wcpu', '{dir_mib} MiB DirectoryUpload: worker CPU', 's'),
    ('updir_wall', '{dir_mib} MiB DirectoryUpload: build wall time', 's'),
    ('steps_wcpu', '{steps} × `true`: worker CPU', 's'),
    ('step_ms', 'per step (build time / {steps})', 'ms'),
]


def agg(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return statistics.median(v), min(v), max(v), len(v)


def fmt_num(x):
    if x is None:
        return '—'
    ax = abs(x)
    if ax >= 100:
        return f'{x:.0f}'
    if ax >= 10:
        return f'{x:.1f}'
    if ax >= 1:
        return f'{x:.2f}'
    if ax >= 0.01:
        return f'{x:.3f}'
    return f'{x:.4f}'


def fmt_agg(g, ran=True):
    if g is None:
        return 'FAILED' if ran else 'not run'
    med, lo, hi, n = g
    if n == 1:
        return fmt_num(med)
    return f'{fmt_num(med)} [{fmt_num(lo)}–{fmt_num(hi)}]'


def fmt_ratio(r):
    if r is None:
        return '—'
    if r >= 100:
        return f'{r:.0f}×'
    if r >= 10:
        return f'{r:.1f}×'
    return f'{r:.2f}×'


def git_state():
    r = subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True)
    if r.returncode:
        return 'unknown'
    d = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no', '--', 'src',
                        'include', 'meson.build', 'meson_options.txt'], capture_output=True, text=True)
    return f'commit {r.stdout.strip()}' + (' + uncommitted changes to the C sources' if d.stdout.strip() else '')


def machine_info():
    info = {}
    try:
        with open('/proc/cpuinfo') as f:
            m = re.search(r'^model name\s*:\s*(.*)$', f.read(), re.M)
            info['cpu'] = m.group(1) if m else '?'
    except OSError:
        info['cpu'] = '?'
    info['cores'] = os.cpu_count()
    with open('/proc/meminfo') as f:
        m = re.search(r'MemTotal:\s+(\d+)', f.read())
        info['ram_gib'] = int(m.group(1)) / 1024 / 1024 if m else 0
    info['kernel'] = platform.release()
    try:
        with open('/etc/debian_version') as f:
            info['debian'] = f.read().strip()
    except OSError:
        info['debian'] = '?'
    vers = {}
    for p in ('buildbot', 'buildbot-worker', 'python3', 'libuv1', 'libmsgpackc2', 'libarchive13',
              'libssl3', 'gcc'):
        r = subprocess.run(['dpkg-query', '-W', '-f=${Version}', p], capture_output=True, text=True)
        vers[p] = r.stdout.strip() or '?'
    info['versions'] = vers
    return info


def _med(bench, kind, key):
    return agg([r.get(key) for r in bench.results.get(kind, [])])


def report_targets(bench, a, fmtargs):
    """Issue 13's two targets for PB, stated with the measured numbers ([] lines)."""
    L = ['## Issue 13\'s targets (PB)', '']
    s, c = _med(bench, 'stock-pb', 'log_wcpu'), _med(bench, 'cworker-pb', 'log_wcpu')
    size = '' if a.log_mib == 100 else (f' (this run: a {a.log_mib} MiB log, not the 100 MiB the '
                                        'target is stated for)')
    head = '* **≥ 20× less worker CPU than the stock PB worker for the 100 MiB log**' + size + ': '
    if s and c and c[0] > 0:
        ratio = s[0] / c[0]
        ok = ratio >= 20
        L.append(head + f'stock over PB {fmt_agg(s)} s, cworker over PB {fmt_agg(c)} s (user+sys, '
                 f'medians [min–max]): {fmt_ratio(ratio)} less — '
                 + ('**holds** ✓' if ok else '**does not hold** ✗') + '.')
    else:
        L.append(head + 'not measured (a run failed or a kind was not run).')
    mc, pc = _med(bench, 'cworker-msgpack', 'idle_rss'), _med(bench, 'cworker-pb', 'idle_rss')
    head = '* **cworker\'s idle RSS over PB no higher than over msgpack**: '
    if mc and pc:
        ok = pc[0] <= mc[0]
        diff = (pc[0] - mc[0]) * 1024
        L.append(head + f'{fmt_agg(pc)} MiB over PB, {fmt_agg(mc)} MiB over msgpack (VmRSS '
                 f'{a.idle_wait:g} s after attach, medians [min–max]; PB − msgpack = '
                 f'{diff:+.0f} KiB) — ' + ('**holds** ✓' if ok else '**does not hold** ✗') + '.')
        # where a difference comes from: the worker's own memory, or pages of the binary and
        # shared libraries that happen to be mapped in
        parts = []
        for key, what in (('idle_rss_anon', 'anonymous (heap, stacks)'),
                          ('idle_rss_file', 'file-backed (binary, libraries)'), ('idle_pss', 'PSS')):
            gm, gp = _med(bench, 'cworker-msgpack', key), _med(bench, 'cworker-pb', key)
            if gm and gp:
                parts.append(f'{what} {gp[0] * 1024:.0f} KiB over PB, {gm[0] * 1024:.0f} KiB over '
                             f'msgpack ({(gp[0] - gm[0]) * 1024:+.0f})')
        if parts:
            L.append('  Split (medians): ' + '; '.join(parts) + '.')
        maps = {}
        for k in ('cworker-msgpack', 'cworker-pb'):
            runs = [r['idle_rss_by_mapping_kib'] for r in bench.results.get(k, [])
                    if r.get('idle_rss_by_mapping_kib')]
            names = {n for m in runs for n in m}
            maps[k] = {n: statistics.median(m.get(n, 0) for m in runs) for n in names}
            maps[k + ' spread'] = {n: (min(m.get(n, 0) for m in runs), max(m.get(n, 0) for m in runs))
                                   for n in names}
        names = sorted(set(maps['cworker-msgpack']) & set(maps['cworker-pb']))
        moved = [(n, maps['cworker-pb'][n], maps['cworker-msgpack'][n]) for n in names
                 if maps['cworker-pb'][n] != maps['cworker-msgpack'][n]]
        if moved:
            def spread(k, n):
                lo, hi = maps[k + ' spread'][n]
                return f'{lo}–{hi}' if lo != hi else f'{lo}'
            L.append('  Mappings whose median RSS differs (KiB, PB against msgpack, [each side\'s '
                     'min–max over its runs]; the 12 largest mappings of each run are recorded): '
                     + ', '.join(f'{n} {p:.0f} against {m:.0f} [{spread("cworker-pb", n)}; '
                                 f'{spread("cworker-msgpack", n)}]' for n, p, m in moved) + '.')
    else:
        L.append(head + 'not measured (a run failed or a kind was not run).')
    L.append('')
    return L


def report_protocol_table(bench, a, protocol, fmtargs, chart):
    """The stock-vs-cworker table of one protocol; appends (label, ratio, protocol) to chart."""
    sk, ck = f'stock-{protocol}', f'cworker-{protocol}'
    L = ['| figure | unit | stock buildbot-worker | cworker | ratio | target (cworker) |',
         '|---|---|---|---|---|---|']
    for key, label, unit, protos, targets in FIGURES:
        if protocol not in protos:
            continue
        gs, gc = _med(bench, sk, key), _med(bench, ck, key)
        ratio = gs[0] / gc[0] if gs and gc and gc[0] > 0 else None
        tgt = ''
        if protocol in targets:
            tgt, check = targets[protocol]
            if gs and gc:
                tgt = f'{tgt} {"✓" if check(gc[0], gs[0]) else "✗ missed"}'
        label = label.format(**fmtargs)
        L.append(f'| {label} | {unit} | {fmt_agg(gs, sk in a.kinds)} | '
                 f'{fmt_agg(gc, ck in a.kinds)} | {fmt_ratio(ratio)} | {tgt} |')
        if ratio and not label.startswith('  ') and key not in NOT_CHARTED:
            chart.append((label, ratio, protocol))
    L.append('')
    return L


def report_floor(bench, a):
    """The CPU targets of the log and upload rows against a bare byte pump in the same run."""
    if not bench.floors:
        return []
    lp = agg([r['log_pump'] for r in bench.floors])
    up = agg([r['up_pump'] for r in bench.floors])
    L = ['## The CPU targets against a bare byte pump', '',
         'What moving the same bytes costs with no processing at all, measured once per run '
         '(CPU of the sending socat: user+sys): the log file piped by `cat` into socat, 64 KiB '
         'reads (a command\'s output, at the update size of 64 KiB), and the upload file read '
         'by socat, 256 KiB reads (the master\'s FileUpload block), each into a loopback TCP '
         'connection whose receiver drains it into /dev/null as fast as it can.  A worker does '
         'the same reads and writes plus its own work (line splitting, UTF-8, framing, masking '
         'over msgpack) and waits for the master\'s answer to each update or block.', '',
         '| path | byte pump CPU s | cworker CPU s (msgpack / PB) | target | target / pump |',
         '|---|---|---|---|---|']
    for key, pump, label, div in (('log_wcpu', lp, f'{a.log_mib} MiB log: pipe → TCP', 40),
                                  ('upfile_wcpu', up, f'{a.upload_mib} MiB FileUpload: file → TCP',
                                   12)):
        s_ = _med(bench, 'stock-msgpack', key)
        cm, cp = _med(bench, 'cworker-msgpack', key), _med(bench, 'cworker-pb', key)
        tgt = s_[0] / div if s_ else None
        L.append(f'| {label} | {fmt_agg(pump)} | {fmt_agg(cm)} / {fmt_agg(cp)} | '
                 + (f'1/{div} of stock over msgpack = {tgt:.3f} s | {tgt / pump[0]:.2f}× |'
                    if tgt and pump and pump[0] > 0 else '— | — |'))
    L.append('')
    return L


def report_cross(bench, a, fmtargs):
    """Each worker over PB against itself over msgpack."""
    L = ['## PB against msgpack, the same worker', '',
         'Ratio = PB median / msgpack median (below 1: cheaper or faster over PB).  The '
         'FileDownload figures are left out: over msgpack they come from cworker-master, over PB '
         'from the stock master.', '',
         '| figure | unit | cworker over msgpack | cworker over PB | PB / msgpack | '
         'stock over msgpack | stock over PB | PB / msgpack |',
         '|---|---|---|---|---|---|---|---|']
    for key, label, unit in CROSS:
        cells = []
        for worker in ('cworker', 'stock'):
            gm, gp = _med(bench, f'{worker}-msgpack', key), _med(bench, f'{worker}-pb', key)
            ratio = gp[0] / gm[0] if gm and gp and gm[0] > 0 else None
            cells += [fmt_agg(gm, f'{worker}-msgpack' in a.kinds),
                      fmt_agg(gp, f'{worker}-pb' in a.kinds), fmt_ratio(ratio)]
        L.append(f'| {label.format(**fmtargs)} | {unit} | ' + ' | '.join(cells) + ' |')
    L.append('')
    return L


def write_report(bench, a):
    fmtargs = {'log_mib': a.log_mib, 'upload_mib': a.upload_mib, 'dir_mib': a.dir_mib,
               'dir_files': a.dir_files, 'download_mib': a.download_mib, 'steps': a.steps}
    now = datetime.datetime.now()
    mi = machine_info()
    loads = [r['loadavg'] for rs in bench.results.values() for r in rs if 'loadavg' in r]
    L = []
    L.append(f'# cworker vs buildbot-worker 3.7 — {now:%Y-%m-%d %H:%M}' + (' (--tiny)' if a.tiny else ''))
    L.append('')
    L.append(f'Machine: {mi["cpu"]}, {mi["cores"]} cores, {mi["ram_gib"]:.1f} GiB RAM, kernel '
             f'{mi["kernel"]}, Debian {mi["debian"]}; buildbot {mi["versions"]["buildbot"]}, '
             f'buildbot-worker {mi["versions"]["buildbot-worker"]}, python3 '
             f'{mi["versions"]["python3"]}, libuv1 {mi["versions"]["libuv1"]}, gcc '
             f'{mi["versions"]["gcc"]}.  ')
    L.append(f'cworker: `{os.path.relpath(a.cworker, REPO)}` ({a.build_note}), source {git_state()}.  ')
    L.append(f'Runs: {a.runs} per kind, alternating {", ".join(a.kinds)}, a fresh master per run; '
             f'C-vs-C: {a.cvc_runs if not a.skip_cvc else 0} runs.  Load average (1 min) at start '
             f'{bench.loadavg_start[0]:.2f}, at end {bench.loadavg_end[0]:.2f}'
             + (f', at the start of each run {min(loads):.2f}–{max(loads):.2f} (the benchmark\'s own '
                'processes count in it)' if loads else '')
             + f'; the whole benchmark took {bench.elapsed:.0f} s.')
    L.append('')
    L.append('Cells: median [min–max] over the runs.  Ratio = stock median / cworker median '
             '(higher is better for cworker).  CPU = utime+stime of the worker process itself '
             '(not of the commands it runs).  Build wall time = force request → build request '
             f'complete in the master\'s database, polled every {POLL * 1000:.0f} ms; attach time '
             f'likewise (resolution {POLL * 1000:.0f} ms).  The same stock master configuration '
             'for both protocols; the PB runs\' master also listens for PB.')
    L.append('')
    L += report_targets(bench, a, fmtargs)
    chart = []
    ran = {split_kind(k)[1] for k in a.kinds}
    for protocol, title in (('msgpack', 'Over msgpack (msgpack_experimental_v7, WebSocket)'),
                            ('pb', 'Over PB (Perspective Broker, TCP)')):
        if protocol in ran:
            L += [f'## {title}', '']
            L += report_protocol_table(bench, a, protocol, fmtargs, chart)
    L += report_floor(bench, a)
    if ran == set(PROTOCOLS):
        L += report_cross(bench, a, fmtargs)
    fp = getattr(bench, 'footprint', None)
    if fp:
        s_kib = fp.get('stock_apt_kib', fp.get('stock_resolver_kib'))
        c_kib = fp.get('cworker_apt_kib_with_binary', fp.get('cworker_resolver_kib_with_binary'))
        ratio = s_kib / c_kib if s_kib and c_kib else None
        if ratio:
            chart.append(('installed footprint (packages)', ratio, None))

    if bench.cvc:
        L.append(f'## C against C: cworker + cworker-master on loopback, {a.cvc_mib} MiB')
        L.append('')
        L.append('Throughput in MB/s (10⁶ bytes/s), from the worker\'s attach (cworker-master\'s '
                 'log, ms) to cworker-master\'s exit; sha256 of every copy checked.  Raw limit: '
                 f'the same file through one plain loopback TCP connection, `socat -b {a.socat_block}` '
                 f'file → socket → file.  Files on {getattr(bench, "cvc_fs", "?")}.')
        L.append('')
        L.append('| path | MB/s | fraction of raw | worker CPU s | cworker-master CPU s | target |')
        L.append('|---|---|---|---|---|---|')
        raw = agg([r.get('raw_mbs') for r in bench.cvc])
        L.append(f'| raw loopback (socat) | {fmt_agg(raw)} | 1 | — | — | |')
        # issue 14: the log path in MB/s; put/get against raw socat in the same run (median
        # of the per-run fractions)
        for key, label, target, lim, flim in (
                ('run', '`run -- cat FILE` (log output, 100-byte lines)', '≥ 500 MB/s', 500, None),
                ('put', '`put` (download_file)', '≥ 70 % of raw', None, 0.7),
                ('get', '`get` (upload_file)', '≥ 70 % of raw', None, 0.7)):
            g = agg([r.get(f'{key}_mbs') for r in bench.cvc])
            frac = agg([r[f'{key}_mbs'] / r['raw_mbs'] for r in bench.cvc
                        if r.get(f'{key}_mbs') and r.get('raw_mbs')])
            wc = agg([r.get(f'{key}_wcpu') for r in bench.cvc])
            mc = agg([r.get(f'{key}_mcpu') for r in bench.cvc])
            ok = g and frac and ((lim and g[0] >= lim) or (flim and frac[0] >= flim))
            L.append(f'| {label} | {fmt_agg(g)} | {fmt_agg(frac)} | {fmt_agg(wc)} | {fmt_agg(mc)} | '
                     f'{target} {"✓" if ok else "✗ missed" if g else ""} |')
        L.append('')

    if fp:
        L.append('## Installed footprint')
        L.append('')
        L.append('Method: packages to add to a minimal Debian 12 (Priority `required` + `apt` and '
                 f'their dependencies: {fp["minimal_packages"]} packages here), Depends/Pre-Depends only, '
                 'Installed-Size summed.  Two resolvers: apt itself (`apt-get install --simulate '
                 '--no-install-recommends` against a dpkg status file holding only the minimal set) '
                 'and a closure over the packages installed here.  For cworker: the packages owning '
                 'its shared libraries (`ldd` + `dpkg -S`), plus the binary.  See bench/footprint.py.')
        L.append('')
        L.append('| | stock buildbot-worker | cworker |')
        L.append('|---|---|---|')
        L.append(f'| packages added (apt) | {len(fp.get("stock_apt_packages", []))} | '
                 f'{len(fp.get("cworker_apt_packages", []))} |')
        c_mib = fp.get("cworker_apt_kib_with_binary", 0) / 1024
        L.append(f'| Installed-Size, apt (target cworker ≤ {T_INSTALLED_MIB} MiB) | '
                 f'{fp.get("stock_apt_kib", 0) / 1024:.1f} MiB | {c_mib:.1f} MiB '
                 f'{"✓" if 0 < c_mib <= T_INSTALLED_MIB else "✗ missed"} |')
        L.append(f'| Installed-Size, installed-closure resolver | {fp["stock_resolver_kib"] / 1024:.1f} MiB | '
                 f'{fp["cworker_resolver_kib_with_binary"] / 1024:.1f} MiB |')
        if ratio:
            L.append(f'| ratio stock / cworker (apt) | {fmt_ratio(ratio)} | |')
        L.append(f'| files: cworker binary + its non-libc shared libraries (ldd) | — | '
                 f'{fp["cworker_files_bytes"] / MIB:.1f} MiB |')
        big = lambda lst: ', '.join(f'{p} {k / 1024:.1f}' for p, k in lst)  # noqa: E731
        L.append(f'| biggest packages (MiB) | {big(fp["stock_biggest"])} | {big(fp["cworker_biggest"])} |')
        L.append(f'| cworker packages added | | {", ".join(fp.get("cworker_apt_packages", []))} |')
        L.append('')
        libs = sorted(fp['cworker_libs'], key=lambda t: -t[2])
        lazy = set(fp.get('cworker_dlopen_libs', []))
        L.append(f'cworker binary {fp["cworker_binary_bytes"] / 1024:.0f} KiB; its non-libc shared '
                 f'libraries (* loaded on the first wss:// connection): ' +
                 ', '.join(f'{n}{"*" if n in lazy else ""} {s / MIB:.2f} MiB' for n, _, s in libs) + '.')
        L.append('')

    L += scale.bench_report(getattr(bench, 'scale', None))
    if bench.failures:
        L.append('## FAILURES')
        L.append('')
        for what, msg in bench.failures:
            L.append(f'* {what}: `{msg.splitlines()[-1][:400] if msg else ""}`')
        L.append('')
    L.append('## Raw per-run values')
    L.append('')
    L.append('```json')
    L.append(json.dumps({**bench.results, 'cvc': bench.cvc, 'args': {k: v for k, v in vars(a).items()}},
                        indent=None, default=lambda o: round(o, 6) if isinstance(o, float) else str(o)))
    L.append('```')
    text = '\n'.join(L) + '\n'

    os.makedirs(a.out_dir, exist_ok=True)
    suffix = '-tiny' if a.tiny else ''
    stamp = now.strftime('%Y%m%d-%H%M%S')
    path = os.path.join(a.out_dir, f'{stamp}{suffix}.md')
    with open(path, 'w') as f:
        f.write(text)
    with open(os.path.join(a.out_dir, f'latest{suffix}.md'), 'w') as f:
        f.write(text)
    png = os.path.join(a.out_dir, f'ratios{suffix}.png')
    chart_err = draw_chart(chart, png, a)
    if chart_err:
        bench.failures.append(('chart', chart_err))
    return text, path, png


def draw_chart(chart, png, a):
    """Horizontal bars of the stock/cworker ratios, log scale (gnuplot); one colour per
    protocol, grey for what does not depend on it."""
    if not chart:
        return 'no ratios to draw'
    colours = {'msgpack': 0x3070b0, 'pb': 0xd07020, None: 0x808080}
    with tempfile.TemporaryDirectory(prefix='bench-plot-') as d:
        dat = os.path.join(d, 'ratios.dat')
        with open(dat, 'w') as f:
            for i, (label, ratio, protocol) in enumerate(reversed(chart)):
                if protocol:
                    label = f'{PROTOCOL_NAMES[protocol]}: {label}'
                lab = label.replace('"', "'").replace('`', '')
                f.write(f'{i} {ratio:.6g} "{lab}" {colours[protocol]}\n')
        n = len(chart)
        height = 120 + 28 * n
        script = f'''
set terminal pngcairo size 1100,{height} font "Sans,10"
set output "{png}"
set title "stock buildbot-worker / cworker (median; > 1: cworker better; blue msgpack, orange PB){' — tiny run' if a.tiny else ''}"
set logscale x 10
set xrange [0.1:*]
set xlabel "ratio (log scale)"
set yrange [-0.7:{n - 0.3}]
set ytics nomirror
set grid xtics
set style fill solid 0.7
set key off
set lmargin 64
set arrow from 1, graph 0 to 1, graph 1 nohead lc rgb "black" lw 1.5
plot "{dat}" using (1):1:(1):2:($1-0.35):($1+0.35):4:ytic(3) with boxxyerror lc rgb variable, \\
     "{dat}" using 2:1:(sprintf("%.3g×", $2)) with labels left offset 0.5,0 font "Sans,9"
'''
        r = subprocess.run(['gnuplot'], input=script, capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(png):
            return f'gnuplot failed: {r.stderr[-1000:]}'
    return None


# --------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog='bench/run', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tiny', action='store_true',
                   help='tiny sizes, 1 run each (a smoke test: about a minute)')
    p.add_argument('--runs', type=int, help='runs per kind (default 3)')
    p.add_argument('--log-mib', type=int, help='stdout step size (default 100)')
    p.add_argument('--upload-mib', type=int, help='FileUpload size (default 200)')
    p.add_argument('--dir-mib', type=int, help='DirectoryUpload total size (default 200)')
    p.add_argument('--dir-files', type=int, help='DirectoryUpload file count (default 200)')
    p.add_argument('--download-mib', type=int, help='FileDownload size (default 200)')
    p.add_argument('--steps', type=int, help='trivial steps in one build (default 50)')
    p.add_argument('--cvc-mib', type=int, help='C-against-C size (default 1024)')
    p.add_argument('--cvc-runs', type=int, help='C-against-C runs (default: --runs)')
    p.add_argument('--skip-cvc', action='store_true', help='skip the C-against-C part')
    p.add_argument('--kinds', default='stock,cworker',
                   help='workers (stock, cworker) or kinds (e.g. cworker-pb), comma-separated '
                        '(default stock,cworker)')
    p.add_argument('--protocols', default='msgpack,pb',
                   help='protocols, comma-separated (default msgpack,pb)')
    p.add_argument('--idle-wait', type=float, default=3.0, help='seconds after attach for idle RSS')
    p.add_argument('--settle', type=float, help='seconds to let a fresh master settle (default 1)')
    p.add_argument('--no-cvc-tmpfs', dest='cvc_tmpfs', action='store_false',
                   help='C against C: keep the files on disk (default: /dev/shm if it has room)')
    p.add_argument('--socat-block', type=int, default=1 << 20, help='socat -b for the raw limit')
    scale.bench_add_args(p)
    p.add_argument('--cworker', required=True, help=argparse.SUPPRESS)
    p.add_argument('--cworker-master', required=True, help=argparse.SUPPRESS)
    p.add_argument('--build-note', default='', help=argparse.SUPPRESS)
    p.add_argument('--workdir', help='scratch directory (default: a new one in $TMPDIR)')
    p.add_argument('--keep', action='store_true', help='keep the scratch directory')
    p.add_argument('--out-dir', default=os.path.join(HERE, 'results'), help='where results go')
    a = p.parse_args(argv)
    big = dict(runs=3, log_mib=100, upload_mib=200, dir_mib=200, dir_files=200, download_mib=200,
               steps=50, cvc_mib=1024, settle=1.0)
    tiny = dict(runs=1, log_mib=1, upload_mib=2, dir_mib=2, dir_files=4, download_mib=2,
                steps=5, cvc_mib=8, settle=0.3)
    for k, v in (tiny if a.tiny else big).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.cvc_runs is None:
        a.cvc_runs = a.runs
    words = {k.strip() for k in a.kinds.split(',') if k.strip()}
    protocols = {k.strip() for k in a.protocols.split(',') if k.strip()}
    bad = sorted((words - set(WORKERS) - set(KINDS)) | (protocols - set(PROTOCOLS)))
    if bad:
        p.error(f'unknown worker, kind or protocol: {", ".join(bad)} (workers: '
                f'{", ".join(WORKERS)}; protocols: {", ".join(PROTOCOLS)})')
    # the kinds in run order: a worker name selects it over every chosen protocol
    a.kinds = [k for k in KINDS if split_kind(k)[1] in protocols
               and (k in words or split_kind(k)[0] in words)]
    if not a.kinds:
        p.error('--kinds and --protocols select nothing')
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    own_workdir = a.workdir is None
    a.workdir = a.workdir or tempfile.mkdtemp(prefix='cworker-bench-')
    os.makedirs(a.workdir, exist_ok=True)
    bench = Bench(a)
    try:
        bench.run()
    except Exception as e:  # noqa: BLE001
        bench.fail('benchmark', e)
        bench.loadavg_end = os.getloadavg()
        bench.elapsed = 0.0
        if not hasattr(bench, 'loadavg_start'):
            bench.loadavg_start = bench.loadavg_end
    finally:
        if own_workdir and not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)
        cvc_root = getattr(bench, 'cvc_root', None)
        if cvc_root and cvc_root != a.workdir and not a.keep:
            shutil.rmtree(cvc_root, ignore_errors=True)
    text, path, png = write_report(bench, a)
    print()
    print(text.split('## Raw per-run values')[0].rstrip())
    print()
    print(f'written: {os.path.relpath(path)}, {os.path.relpath(png)}')
    if bench.failures:
        print(f'{len(bench.failures)} measurement(s) FAILED', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
