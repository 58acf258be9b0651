"""The log and upload rows of bench/bench.py only, with an optional perf profile.

  /usr/bin/python3 bench/cpupaths.py --cworker build-release/src/worker/cworker \
      [--runs 3] [--kinds stock,cworker] [--protocols pb,msgpack] [--perf DIR]
  /usr/bin/python3 bench/cpupaths.py --cworker before=OLD --cworker after=NEW \
      --kinds stock,before,after      # two builds of cworker side by side

Each run starts a fresh stock Buildbot 3.7 master (as bench/bench.py does), attaches one worker,
runs a warm-up build, then the 100 MiB stdout step (`cat` of a file of 100-byte lines) and the
200 MiB FileUpload, and reads the worker's CPU (utime+stime) around each build.  Kinds alternate
within each run (stock, cworker; msgpack, PB), so both workers see the same machine load.  The
stored log's and the uploaded file's sha256 are checked.  --perf DIR records `perf record -g`
of the cworker process during each step (DIR/<kind>-<step>-<run>.data).  Prints per-run values
and the medians; no speed is asserted.  Used for docs/performance.md's "CPU of the log and
upload paths".
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench as B  # noqa: E402
import bbmaster  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--cworker', action='append', required=True,
                   help='PATH, or LABEL=PATH (repeatable; a label is a kind)')
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--kinds', default='stock,cworker')
    p.add_argument('--protocols', default='pb,msgpack')
    p.add_argument('--log-mib', type=int, default=100)
    p.add_argument('--upload-mib', type=int, default=200)
    p.add_argument('--steps', default='log,upfile')
    p.add_argument('--perf', help='record perf profiles of cworker into this directory')
    p.add_argument('--settle', type=float, default=1.0)
    a = p.parse_args()
    a.binaries = {}
    for c in a.cworker:
        label, _, path = c.rpartition('=')
        a.binaries[label or 'cworker'] = os.path.abspath(path)
    workers = [w for w in a.kinds.split(',') if w]
    protocols = [x for x in a.protocols.split(',') if x]
    steps = [s for s in a.steps.split(',') if s]
    kinds = [f'{w}-{p}' for p in protocols for w in workers]
    work = tempfile.mkdtemp(prefix='cworker-cpupaths-')
    ns = argparse.Namespace(workdir=work, steps=1, cworker=None, dir_mib=1, dir_files=1,
                            log_mib=a.log_mib, upload_mib=a.upload_mib, download_mib=1,
                            skip_cvc=True, settle=a.settle, keep=False)
    b = B.Bench(ns)
    if a.perf:
        os.makedirs(a.perf, exist_ok=True)
    res = {k: {s: [] for s in steps} for k in kinds}
    print(f'load average at start: {os.getloadavg()}', flush=True)
    try:
        b.log('generating data')
        os.makedirs(b.data, exist_ok=True)
        b.logfile = B.make_text_file(os.path.join(b.data, 'log.txt'), a.log_mib * B.MIB)
        b.logfile_sha = B.sha256_file(b.logfile)
        b.upfile = B.make_random_file(os.path.join(b.data, 'up.bin'), a.upload_mib * B.MIB)
        b.upfile_sha = B.sha256_file(b.upfile)
        b.updir = b.downfile = b.data
        for i in range(a.runs):
            for kind in kinds:
                one(b, a, kind, i, steps, res[kind])
    finally:
        bbmaster.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f'load average at end: {os.getloadavg()}')
    print('\nworker CPU, s: median [min-max] (per run)')
    for s in steps:
        for proto in protocols:
            meds = {}
            for w in workers:
                v = res[f'{w}-{proto}'][s]
                if v:
                    meds[w] = statistics.median(v)
                    print(f'  {s:7} {w:8} {proto:8} {meds[w]:.3f} [{min(v):.3f}-{max(v):.3f}] '
                          f'({", ".join(f"{x:.3f}" for x in v)})')
            for w, v in meds.items():
                if w != 'stock' and 'stock' in meds and v:
                    print(f'  {s:7} stock/{w:10} {proto:8} {meds["stock"] / v:.1f}x')


def utime_stime(pid):
    """(user, system) CPU seconds of a process (10 ms ticks)."""
    with open(f'/proc/{pid}/stat', 'rb') as f:
        fields = f.read().rsplit(b')', 1)[1].split()
    return int(fields[11]) / B.CLK_TCK, int(fields[12]) / B.CLK_TCK


def one(b, a, kind, i, steps, out):
    worker, protocol = B.split_kind(kind)
    rundir = os.path.join(b.work, f'run{i}-{kind}')
    os.makedirs(rundir)
    ports = b._ports(3)
    m = bbmaster.Master(os.path.join(rundir, 'master'), b.builders(rundir),
                        msgpack_port=ports[0], www_port=ports[1],
                        pb_port=ports[2] if protocol == 'pb' else None)
    w = db = None
    try:
        m.start()
        db = b._db(m)
        bbmaster.wait_for(lambda: db.execute("SELECT 1 FROM workers WHERE name='w1'").fetchone(),
                          30, 'the master to configure its worker')
        time.sleep(a.settle)
        basedir = os.path.join(rundir, 'worker')
        if worker == 'stock':
            w = bbmaster.make_worker('stock', basedir, m, 'w1', 'pass1', protocol=protocol)
        else:
            w = bbmaster.make_worker('cworker', basedir, m, 'w1', 'pass1', protocol=protocol,
                                     binary=a.binaries[worker])
        if worker == 'stock':
            w.create()
        w.start(wait=False)
        b.wait_attached(db, 'w1', w, 60)
        w.wait_connected(30)
        b.measure_build(m, db, w, 'warmup')
        for s in steps:
            perfs = []
            if a.perf and worker != 'stock':
                base = os.path.join(a.perf, f'{kind}-{s}-{i}')
                perfs.append(subprocess.Popen(
                    ['perf', 'record', '-q', '-g', '-p', str(w.pid), '-o', base + '.data'],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                # system calls and context switches of the worker during the step (not of
                # the command it runs: --no-inherit; the upload has no child, but libuv's
                # thread pool may start during it)
                events = ('raw_syscalls:sys_enter,context-switches,task-clock,page-faults,'
                          'syscalls:sys_enter_read,syscalls:sys_enter_write,'
                          'syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,'
                          'syscalls:sys_enter_pread64,syscalls:sys_enter_preadv2')
                perfs.append(subprocess.Popen(
                    ['perf', 'stat', '-e', events, '-p', str(w.pid), '-o', base + '.stat']
                    + (['--no-inherit'] if s == 'log' else []),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                if os.environ.get('CPUPATHS_SYSCALLS'):
                    # which system calls: perf script DIR/*.sys | ... (ids, see ausyscall)
                    perfs.append(subprocess.Popen(
                        ['perf', 'record', '-q', '-e', 'raw_syscalls:sys_enter', '--no-inherit',
                         '-p', str(w.pid), '-o', base + '.sys'],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(0.5)
            us0 = utime_stime(w.pid)
            x = b.measure_build(m, db, w, s)
            us1 = utime_stime(w.pid)
            for perf in perfs:
                perf.send_signal(signal.SIGINT)
                perf.wait(60)
            if s == 'log':
                digest, size = x['build'].log('cat').digest('o')
                if digest != b.logfile_sha:
                    raise bbmaster.HarnessError(f'{kind}: stdout log differs ({size} bytes)')
            elif s == 'upfile':
                dest = os.path.join(rundir, 'dest-file.bin')
                if B.sha256_file(dest) != b.upfile_sha:
                    raise bbmaster.HarnessError(f'{kind}: FileUpload: uploaded file differs')
                os.unlink(dest)
            out[s].append(x['wcpu'])
            b.log(f'run {i + 1} {kind} {s}: wall {x["wall"]:.2f} s, worker CPU {x["wcpu"]:.3f} s '
                  f'(user {us1[0] - us0[0]:.2f}, system {us1[1] - us0[1]:.2f}), '
                  f'master CPU {x["mcpu"]:.2f} s, load {os.getloadavg()[0]:.2f}')
    finally:
        if db is not None:
            db.close()
        if w is not None:
            w.stop(timeout=20)
        m.stop()
        shutil.rmtree(rundir, ignore_errors=True)


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
