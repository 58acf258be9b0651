"""The demo, in two parts, everything on 127.0.0.1:

1. the embedded default: cworker-master (the master end of the protocol, in C)
   runs a command on cworker and copies a file there and back;
2. the real thing: a stock Buildbot 3.7 master with cworker attached, one
   forced build of the "hello" builder, then the results the master stored."""
import filecmp
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..', 'tests', 'integration'))
import bbmaster  # noqa: E402

STEPS = """[
    steps.ShellCommand(name='hello', command='echo hello world'),
    steps.ShellCommand(name='about-the-worker',
                       command=['sh', '-c', 'echo "running on $(uname -sm) as $(id -un), in $PWD"']),
]"""


def embedded(binary, master_bin, tmp):
    """cworker-master run/put/get against a cworker attached to it; -> exit status."""
    port = bbmaster.free_port()
    pw = os.path.join(tmp, 'password')
    with open(pw, 'w') as f:
        f.write('demo-pass\n')
    listen = f'127.0.0.1:{port}'
    common = ['--listen', listen, '--worker', 'demo-worker', '--password-file', pw, '--wait', '30']
    print(f'==> cworker-master (C) on {listen}, cworker attached to it')
    log = open(os.path.join(tmp, 'cworker-embedded.log'), 'wb')
    worker = subprocess.Popen([binary, '--master', listen, '--protocol', 'msgpack', '--name', 'demo-worker',
                               '--basedir', os.path.join(tmp, 'embedded-worker'),
                               '--password-file', pw, '--backoff-max', '1'],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        cmd = 'echo hello world; echo "running on $(uname -sm) as $(id -un), in $PWD"'
        print(f'$ cworker-master run ... -- sh -c \'{cmd}\'')
        sys.stdout.flush()
        t0 = time.monotonic()
        r = subprocess.run([master_bin, 'run', *common, '--', 'sh', '-c', cmd], timeout=60)
        print(f'    exit status {r.returncode} after {1000 * (time.monotonic() - t0):.0f} ms '
              '(including the attach)')
        if r.returncode != 0:
            return r.returncode
        src = os.path.join(tmp, 'payload.bin')
        with open(src, 'wb') as f:
            f.write(os.urandom(8 << 20))
        back = os.path.join(tmp, 'payload.back')
        for argv in (['put', *common, src, 'payload.bin'], ['get', *common, 'payload.bin', back]):
            print(f'$ cworker-master {argv[0]} ... {argv[-2]} {argv[-1]}')
            r = subprocess.run([master_bin, *argv], timeout=60)
            if r.returncode != 0:
                print(f'    failed: exit status {r.returncode}')
                return r.returncode
        same = filecmp.cmp(src, back, shallow=False)
        print(f'    8 MiB sent to the worker and fetched back: {"identical" if same else "DIFFERENT"}')
        return 0 if same else 1
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def main():
    binary = sys.argv[1]
    master_bin = sys.argv[2]
    with tempfile.TemporaryDirectory(prefix='cworker-demo-') as tmp:
        rc = embedded(binary, master_bin, tmp)
        if rc != 0:
            with open(os.path.join(tmp, 'cworker-embedded.log'), errors='replace') as f:
                print('--- cworker log ---\n' + f.read()[-4000:])
            return rc
        print()
        master = bbmaster.Master(os.path.join(tmp, 'master'), builders={'hello': STEPS},
                                 workers=[('demo-worker', 'demo-pass')])
        print('==> starting the Buildbot master (Debian buildbot 3.7) on 127.0.0.1')
        master.start()
        worker = None
        try:
            print(f'    msgpack port {master.msgpack_port}, REST API {master.url}')
            worker = bbmaster.CWorker(os.path.join(tmp, 'worker'), master, 'demo-worker',
                                      'demo-pass', binary=binary)
            t0 = time.monotonic()
            worker.start()
            master.wait_worker_connected('demo-worker', timeout=30)
            print(f'==> cworker attached in {1000 * (time.monotonic() - t0):.0f} ms '
                  f'(pid {worker.pid})')
            print('==> forcing a build of "hello" through the REST API')
            build = master.run_build('hello', timeout=120)
            print(f'==> build finished: {build.result}')
            for step in build.steps:
                print(f'    step {step.name:<20} {step.result}')
            for step in build.steps:
                if step.name == 'worker_preparation':
                    continue
                log = build.log(step.name)
                print(f'--- {step.name}: stdout ---')
                sys.stdout.write(log.stdout)
            return 0 if build.result == 'SUCCESS' else 1
        finally:
            if worker is not None:
                worker.stop()
            master.stop()


if __name__ == '__main__':
    sys.exit(main())
