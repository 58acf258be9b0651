"""--metrics-listen: /healthz and Prometheus /metrics, read with curl, against the stock master;
and the endpoint shrugs off bad clients (unknown path, huge request line, a client that never
finishes its request) while the worker goes on running builds."""

import re
import shutil
import socket
import subprocess
import time

import pytest

import bbmaster
from cwhelpers import describe_build, write_random_file

BUILDERS = {'hello': {'steps': "[steps.ShellCommand(command='echo hello world')]",
                      'workernames': ['mw']},
            'fail': {'steps': "[steps.ShellCommand(command='exit 3')]", 'workernames': ['mw']},
            'up': {'steps': "[steps.FileUpload(workersrc=util.Property('src'), "
                            "masterdest=util.Interpolate('%(prop:dest)s'))]",
                   'workernames': ['mw']}}
WORKERS = (('mw', 'metrics-pass'),)


def curl(url):
    if shutil.which('curl') is None:
        raise RuntimeError('curl is not installed (scripts/check installs it)')
    r = subprocess.run(['curl', '-s', '-m', '10', '-w', '\n%{http_code}', url],
                       capture_output=True, text=True, timeout=20)
    body, _, code = r.stdout.rpartition('\n')
    return int(code or 0), body


def metric(text, name):
    m = re.search(rf'^{name} (\S+)$', text, re.M)
    assert m, f'{name} missing from /metrics:\n{text}'
    return float(m.group(1))


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(BUILDERS, workers=WORKERS)


@pytest.fixture
def mworker(master, worker_factory):
    port = bbmaster.free_port()
    w = worker_factory(master, name='mw', extra_args=['--metrics-listen', f'127.0.0.1:{port}',
                                                      '--backoff-max', '1'])
    w.url = f'http://127.0.0.1:{port}'
    return w


def test_healthz_and_counters_follow_builds(master, mworker, tmp_path):
    code, body = curl(mworker.url + '/healthz')
    assert code == 200, body
    code, before = curl(mworker.url + '/metrics')
    assert code == 200
    assert metric(before, 'cworker_connected') == 1
    assert metric(before, 'cworker_last_attach_timestamp_seconds') > time.time() - 120
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    b = master.run_build('fail')
    assert b.result == 'FAILURE', describe_build(b)
    write_random_file(str(tmp_path / 'one.bin'), 1 << 20)
    b = master.run_build('up', props={'src': str(tmp_path / 'one.bin'),
                                      'dest': str(tmp_path / 'one.up')})
    assert b.result == 'SUCCESS', describe_build(b)
    code, after = curl(mworker.url + '/metrics')
    assert code == 200
    print('\n' + '\n'.join(ln for ln in after.splitlines() if not ln.startswith('#')))
    # each build also runs the master's own builder-directory commands (mkdir and such)
    assert metric(after, 'cworker_commands_total') >= metric(before, 'cworker_commands_total') + 2
    assert metric(after, 'cworker_commands_failed_total') >= \
        metric(before, 'cworker_commands_failed_total') + 1
    assert metric(after, 'cworker_output_bytes_total') >= \
        metric(before, 'cworker_output_bytes_total') + len('hello world\n')
    assert metric(after, 'cworker_transfer_bytes_total') >= \
        metric(before, 'cworker_transfer_bytes_total') + (1 << 20)
    assert metric(after, 'cworker_connects_total') == metric(before, 'cworker_connects_total')
    assert metric(after, 'cworker_commands_running') == 0


def _raw(host, port, request):
    """Send `request` on a fresh connection, return everything until the server closes."""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        out = b''
        while True:
            d = s.recv(65536)
            if not d:
                return out
            out += d


def test_bad_clients_do_not_hurt(master, mworker):
    code, body = curl(mworker.url + '/nothing-here')
    assert code == 404, body
    host, port = mworker.url[len('http://'):].split(':')
    # HEAD: the GET answer's head, no body; other methods: 405
    head = _raw(host, port, b'HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 200 '), head
    assert head.endswith(b'\r\n\r\n'), head
    post = _raw(host, port, b'POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
    assert post.startswith(b'HTTP/1.1 405 '), post
    # a request line of 64 KiB: refused (400) or cut off, never buffered without bound
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(b'GET /' + b'a' * 65536 + b' HTTP/1.1\r\n\r\n')
        answer = s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        answer = b''
    s.close()
    assert answer == b'' or answer.startswith(b'HTTP/1.1 400'), answer[:200]
    # slow clients that never finish their request hold nothing the worker needs
    slow = [socket.create_connection((host, int(port)), timeout=10) for _ in range(5)]
    for c in slow:
        c.sendall(b'GET /metr')
    code, _ = curl(mworker.url + '/healthz')
    assert code == 200
    b = master.run_build('hello')
    assert b.result == 'SUCCESS', describe_build(b)
    for c in slow:
        c.close()
    assert mworker.running()


def test_healthz_503_while_the_master_is_down(master, mworker):
    assert curl(mworker.url + '/healthz')[0] == 200
    master.stop()
    try:
        bbmaster.wait_for(lambda: curl(mworker.url + '/healthz')[0] == 503, 30,
                          '/healthz to say 503')
        code, text = curl(mworker.url + '/metrics')
        assert metric(text, 'cworker_connected') == 0
    finally:
        master.start()
    mworker.wait_connected(30)
    assert curl(mworker.url + '/healthz')[0] == 200
    code, text = curl(mworker.url + '/metrics')
    assert metric(text, 'cworker_connected') == 1
    assert metric(text, 'cworker_reconnects_total') >= 1, text


def test_more_silent_clients_than_slots_do_not_lock_out_the_health_check(master, mworker):
    """40 connections that never send a byte (the server serves 16 at once): each new
    client pushes out the one that has waited longest without finishing its request, so
    a health checker still gets its answer at once, and builds go on."""
    host, port = mworker.url[len('http://'):].split(':')
    silent = []
    try:
        for _ in range(40):
            silent.append(socket.create_connection((host, int(port)), timeout=10))
        t0 = time.monotonic()
        code, body = curl(mworker.url + '/healthz')
        took = time.monotonic() - t0
        assert code == 200, body
        assert took < 2, f'/healthz took {took:.2f} s behind 40 silent clients'
        # the oldest silent clients were dropped (EOF), the newest still hold a slot
        silent[0].settimeout(5)
        assert silent[0].recv(1) == b''
        b = master.run_build('hello')
        assert b.result == 'SUCCESS', describe_build(b)
        print(f'\n  /healthz answered in {took * 1000:.0f} ms behind 40 silent clients')
    finally:
        for c in silent:
            c.close()
    assert mworker.running()


def test_worker_stops_cleanly_with_metrics_clients_connected(master, mworker):
    """SIGTERM while scrapers are mid-request: the endpoint's connections are closed with
    the worker and it exits 0 (under ASan: without touching freed memory)."""
    host, port = mworker.url[len('http://'):].split(':')
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
    try:
        held[0].sendall(b'GET /metr')
        time.sleep(0.2)
        assert mworker.stop() == 0, mworker.log_text()[-3000:]
    finally:
        for c in held:
            c.close()
