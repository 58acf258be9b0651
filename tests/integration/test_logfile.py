"""cworker's own log in a file (--log-file) rotated like the stock worker's twistd.log
(--log-size / --log-count), on a real master with a verbose worker running builds; SIGHUP
reopens the file after logrotate moved it."""

import glob
import json
import os
import re
import signal

import pytest

import bbmaster

CHATTY = ("[steps.ShellCommand(name='chatty', logEnviron=False, "
          "command=['sh', '-c', 'for i in $(seq 1 400); do echo line $i; sleep 0.002; done'])]")
TEXT_LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z cworker: \S.*$')


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory({'chatty': CHATTY})


def _check_line(line, fmt):
    if fmt == 'json':
        d = json.loads(line)
        assert d['program'] == 'cworker' and d['msg'], line
    else:
        assert TEXT_LINE.match(line), line


@pytest.mark.parametrize('fmt', ['text', 'json'])
def test_rotated_log_files_bounded_and_intact(master, worker_factory, tmp_path, fmt):
    logf = tmp_path / 'twistd.log'
    size, count = 400, 3   # a verbose build logs ~1.3 kB: several rotations
    w = worker_factory(master, extra_args=['--verbose', '--log-format', fmt, '--log-file',
                                           str(logf), '--log-size', str(size),
                                           '--log-count', str(count)])
    for _ in range(2):
        b = master.run_build('chatty')
        assert b.result == 'SUCCESS', b.describe()
    assert w.stop() == 0
    master.wait_worker_disconnected('w1', timeout=30)

    names = sorted(os.path.basename(p) for p in glob.glob(str(logf) + '*'))
    assert names == ['twistd.log'] + [f'twistd.log.{i}' for i in range(1, count + 1)], names
    text = ''
    for i in range(count, -1, -1):          # oldest first
        p = f'{logf}.{i}' if i else str(logf)
        data = open(p, 'rb').read()
        assert 0 < len(data) <= size, (p, len(data))
        assert data.endswith(b'\n'), p
        text += data.decode('utf-8')
    lines = text.splitlines()
    for ln in lines:
        _check_line(ln, fmt)
    # the last lines of the run are there, in order, nothing left on stderr but the hand-over
    assert 'exited' in lines[-1], lines[-3:]
    msgs = [json.loads(ln)['msg'] if fmt == 'json' else ln for ln in lines]
    assert sum('finished in' in m for m in msgs) >= 1, msgs
    assert not any('starting' in m for m in msgs), msgs    # the oldest files were dropped
    stderr = [ln for ln in w.log_text().splitlines() if ln.strip()]
    assert len(stderr) == 1 and f'logging to {logf}' in stderr[0], stderr


def test_sighup_reopens_after_logrotate(master, worker_factory, tmp_path):
    logf = tmp_path / 'w.log'
    w = worker_factory(master, extra_args=['--log-file', str(logf)])
    assert master.run_build('chatty').result == 'SUCCESS'
    os.rename(logf, tmp_path / 'w.log.1')          # what logrotate does, then it signals
    os.kill(w.pid, signal.SIGHUP)
    bbmaster.wait_for(lambda: logf.exists() and 'SIGHUP: reopened' in logf.read_text(), 10,
                      'the reopened log file')
    assert master.run_build('chatty').result == 'SUCCESS'   # still running and attached
    assert w.stop() == 0
    new = logf.read_text()
    assert 'exited' in new and 'starting' not in new
    assert 'starting' in (tmp_path / 'w.log.1').read_text()
