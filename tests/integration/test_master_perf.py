"""Throughput through cworker-master, with cworker and with the stock worker (measured and
printed, not asserted). Marked `slow`: CI runs -m "not slow".

    /usr/bin/python3 -m pytest tests/integration/test_master_perf.py -s -m slow

Size: CW_PERF_MIB (default 1024 = 1 GiB). Times are taken from cworker-master's own log
lines, from the worker's attach to the end of the job, so the reconnect wait is not in them.
"""

import os
import re

import pytest

import cwhelpers
import mastercli
from mastercli import Endpoint, sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.only_protocol('msgpack')]  # the peer is cworker-master, which speaks msgpack

KINDS = ('cworker', 'stock')
MIB = 1 << 20
SIZE = int(os.environ.get('CW_PERF_MIB', '1024')) * MIB
RESULTS = []


def selected_kinds():
    env = os.environ.get('CW_WORKER_KINDS')
    return {k.strip() for k in env.split(',')} if env else set(KINDS)


@pytest.fixture(scope='module', params=KINDS)
def wkind(request):
    if request.param not in selected_kinds():
        pytest.skip(f'CW_WORKER_KINDS excludes {request.param}')
    return request.param


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('mperf-data')
    text = mastercli.make_base64_file(str(d / 'big.b64'), SIZE)
    return {'text': text, 'text_sha': sha256_file(text)}


@pytest.fixture(scope='module')
def aw(wkind, tmp_path_factory, request, data):
    base = tmp_path_factory.mktemp(f'mperf-{wkind}')
    cw_bin = request.getfixturevalue('cworker_bin') if wkind == 'cworker' else None
    w = mastercli.AttachedWorker(wkind, str(base / 'worker'), Endpoint(), 'w1', 'pass1',
                                 workdir=str(base / 'masters'), cworker_bin=cw_bin,
                                 cworker_args=['--backoff-max', '1'])
    yield w
    w.stop()


@pytest.fixture(scope='module', autouse=True)
def report():
    yield
    if RESULTS:
        print('\n\n===== cworker-master throughput =====')
        for line in RESULTS:
            print(line)


def span(r):
    """Seconds from the worker's attach to the job's end (cworker-master log times)."""
    lines = r.stderr.splitlines()
    t0 = mastercli.log_time(mastercli.first_line(r.stderr, 'attached from'))
    t1 = mastercli.log_time([ln for ln in lines if 'detached' in ln][-1])
    return t1 - t0


def record(kind, what, r, cpu):
    secs = span(r)
    m = re.search(r'(\d+) bytes in ([0-9.]+) s \(([0-9.]+) MB/s\)', r.stderr)
    own = f'; its own summary: {m.group(3)} MB/s' if m else ''
    line = (f'{kind:8s} {what:28s} {SIZE / MIB:6.0f} MiB in {secs:6.2f} s = '
            f'{SIZE / 1e6 / secs:7.1f} MB/s; worker CPU {cpu:.1f} s{own}')
    RESULTS.append(line)
    print('\n' + line)


def worker_cpu(w):
    return cwhelpers.proc_cpu_seconds(w.pid) if w.running() else 0.0


def test_perf_run_cat(aw, data):
    aw.ensure_running()
    # warm-up attach (the first stock start is slow)
    assert aw.run_master('run', '--', 'true').rc == 0
    c0 = worker_cpu(aw)
    r = aw.run_master('run', '--', 'cat', data['text'], timeout=1800)
    cpu = worker_cpu(aw) - c0
    assert r.rc == 0, r
    assert sha256_file(r.proc.out_path) == data['text_sha']
    os.unlink(r.proc.out_path)
    record(aw.kind, 'run -- cat (log output)', r, cpu)


def test_perf_put(aw, data):
    c0 = worker_cpu(aw)
    r = aw.run_master('put', data['text'], 'perf-put.bin', timeout=1800)
    cpu = worker_cpu(aw) - c0
    assert r.rc == 0, r
    dst = os.path.join(aw.basedir, 'perf-put.bin')
    assert sha256_file(dst) == data['text_sha']
    record(aw.kind, 'put (download_file)', r, cpu)


def test_perf_get(aw, data, tmp_path):
    src = os.path.join(aw.basedir, 'perf-put.bin')
    if not os.path.exists(src):
        os.link(data['text'], src)
    local = str(tmp_path / 'perf-get.bin')
    c0 = worker_cpu(aw)
    r = aw.run_master('get', 'perf-put.bin', local, timeout=1800)
    cpu = worker_cpu(aw) - c0
    assert r.rc == 0, r
    assert sha256_file(local) == data['text_sha']
    os.unlink(local)
    os.unlink(src)
    record(aw.kind, 'get (upload_file)', r, cpu)
