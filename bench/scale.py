#!/usr/bin/python3
"""How many workers one `cworker-master serve` holds (issue 14, item 4).

Two measurements, each against a fresh `cworker-master serve --control SOCKET` on 127.0.0.1:

* **loadgen**: bench/loadgen opens N protocol-correct worker sessions from one process
  (default 10,000).  Reported: the time until all are attached, that every session answered
  at least one keepalive (serve --keepalive 3), serve's resident memory per session
  ((VmRSS with N - VmRSS before) / N), and the latency of commands run on chosen workers
  among them (`run NAME echo ...` on the control socket: request -> answer with exit code
  and output, measured by this script).
* **cworkers**: M real `cworker` processes (default 1,000; the static minimal build) attach,
  then serve is stopped and a new serve started on the same port: all M attach again.
  Reported: the time from the new serve's "listening" to its last "attached" log line, each
  process's RSS and PSS, serve's memory per session, and a command's latency on one of them.

Usage: bench/scale.py --master-bin B --loadgen-bin L [--cworker-bin W] [--sessions N]
                      [--cworkers M] [--json FILE]
Every process started here is stopped here, by its own PID.
"""

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status_kib(pid, key):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pss_kib(pid):
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def ask(path, line, timeout=30):
    """One control-socket request; returns (answer bytes, milliseconds)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    t0 = time.monotonic()
    s.sendall(line.encode() + b'\n')
    out = b''
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out, (time.monotonic() - t0) * 1000


def stats(path):
    out, _ = ask(path, 'stats')
    f = out.decode().split()
    return {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}


def wait_for(pred, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out waiting for {what}')
        time.sleep(interval)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Serve:
    """One `cworker-master serve` with a control socket; stderr to a file."""

    def __init__(self, binary, workdir, port, accounts, keepalive=None, tag='serve'):
        self.workdir = workdir
        self.port = port
        self.ctl = os.path.join(workdir, f'{tag}.ctl')
        self.errpath = os.path.join(workdir, f'{tag}.err')
        wf = os.path.join(workdir, 'workers.txt')
        if not os.path.exists(wf):
            with open(wf, 'w') as f:
                for name, pw in accounts:
                    f.write(f'{name} {pw}\n')
        args = [binary, 'serve', '--listen', f'127.0.0.1:{port}', '--workers', wf,
                '--control', self.ctl]
        if keepalive:
            args += ['--keepalive', str(keepalive)]
        self.err = open(self.errpath, 'wb')
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err, preexec_fn=raise_nofile)
        wait_for(lambda: os.path.exists(self.ctl) or self.proc.poll() is not None, 10,
                 'serve to listen')
        if self.proc.poll() is not None:
            raise RuntimeError(f'serve exited: {self.log()[-2000:]}')

    def log(self):
        with open(self.errpath, errors='replace') as f:
            return f.read()

    def rss(self):
        return status_kib(self.proc.pid, 'VmRSS')

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def log_time(line):
    m = re.match(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z', line)
    if not m:
        return None
    import datetime
    return datetime.datetime.fromisoformat(m.group(1)).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def run_commands(ctl, names, k, expect_prefix=None, spacing=0.0):
    """k commands on workers picked at random, `spacing` seconds apart (so that some meet
    serve's keepalive rounds); returns latencies (ms)."""
    lat = []
    for i in range(k):
        if i and spacing:
            time.sleep(spacing)
        name = random.choice(names)
        tag = f'scale-{random.randrange(1 << 30)}'
        out, ms = ask(ctl, f'run {name} echo {tag}')
        text = out.decode(errors='replace')
        if not text.startswith('exit 0 ') or tag not in text:
            raise RuntimeError(f'run on {name}: unexpected answer {text[:300]!r}')
        if expect_prefix and f'{name}:' not in text:
            raise RuntimeError(f'run on {name}: answered by someone else: {text[:300]!r}')
        lat.append(ms)
    return lat


def measure_loadgen(a, work):
    n = a.sessions
    r = {'sessions': n}
    names = [f'lg{i}' for i in range(n)]
    port = free_port()
    d = os.path.join(work, 'loadgen')
    os.makedirs(d)
    serve = Serve(a.master_bin, d, port, [(x, 'pass') for x in names], keepalive=a.keepalive)
    lg = None
    try:
        time.sleep(0.2)
        rss0 = serve.rss()
        lg_out = open(os.path.join(d, 'loadgen.out'), 'w+')
        t0 = time.monotonic()
        lg = subprocess.Popen([a.loadgen_bin, '--connect', f'127.0.0.1:{port}', '--count', str(n),
                               '--prefix', 'lg', '--password', 'pass', '--stats', '1'],
                              stdin=subprocess.DEVNULL, stdout=lg_out, stderr=subprocess.STDOUT,
                              preexec_fn=raise_nofile)

        def lg_text():
            lg_out.flush()
            with open(lg_out.name) as f:
                return f.read()

        def all_attached():
            if lg.poll() is not None:
                raise RuntimeError(f'loadgen exited: {lg_text()[-2000:]}')
            return re.search(r'attached (\d+)/\1 in ([0-9.]+) ms', lg_text())

        m = wait_for(all_attached, a.timeout, f'{n} sessions to attach', 0.05)
        r['attach_all_ms'] = float(m.group(2))
        r['attach_wall_s'] = time.monotonic() - t0
        st = wait_for(lambda: (s := stats(serve.ctl))['attached'] == n and s, 30,
                      'serve to count every session')
        r['serve_attached'] = st['attached']

        # every session answers a keepalive (serve sends one every --keepalive seconds)
        def keepalives():
            ms = re.findall(r'keepalives=(\d+)', lg_text())
            return ms and int(ms[-1]) >= n
        wait_for(keepalives, 3 * a.keepalive + 30, 'a keepalive answered by every session', 0.2)
        last = re.findall(r'stats .*', lg_text())[-1]
        r['keepalives_answered'] = int(re.search(r'keepalives=(\d+)', last).group(1))
        r['lost'] = int(re.search(r'lost=(\d+)', last).group(1))
        r['loadgen_rss_kib'] = int(re.search(r'rss_kib=(\d+)', last).group(1))

        rss1 = serve.rss()
        r['serve_rss0_kib'] = rss0
        r['serve_rss_kib'] = rss1
        r['serve_kib_per_session'] = (rss1 - rss0) / n
        # spread over one keepalive period: some commands meet the round of 10,000 keepalives
        lat = run_commands(serve.ctl, names, a.commands, expect_prefix=True,
                           spacing=a.keepalive / max(1, a.commands))
        r['cmd_ms_median'] = statistics.median(lat)
        r['cmd_ms_max'] = max(lat)
        r['commands'] = len(lat)
        # still all there, nothing lost
        st = stats(serve.ctl)
        r['serve_attached_end'] = st['attached']
        lg.send_signal(signal.SIGTERM)
        lg.wait(60)
        wait_for(lambda: stats(serve.ctl)['connections'] == 0, 60, 'serve to see every session go')
        r['serve_rss_after_kib'] = serve.rss()
    finally:
        if lg is not None and lg.poll() is None:
            lg.kill()
            lg.wait()
        serve.stop()
    return r


def measure_cworkers(a, work):
    m = a.cworkers
    r = {'cworkers': m, 'cworker_bin': a.cworker_bin}
    names = [f'cw{i}' for i in range(m)]
    port = free_port()
    d = os.path.join(work, 'cworkers')
    os.makedirs(d)
    serve = Serve(a.master_bin, d, port, [(x, 'pw') for x in names], tag='serve1')
    procs = []
    serve2 = None
    wlog = open(os.path.join(d, 'workers.log'), 'wb')
    env = dict(os.environ, CWORKER_PASSWORD='pw')
    try:
        time.sleep(0.2)
        rss0 = serve.rss()
        t0 = time.monotonic()
        for name in names:
            bd = os.path.join(d, name)
            procs.append(subprocess.Popen(
                [a.cworker_bin, '--protocol', 'msgpack', '--master', f'127.0.0.1:{port}',
                 '--name', name, '--basedir', bd, '--backoff-max', '5'],
                stdin=subprocess.DEVNULL, stdout=wlog, stderr=wlog, env=env))
        r['spawn_s'] = time.monotonic() - t0
        wait_for(lambda: stats(serve.ctl)['attached'] == m, a.timeout, f'{m} cworkers to attach',
                 0.05)
        r['first_attach_all_s'] = time.monotonic() - t0
        time.sleep(2)  # idle
        rss = [status_kib(p.pid, 'VmRSS') for p in procs]
        pss = [pss_kib(p.pid) for p in procs]
        r['cworker_rss_kib_mean'] = statistics.mean(rss)
        r['cworker_pss_kib_mean'] = statistics.mean(pss)
        r['serve_kib_per_session'] = (serve.rss() - rss0) / m
        lat = run_commands(serve.ctl, names, min(a.commands, 10))
        r['cmd_ms_median'] = statistics.median(lat)
        r['cmd_ms_max'] = max(lat)

        # the restart: every worker loses its master and attaches to the new one
        serve.stop()
        serve2 = Serve(a.master_bin, d, port, None, tag='serve2')
        wait_for(lambda: stats(serve2.ctl)['attached'] == m, a.timeout,
                 f'{m} cworkers to attach again', 0.01)
        log = serve2.log()
        t_listen = log_time(next(x for x in log.splitlines() if 'listening on' in x))
        att = [log_time(x) for x in log.splitlines() if 'attached from' in x]
        r['reattached'] = len(att)
        r['restart_last_attach_s'] = max(att) - t_listen
        r['restart_median_attach_s'] = statistics.median(att) - t_listen
        alive = sum(p.poll() is None for p in procs)
        r['cworkers_alive'] = alive
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        wlog.close()
        if serve2:
            serve2.stop()
        serve.stop()
    return r


# ---- bench/run's part (bench.py calls these three; its own edits are one line each) ----

TARGET_SESSIONS = 10000
TARGET_CMD_MS = 50


def bench_add_args(p):
    """bench.py's options for this part."""
    p.add_argument('--skip-scale', action='store_true', help='skip the master-endpoint scale part')
    p.add_argument('--scale-sessions', type=int,
                   help=f'loadgen sessions on one serve (default {TARGET_SESSIONS})')
    p.add_argument('--scale-cworkers', type=int, help='real cworker processes (default 1000)')
    p.add_argument('--loadgen', help='bench/loadgen binary (default: beside cworker-master)')
    p.add_argument('--cworker-static-min', help='cworker for the real-process part (default: '
                   'build-static-min/src/worker/cworker if built, else --cworker)')


def bench_run(a, log):
    """Run both parts as bench/run asked; returns the results (or raises)."""
    if getattr(a, 'skip_scale', False):
        return None
    sessions = a.scale_sessions or (300 if a.tiny else TARGET_SESSIONS)
    cworkers = a.scale_cworkers if a.scale_cworkers is not None else (20 if a.tiny else 1000)
    master_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        a.cworker_master))))
    loadgen = a.loadgen or os.path.join(master_dir, 'bench', 'loadgen')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    static = a.cworker_static_min or os.path.join(repo, 'build-static-min', 'src', 'worker',
                                                  'cworker')
    cw = static if os.access(static, os.X_OK) and not a.tiny else a.cworker
    log(f'master endpoint scale: {sessions} loadgen sessions, {cworkers} cworker processes '
        f'({os.path.relpath(cw, repo)})')
    out = os.path.join(tempfile.mkdtemp(prefix='cworker-scale-json-'), 'scale.json')
    argv = ['--master-bin', a.cworker_master, '--loadgen-bin', loadgen, '--cworker-bin', cw,
            '--sessions', str(sessions), '--cworkers', str(cworkers), '--json', out]
    main(argv)
    with open(out) as f:
        res = json.load(f)
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    res['cworker_bin_rel'] = os.path.relpath(cw, repo)
    res['static'] = cw == static
    return res


def bench_report(res):
    """The report's section (markdown lines)."""
    if not res:
        return []
    L = ['## The master endpoint at scale: one `cworker-master serve`', '',
         'bench/scale.py: bench/loadgen (one process, N protocol-correct msgpack worker sessions: '
         'handshake, auth, attach answers, keepalives, a trivial `shell` command) against a fresh '
         '`serve --control SOCKET --keepalive 3`; then M real cworker processes attach, serve is '
         'stopped and a new one started on the same port.  Memory per session = (serve\'s VmRSS '
         'with the sessions − before) / sessions.  Command latency: `run NAME echo TAG` on the '
         'control socket → the answer with exit code and output, at workers picked at random, '
         'spread over one keepalive period (so some meet a round of keepalives to every session).',
         '',
         '| figure | value | target |', '|---|---|---|']
    ok = lambda c: '✓' if c else '✗ missed'  # noqa: E731
    g = res.get('loadgen')
    if g:
        n = g['sessions']
        held = g['serve_attached_end'] == n and g['lost'] == 0
        L.append(f'| loadgen sessions attached and held (none lost) | {g["serve_attached_end"]:,} of '
                 f'{n:,} | {TARGET_SESSIONS:,} {ok(held and n >= TARGET_SESSIONS)} |')
        L.append(f'| time until all {n:,} attached | {g["attach_all_ms"] / 1000:.2f} s | |')
        L.append(f'| keepalives answered (every session at least once) | {g["keepalives_answered"]:,} '
                 f'| ≥ {n:,} {ok(g["keepalives_answered"] >= n)} |')
        L.append(f'| command on a chosen worker among them: median / max of {g["commands"]} | '
                 f'{g["cmd_ms_median"]:.2f} / {g["cmd_ms_max"]:.2f} ms | ≤ {TARGET_CMD_MS} ms '
                 f'{ok(g["cmd_ms_max"] <= TARGET_CMD_MS)} |')
        L.append(f'| serve memory per idle session | {g["serve_kib_per_session"]:.1f} KiB '
                 f'({g["serve_rss0_kib"] / 1024:.1f} → {g["serve_rss_kib"] / 1024:.1f} MiB) | |')
        L.append(f'| loadgen memory per session (the client side, for scale) | '
                 f'{g["loadgen_rss_kib"] / n:.1f} KiB | |')
    c = res.get('cworkers')
    if c:
        m = c['cworkers']
        what = 'static minimal' if res.get('static') else res.get('cworker_bin_rel', '')
        L.append(f'| real cworker processes ({what}) attached | {m:,} | |')
        L.append(f'| after a serve restart: all {m:,} attached again; the last after | '
                 f'{c["restart_last_attach_s"]:.2f} s (median {c["restart_median_attach_s"]:.2f} s) '
                 f'| {ok(c["reattached"] == m and c["cworkers_alive"] == m)} all attached |')
        L.append(f'| memory per cworker process: RSS / PSS | {c["cworker_rss_kib_mean"] / 1024:.2f} '
                 f'MiB / {c["cworker_pss_kib_mean"]:.0f} KiB | |')
        L.append(f'| serve memory per cworker session | {c["serve_kib_per_session"]:.1f} KiB | |')
        L.append(f'| command on a chosen cworker (`echo`, a real process): median / max | '
                 f'{c["cmd_ms_median"]:.2f} / {c["cmd_ms_max"]:.2f} ms | ≤ {TARGET_CMD_MS} ms '
                 f'{ok(c["cmd_ms_max"] <= TARGET_CMD_MS)} |')
    L.append('')
    return L


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--master-bin', required=True)
    p.add_argument('--loadgen-bin', required=True)
    p.add_argument('--cworker-bin', help='cworker for the real-process part (static minimal)')
    p.add_argument('--sessions', type=int, default=10000)
    p.add_argument('--cworkers', type=int, default=1000)
    p.add_argument('--commands', type=int, default=20, help='commands on chosen workers')
    p.add_argument('--keepalive', type=float, default=3.0, help="serve's keepalive period")
    p.add_argument('--timeout', type=float, default=300)
    p.add_argument('--json', help='write the results here as JSON')
    a = p.parse_args(argv)
    raise_nofile()
    work = tempfile.mkdtemp(prefix='cworker-scale-')
    res = {}
    try:
        if a.sessions > 0:
            res['loadgen'] = measure_loadgen(a, work)
            print('loadgen:', json.dumps(res['loadgen']), flush=True)
        if a.cworkers > 0 and a.cworker_bin:
            res['cworkers'] = measure_cworkers(a, work)
            print('cworkers:', json.dumps(res['cworkers']), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(res, f)
    return 0


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
