"""The demo: a stock Buildbot 3.7 master on 127.0.0.1, cworker attached to
it, one forced build of the "hello" builder, then the stored results."""
import os
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


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix='cworker-demo-') as tmp:
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
