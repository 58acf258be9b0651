"""The allocation-failure sweep: fail the Nth allocation of cworker's own code
for every N across a scripted session, and require a clean end every time.

    oom_sweep.py CWORKER_OOM CWORKER_MASTER

The session (driven by cworker-master on loopback, no Buildbot master): the
worker attaches, runs `sh -c 'echo hello; echo oops >&2; exit 3'`, takes a
file (put, download_file), hands one back (get, upload_file), then gets
SIGTERM.  First a run without failures counts the allocations (K); then for
every N in 1..K a fresh worker fails its Nth allocation.  Whatever the
failure does to the session (the command may fail, the link may be lost and
retried), the worker must

  * not crash (no signal death, no sanitizer report: run this under ASan to
    catch leaks and memory errors, ASAN_OPTIONS/UBSAN_OPTIONS come from the
    environment and their log_path is checked),
  * not hang: it exits within 10 s of SIGTERM, and the session's steps end
    within their timeouts,
  * exit with 0, 1 (an orderly error) or 2 (a start-up error with its
    message, e.g. out of memory while reading the options), never abort.

With CW_OOM_RELAY=PATH-TO-cworker-relay every session goes through a relay
of its own (`cworker --relay`), so the failures land in the tunnel and the
bridge as well.

Prints one line per failing N and a summary; exit status 1 if any failed.
CW_OOM_STRIDE=S tests every S-th N only (for a quick local run).  Sessions
run 12 at a time (each mostly waits: the worker reconnects between the steps).
"""
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

WORKER, MASTER = sys.argv[1], sys.argv[2]
RELAY = os.environ.get('CW_OOM_RELAY')
PW = 'sweep-pass'


_ports_lock = threading.Lock()
_ports_given = set()


def free_port():
    """A loopback port free now and not handed to another session of this sweep (the
    sessions run side by side)."""
    with _ports_lock:
        while True:
            s = socket.socket()
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
            s.close()
            if port not in _ports_given:
                _ports_given.add(port)
                return port


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('CWORKER_', 'CW_', 'BUILDMASTER', 'WORKER'))}
    env.update(extra or {})
    return env


def master(port, *args, timeout):
    """One cworker-master operation; its exit code, or None when it had to be killed."""
    env = clean_env({'CWORKER_PASSWORD': PW})
    p = subprocess.Popen([MASTER, *args[:1], '--listen', f'127.0.0.1:{port}', '--worker', 'w1',
                          '--wait', str(timeout), *args[1:]], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return p.wait(timeout + 5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def session(n, work, count_file=None):
    """One scripted session with allocation n failing (0: none).  Returns a list of
    problems (empty: clean)."""
    port = free_port()
    base = os.path.join(work, f'w{n}')
    os.makedirs(base)
    pwfile = os.path.join(work, 'pw')
    with open(pwfile, 'w') as f:
        f.write(PW + '\n')
    os.chmod(pwfile, 0o600)
    src = os.path.join(work, 'src.bin')
    if not os.path.exists(src):
        with open(src, 'wb') as f:
            f.write(os.urandom(200000))
    extra = {'CW_FAIL_ALLOC': str(n)}
    if count_file:
        extra['CW_ALLOC_COUNT'] = count_file
    log = open(os.path.join(base, 'log'), 'wb')
    via = []
    relay = None
    if RELAY:
        rport = free_port()
        relay = subprocess.Popen([RELAY, '--listen', f'127.0.0.1:{rport}', '--master',
                                  f'127.0.0.1:{port}'], env=clean_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        via = ['--relay', f'127.0.0.1:{rport}']
    w = subprocess.Popen([WORKER, '--master', f'127.0.0.1:{port}', '--protocol', 'msgpack', '--name', 'w1', '--basedir',
                          base, '--password-file', pwfile, '--backoff-max', '1',
                          '--dead-timeout', '5', *via],
                         env=clean_env(extra), stdout=log, stderr=subprocess.STDOUT)
    problems = []
    rcs = [master(port, 'run', '--', 'sh', '-c', 'echo hello; echo oops >&2; exit 3', timeout=3),
           master(port, 'put', src, 'got.bin', timeout=3),
           master(port, 'get', 'got.bin', os.path.join(base, 'back.bin'), timeout=3)]
    if w.poll() is None:
        w.send_signal(signal.SIGTERM)
    try:
        rc = w.wait(10)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()
        problems.append('did not exit within 10 s of SIGTERM (hang)')
        rc = None
    log.close()
    if relay is not None:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
    if rc is not None and rc < 0:
        problems.append(f'killed by signal {-rc}')
    elif rc is not None and rc not in (0, 1, 2):
        problems.append(f'exit status {rc}')
    if n == 0 and rcs != [3, 0, 0]:
        problems.append(f'the session without failures did not go through: {rcs}')
    if problems:
        with open(os.path.join(base, 'log'), 'rb') as f:
            tail = f.read()[-1500:].decode('utf-8', 'replace')
        problems.append('log tail:\n' + tail)
    return problems


def sanitizer_reports():
    """Files written by ASan/UBSan through log_path, if the environment set one."""
    out = []
    for var in ('ASAN_OPTIONS', 'UBSAN_OPTIONS'):
        for opt in os.environ.get(var, '').split(':'):
            if opt.startswith('log_path='):
                prefix = opt[len('log_path='):]
                d, b = os.path.split(prefix)
                if os.path.isdir(d):
                    out += [os.path.join(d, f) for f in os.listdir(d) if f.startswith(b)]
    return sorted(set(out))


def main():
    stride = int(os.environ.get('CW_OOM_STRIDE', '1'))
    with tempfile.TemporaryDirectory(prefix='cw-oom-') as work:
        count_file = os.path.join(work, 'count')
        problems = session(0, work, count_file)
        if problems:
            print('the session fails without any injected failure:\n' + '\n'.join(problems))
            return 1
        with open(count_file) as f:
            k = int(f.read())
        before = set(sanitizer_reports())
        t0 = time.monotonic()
        failed = 0
        ns = list(range(1, k + 1, stride))
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            results = pool.map(lambda n: (n, session(n, work)), ns)
            for n, problems in results:
                if problems:
                    failed += 1
                    print(f'allocation {n} of {k}: ' + '\n  '.join(problems), flush=True)
        new = sorted(set(sanitizer_reports()) - before)
        for path in new:
            failed += 1
            with open(path, errors='replace') as f:
                print(f'sanitizer report {path}:\n' + f.read()[:3000], flush=True)
        tested = len(range(1, k + 1, stride))
        print(f'{tested} of {k} allocations failed one at a time in {time.monotonic() - t0:.0f} s: '
              f'{tested - failed} clean, {failed} not')
        return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
