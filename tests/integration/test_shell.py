"""`shell` command semantics of cworker against the real 3.7 master (reference §7.1).

Every test checks what the master STORED (step result, log text read back from the master
database) and, for the kill tests, which processes are left on the machine. One master
and one cworker (plus, lazily, one stock worker for the `both_workers` cases) serve the
whole module.
"""

import hashlib
import os
import re
import time

import pytest

import bbmaster
from cwhelpers import (WORKER_CREDS, WorkerPool, dump_worker_logs, elapsed_header,  # noqa: F401
                       per_kind, wait_processes)

# The cworker's own environment gets these (checked by test_env_rules).
CWORKER_ENV = {
    'CW_WORKER_VAR': 'worker-value',
    'CW_DROP_ME': 'present-in-worker',
    'PYTHONPATH': '/worker/pp',
}

MARKER_ENV = "env={'CW_MARKER': util.Property('marker')}"

# 1 MiB + a few short lines, one Python expression evaluated both in master.cfg and here.
# Over PB the master cannot send one string above banana's 640 KiB (the stock worker could not
# take it either): 600 KiB there, still several pipe buffers.
STDIN_LINES = 16384 if bbmaster.PROTOCOL == 'msgpack' else 9600
STDIN_EXPR = ("'first line\\nsecond line: caf\\u00e9 \\u20ac\\n\\nafter an empty line\\n' + "
              f"''.join('%06d ' % i + 'x' * 56 + '\\n' for i in range({STDIN_LINES}))")
STDIN_TEXT = eval(STDIN_EXPR)

ENV_STEP_ENV = {
    'CW_DROP_ME': None,                     # nil: removed although the worker has it
    'HOME': None,                           # nil: removed
    'CW_LIST': ['/opt/a', '/opt/b', '/opt/c'],  # list: joined with ':'
    'CW_EXP': 'x-${CW_WORKER_VAR}-y',       # ${VAR} from the worker's environment
    'CW_UNSET': 'a${CW_NOT_SET_ANYWHERE_XYZ}b',  # unset -> ''
    'CW_TWO': '${CW_WORKER_VAR}:${CW_WORKER_VAR}',
    'PYTHONPATH': '/step/pp',               # ':${PYTHONPATH}' appended by the worker
    'CW_PLAIN': 'plain value with spaces',
}

BOTH = ('cworker', 'stock')

BUILDERS_BOTH = {
    'hello': "[steps.ShellCommand(command='echo hello world')]",
    'argv': "[steps.ShellCommand(command=['printf', '%s|\\n', 'a b', \"c'd\", '$HOME', '*', ';', ''])]",
    'string': "[steps.ShellCommand(command=\"printf '%s|\\\\n' 'a b' \\\"c'd\\\" $((2+3)) "
              "\\\"$CW_STR\\\"\", env={'CW_STR': 'from env'})]",
    'pathlookup': "[steps.ShellCommand(command=['cw-path-probe', 'arg 1'], "
                  "env={'PATH': util.Interpolate('%(prop:bindir)s:/usr/bin:/bin')})]",
    'exit3': "[steps.ShellCommand(command='echo before; exit 3')]",
    'streams': "[steps.ShellCommand(command='echo out1; echo err1 >&2; echo out2; echo err2 >&2; "
               "printf o-part; printf e-part >&2; sleep 0.2; echo \" o-end\"; echo \" e-end\" >&2; "
               "i=0; while [ $i -lt 200 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done')]",
}

BUILDERS_CW = {
    'env': f"[steps.ShellCommand(command=['env'], env={ENV_STEP_ENV!r})]",
    'timeout': "[steps.ShellCommand(command=util.Interpolate('sleep 1000 & sleep 1000; wait "
               f"# %(prop:marker)s'), timeout=2, {MARKER_ENV})]",
    'maxtime': "[steps.ShellCommand(command=util.Interpolate('echo started; sleep 1000 "
               f"# %(prop:marker)s'), maxTime=2, {MARKER_ENV})]",
    'maxtime_trap': "[steps.ShellCommand(command=util.Interpolate(\"trap '' TERM; "
                    "sleep 1000 & echo started; sleep 1000; wait # %(prop:marker)s\"), "
                    f"maxTime=2, sigtermTime=1, {MARKER_ENV})]",
    'sleeper': "[steps.ShellCommand(command=util.Interpolate('echo started; sleep 1000 "
               f"# %(prop:marker)s'), {MARKER_ENV})]",
    'stdin': "[steps.ShellCommand(name=n, command=c, initialStdin=s) "
             f"for s in [{STDIN_EXPR}] for n, c in [('cat', ['cat']), ('sha', ['sha256sum'])]]",
    'pty': "[steps.ShellCommand(command='test -t 1 && echo tty-yes; test -t 0 && echo stdin-tty; "
           "tty; echo to-stderr >&2', usePTY=True)]",
    'nosuchcmd': "[steps.ShellCommand(command=['no-such-cmd-xyz', 'arg'])]",
    'wantout': "[steps.ShellCommand(name='nostderr', command='echo out-a; echo err-a >&2', "
               "want_stderr=False), "
               "steps.ShellCommand(name='nostdout', command='echo out-b; echo err-b >&2; exit 4', "
               "want_stdout=False)]",
}


@pytest.fixture(scope='module')
def master(master_factory):
    builders = per_kind(BUILDERS_BOTH, BOTH)
    builders.update(per_kind(BUILDERS_CW))
    return master_factory(builders, workers=WORKER_CREDS, quarantine_timeout=1)


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin, cworker_env=CWORKER_ENV)
    yield p
    p.stop()


def _ok(b):
    assert b.result == 'SUCCESS', b.describe()


# ---- basics ------------------------------------------------------------------------------------

@pytest.mark.both_workers
def test_hello_world(pool, worker_kind):
    b = pool.run(worker_kind, 'hello')
    _ok(b)
    lg = b.log('shell')
    assert lg.stdout == 'hello world\n'
    assert lg.stderr == ''
    assert 'echo hello world' in lg.header
    assert 'program finished with exit code 0' in lg.header
    # the DB read-back is what REST serves
    assert lg.raw == pool.master.log_contents_rest(lg.id)


@pytest.mark.both_workers
def test_argv_command_is_not_run_by_a_shell(pool, worker_kind):
    b = pool.run(worker_kind, 'argv')
    _ok(b)
    assert b.log('shell').stdout == "a b|\nc'd|\n$HOME|\n*|\n;|\n|\n"


@pytest.mark.both_workers
def test_string_command_runs_in_sh(pool, worker_kind):
    b = pool.run(worker_kind, 'string')
    _ok(b)
    assert b.log('shell').stdout == "a b|\nc'd|\n5|\nfrom env|\n"


@pytest.mark.both_workers
def test_argv0_looked_up_in_the_childs_path(pool, worker_kind, tmp_path):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    script = bindir / 'cw-path-probe'
    script.write_text('#!/bin/sh\necho "probe ran with [$1] PATH=$PATH"\n')
    script.chmod(0o755)
    assert 'cw-path-probe' not in os.environ.get('PATH', '')
    b = pool.run(worker_kind, 'pathlookup', props={'bindir': str(bindir)})
    _ok(b)
    assert b.log('shell').stdout == f'probe ran with [arg 1] PATH={bindir}:/usr/bin:/bin\n'


def test_env_rules(pool):
    w = pool.worker('cworker')
    b = pool.run('cworker', 'env')
    _ok(b)
    out = b.log('shell').stdout
    env = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
    assert 'CW_DROP_ME' not in env, out          # nil removes a variable of the worker
    assert 'HOME' not in env, out
    assert env['CW_LIST'] == '/opt/a:/opt/b:/opt/c'
    assert env['CW_EXP'] == 'x-worker-value-y'
    assert env['CW_UNSET'] == 'ab'
    assert env['CW_TWO'] == 'worker-value:worker-value'
    assert env['PYTHONPATH'] == '/step/pp:/worker/pp'
    assert env['CW_PLAIN'] == 'plain value with spaces'
    assert env['CW_WORKER_VAR'] == 'worker-value'  # the worker's own environment is the base
    workdir = pool.workdir('cworker', 'env')
    assert env['PWD'] == workdir
    assert os.path.isdir(workdir)
    assert w.running()


@pytest.mark.both_workers
def test_exit_code_3_is_failure(pool, worker_kind):
    b = pool.run(worker_kind, 'exit3')
    assert b.result == 'FAILURE', b.describe()
    lg = b.log('shell')
    assert lg.stdout == 'before\n'
    assert 'program finished with exit code 3' in lg.header


@pytest.mark.both_workers
def test_stdout_and_stderr_kept_apart(pool, worker_kind):
    b = pool.run(worker_kind, 'streams')
    _ok(b)
    lg = b.log('shell')
    assert lg.stdout == 'out1\nout2\no-part o-end\n' + ''.join(f'o{i}\n' for i in range(200))
    assert lg.stderr == 'err1\nerr2\ne-part e-end\n' + ''.join(f'e{i}\n' for i in range(200))


def test_command_not_found(pool):
    b = pool.run('cworker', 'nosuchcmd')
    assert b.result == 'FAILURE', b.describe()
    lg = b.log('shell')
    assert 'no-such-cmd-xyz' in lg.stderr, lg.raw
    assert re.search(r'no such file|not found', lg.stderr, re.I), lg.raw
    assert lg.stdout == ''
    # the worker is fine afterwards
    assert pool.master.worker_connected('cw')
    _ok(pool.run('cworker', 'hello'))


def test_want_stdout_and_want_stderr_false(pool):
    b = pool.run('cworker', 'wantout')
    assert b.result == 'FAILURE', b.describe()
    s1 = b.step('nostderr')
    assert s1.result == 'SUCCESS'
    assert s1.log().stdout == 'out-a\n'
    assert s1.log().stderr == ''
    assert 'program finished with exit code 0' in s1.log().header
    s2 = b.step('nostdout')
    assert s2.result == 'FAILURE'
    assert s2.log().stdout == ''
    assert s2.log().stderr == 'err-b\n'
    assert 'program finished with exit code 4' in s2.log().header


# ---- stdin and pty -------------------------------------------------------------------------------

def test_initial_stdin_1mib(pool):
    assert len(STDIN_TEXT.encode()) > (1024 if bbmaster.PROTOCOL == 'msgpack' else 600) * 1024
    b = pool.run('cworker', 'stdin', timeout=120)
    _ok(b)
    expected = STDIN_TEXT.encode()
    cat = b.log('cat')
    digest, size = cat.digest('o')
    assert size == len(expected)
    assert digest == hashlib.sha256(expected).hexdigest()
    assert cat.stdout.startswith('first line\nsecond line: caf\u00e9 \u20ac\n\nafter an empty line\n')
    assert b.log('sha').stdout == hashlib.sha256(expected).hexdigest() + '  -\n'
    assert f'writing {len(expected)} bytes to stdin' in cat.header


def test_use_pty(pool):
    b = pool.run('cworker', 'pty')
    _ok(b)
    lg = b.log('shell')
    out = lg.stdout
    # on a pty, stderr is the same terminal: everything arrives as stdout
    assert re.fullmatch(r'tty-yes\nstdin-tty\n/dev/pts/\d+\nto-stderr\n', out), repr(out)
    assert '\r' not in lg.raw
    assert 'using PTY: True' in lg.header


# ---- kills ------------------------------------------------------------------------------------

def _run_killed(pool, name, marker, nproc):
    """Force `name`, wait for `nproc` tagged processes, wait for the build; -> (Build, seconds
    from 'processes seen' to 'build complete')."""
    brid = pool.force('cworker', name, props={'marker': marker})
    procs = wait_processes(marker, nproc)
    t0 = time.monotonic()
    b = bbmaster.Build(pool.master, pool.master.wait_build(brid, 60))
    return b, time.monotonic() - t0, procs


def test_timeout_without_output_kills_the_whole_group(pool, proc_marker):
    # sh + background sleep (a grandchild of the worker) + foreground sleep
    b, dt, procs = _run_killed(pool, 'timeout', proc_marker, 3)
    assert b.result == 'FAILURE', b.describe()
    lg = b.log('shell')
    assert 'command timed out: 2 seconds without output' in lg.header, lg.header
    el = elapsed_header(lg.header)
    assert el is not None and 1.9 <= el <= 6, lg.header
    assert dt < 10
    bbmaster.wait_no_process(proc_marker, timeout=5)
    assert not bbmaster.ps_processes(proc_marker)
    print(f'\n  timeout kill: elapsedTime {el:.2f} s; killed {len(procs)} processes')


def test_max_time_kill(pool, proc_marker):
    b, dt, _ = _run_killed(pool, 'maxtime', proc_marker, 2)
    assert b.result == 'FAILURE', b.describe()
    lg = b.log('shell')
    assert lg.stdout == 'started\n'
    assert 'command timed out: 2 seconds elapsed' in lg.header, lg.header
    assert 'process killed by signal 9' in lg.header, lg.header
    el = elapsed_header(lg.header)
    assert el is not None and 1.9 <= el <= 6, lg.header
    bbmaster.wait_no_process(proc_marker, timeout=5)
    assert not bbmaster.ps_processes(proc_marker)


def test_max_time_sigterm_ignored_then_kill_reaches_whole_group(pool, proc_marker):
    # sh and both sleeps ignore SIGTERM (inherited SIG_IGN): only the second signal
    # (interruptSignal KILL), sent to the whole process group, ends them. The stock worker
    # sends that second signal to the leader only (reference §7.1), so this is cworker-only.
    b, dt, procs = _run_killed(pool, 'maxtime_trap', proc_marker, 3)
    assert b.result == 'FAILURE', b.describe()
    lg = b.log('shell')
    assert lg.stdout == 'started\n'
    assert 'command timed out: 2 seconds elapsed' in lg.header, lg.header
    assert 'process killed by signal 9' in lg.header, lg.header
    el = elapsed_header(lg.header)
    assert el is not None and 2.9 <= el <= 8, lg.header   # maxTime 2 + sigtermTime 1
    bbmaster.wait_no_process(proc_marker, timeout=5)
    assert not bbmaster.ps_processes(proc_marker)


def test_stop_build_mid_step(pool, proc_marker):
    master = pool.master
    w = pool.worker('cworker')
    brid = pool.force('cworker', 'sleeper', props={'marker': proc_marker})
    build = master.wait_build_started(brid)
    wait_processes(proc_marker, 2)
    master.wait_log_contains(build['buildid'], 'shell', 'ostarted')
    master.stop_build(build['buildid'], reason='stopped by test_stop_build_mid_step')
    b = bbmaster.Build(master, master.wait_build(brid, 30))
    assert b.result == 'CANCELLED', b.describe()
    assert b.step('shell').result == 'CANCELLED', b.describe()
    bbmaster.wait_no_process(proc_marker, timeout=10)
    assert not bbmaster.ps_processes(proc_marker)
    assert w.running()
    assert master.worker_connected('cw')
    _ok(pool.run('cworker', 'hello'))
