"""Transfers with several requests in flight: cworker-master `put` reads ahead and tells a
cworker `"pipeline": 4` (cworker then keeps four update_read_file requests in flight);
`get` answers writes as they arrive and writes behind.  The stock worker ignores the
argument and asks one block at a time: both must give byte-exact files.  With cworker, an
interrupt or a lost link in the middle of a pipelined download leaves the old destination
untouched and no temporary file, and the worker goes on working.
"""

import os
import re
import signal

import pytest

import bbmaster
import mastercli
from mastercli import Endpoint, sha256_file

pytestmark = [pytest.mark.only_protocol('msgpack')]  # the peer is cworker-master

KINDS = ('cworker', 'stock')
MIB = 1 << 20


def selected_kinds():
    env = os.environ.get('CW_WORKER_KINDS')
    return {k.strip() for k in env.split(',')} if env else set(KINDS)


@pytest.fixture(scope='module', params=KINDS)
def aw(request, tmp_path_factory):
    if request.param not in selected_kinds():
        pytest.skip(f'CW_WORKER_KINDS excludes {request.param}')
    base = tmp_path_factory.mktemp(f'mpipe-{request.param}')
    cw_bin = request.getfixturevalue('cworker_bin') if request.param == 'cworker' else None
    w = mastercli.AttachedWorker(request.param, str(base / 'worker'), Endpoint(), 'w1', 'pass1',
                                 workdir=str(base / 'masters'), cworker_bin=cw_bin,
                                 cworker_args=['--backoff-max', '1'])
    yield w
    w.stop()


@pytest.fixture
def w(aw, request):
    off = aw.log_size()
    nm = len(aw.masters)
    yield aw
    rep = getattr(request.node, 'rep_call', None)
    if rep is not None and rep.failed:
        print(f'\n===== {aw.kind} log =====\n{aw.log_text()[off:][-6000:]}')
        for m in aw.masters[nm:]:
            print(f'\n===== cworker-master {m.argv[1:]} rc={m.returncode} =====\n'
                  f'{m.stderr_text()[-4000:]}')


def make_precious(w, name):
    os.makedirs(w.basedir, exist_ok=True)
    dst = os.path.join(w.basedir, name)
    with open(dst, 'wb') as f:
        f.write(b'precious data\n')
    return dst


def worker_temporaries(w):
    return [n for n in os.listdir(w.basedir) if n.startswith('.cworker-')]


@pytest.mark.parametrize('size', [MIB - 1, MIB, 3 * MIB + 17, 9 * MIB],
                         ids=['1MiB-1', '1MiB', '3MiB+17', '9MiB'])
def test_put_get_sizes(w, size, tmp_path):
    """Sizes around the 1 MiB block: the reads past the end that are already in flight
    when the end is seen are answered empty and dropped; then the same bytes come back."""
    src = str(tmp_path / 'src.bin')
    mastercli.make_random_file(src, size)
    r = w.run_master('put', src, 'pipe.bin')
    assert r.rc == 0, r
    dst = os.path.join(w.basedir, 'pipe.bin')
    assert sha256_file(dst) == sha256_file(src)
    local = str(tmp_path / 'back.bin')
    r = w.run_master('get', 'pipe.bin', local)
    assert r.rc == 0, r
    assert sha256_file(local) == sha256_file(src)
    os.unlink(dst)


def start_big_put(w, tmp_path, dest, faults=None):
    src = str(tmp_path / 'sparse-2g.bin')
    with open(src, 'wb') as f:
        f.truncate(2 << 30)  # sparse: costs no disk, still 2 GiB to send
    kw = {'faults': faults} if faults else {}
    m = w.start_master('put', src, dest, **kw)
    return m, src


# cworker only: the stock worker writes a download in place (a partial file by design;
# test_safety.py asserts that beside cworker's behaviour)
@pytest.mark.parametrize('aw', ['cworker'], indirect=True)
def test_put_interrupted_keeps_destination(w, tmp_path):
    dst = make_precious(w, 'precious-put.bin')
    m, src = start_big_put(w, tmp_path, 'precious-put.bin')
    pid = None
    try:
        bbmaster.wait_for(lambda: any(os.path.getsize(os.path.join(w.basedir, n)) > 4 * MIB
                                      for n in worker_temporaries(w)), 60,
                          'the download to be under way')
        pid = w.pid
        m.signal(signal.SIGINT)
        r = m.wait(60)
    finally:
        os.unlink(src)
    assert r.rc == mastercli.EXIT_FAILURE and 'Sanitizer' not in r.stderr, r
    with open(dst, 'rb') as f:
        assert f.read() == b'precious data\n'
    bbmaster.wait_for(lambda: worker_temporaries(w) == [], 10, 'no temporary left')
    # the same worker goes on: the next transfer works
    src2 = str(tmp_path / 'after.bin')
    mastercli.make_random_file(src2, 2 * MIB + 5)
    r = w.run_master('put', src2, 'after.bin')
    assert r.rc == 0, r
    assert sha256_file(os.path.join(w.basedir, 'after.bin')) == sha256_file(src2)
    assert w.pid == pid and w.running(), 'cworker was restarted or died'


# cworker only: the stock worker writes a download in place (a partial file by design;
# test_safety.py asserts that beside cworker's behaviour)
@pytest.mark.parametrize('aw', ['cworker'], indirect=True)
def test_put_link_lost_keeps_destination(w, tmp_path):
    dst = make_precious(w, 'precious-drop.bin')
    # the link drops after 40 messages from the worker: in the middle of the reads
    m, src = start_big_put(w, tmp_path, 'precious-drop.bin', faults='drop_after=40')
    try:
        bbmaster.wait_for(lambda: 'attached from' in m.stderr_text(), 60, 'the attach')
        pid = w.pid
        r = m.wait(120)
    finally:
        os.unlink(src)
    assert r.rc == mastercli.EXIT_LINK_LOST, r
    assert re.search(r'lost the link', r.stderr), r
    with open(dst, 'rb') as f:
        assert f.read() == b'precious data\n'
    bbmaster.wait_for(lambda: worker_temporaries(w) == [], 10, 'no temporary left')
    r = w.run_master('run', '--', 'echo', 'still here')
    assert r.rc == 0 and r.stdout == b'still here\n', r
    assert w.pid == pid and w.running(), 'cworker was restarted or died'
