"""Transfers with several requests in flight: cworker-master `put` reads ahead and tells a
cworker `"pipeline": 4` (cworker then keeps four update_read_file requests in flight);
`get` answers writes as they arrive, writes behind, and tells a cworker `"pipeline": 4` too
(cworker then keeps four update_upload_*_write requests in flight).  The stock worker
ignores the argument and moves one block at a time: both must give byte-exact files.  With
cworker, an interrupt or a lost link in the middle of a pipelined download leaves the old
destination untouched and no temporary file, and the worker goes on working; in the middle
of a pipelined upload (a refused write, a failed write on the master, an interrupt, a lost
link, a killed worker) LOCAL is untouched, no temporary is left, and the worker goes on.
"""

import os
import re
import signal
import stat
import sys

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


def expect_link_lost(w, m, path):
    """cworker-master m, started with a drop_after fault, loses the link to the worker
    w: it exits with EXIT_LINK_LOST and says so.  path (the transfer's source) is removed
    either way.  Returns the worker's pid at the attach."""
    try:
        bbmaster.wait_for(lambda: 'attached from' in m.stderr_text(), 60, 'the attach')
        pid = w.pid
        r = m.wait(120)
    finally:
        os.unlink(path)
    assert r.rc == mastercli.EXIT_LINK_LOST, r
    assert re.search(r'lost the link', r.stderr), r
    return pid


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
    pid = expect_link_lost(w, m, src)
    with open(dst, 'rb') as f:
        assert f.read() == b'precious data\n'
    bbmaster.wait_for(lambda: worker_temporaries(w) == [], 10, 'no temporary left')
    r = w.run_master('run', '--', 'echo', 'still here')
    assert r.rc == 0 and r.stdout == b'still here\n', r
    assert w.pid == pid and w.running(), 'cworker was restarted or died'


# ---- get (upload_file / upload_directory) ----

def master_temporaries(d):
    return [n for n in os.listdir(d) if '.cwm-' in n]


@pytest.mark.parametrize('size', [0, 1, MIB, 5 * MIB + 17], ids=['0', '1', '1MiB', '5MiB+17'])
def test_get_sizes(w, size, tmp_path):
    """Empty, one byte, exactly one block, and many blocks with a tail: with writes in
    flight the close goes only after the last one is answered."""
    name = f'get-{size}.bin'
    src = mastercli.make_random_file(os.path.join(w.basedir, name), size)
    local = str(tmp_path / 'got.bin')
    try:
        r = w.run_master('get', name, local)
    finally:
        digest = sha256_file(src)
        os.unlink(src)
    assert r.rc == 0 and 'Sanitizer' not in r.stderr, r
    assert os.path.getsize(local) == size
    assert sha256_file(local) == digest
    assert master_temporaries(tmp_path) == []


@pytest.mark.parametrize('compress', [None, 'gz'], ids=['tar', 'gz'])
def test_get_tree(w, compress, tmp_path):
    """A directory get whose tar stream is several blocks (several writes in flight)."""
    name = f'get-tree-{compress or "plain"}'
    root = os.path.join(w.basedir, name)
    mastercli.make_tree(root)
    for i, size in enumerate([3 * MIB + 5, MIB, 2 * MIB - 1, 0, 7]):
        mastercli.make_random_file(os.path.join(root, 'a', f'big{i}.bin'), size)
    args = ['-r'] + (['--compress', compress] if compress else []) + [name, 'got']
    r = w.run_master('get', *args, cwd=str(tmp_path))
    assert r.rc == 0 and 'Sanitizer' not in r.stderr, r
    assert mastercli.tree_manifest(str(tmp_path / 'got')) == mastercli.tree_manifest(root)
    assert master_temporaries(tmp_path) == [] and master_temporaries(tmp_path / 'got') == []


def assert_worker_goes_on(w, tmp_path, pid=None):
    """The next get works (and, given pid, on the same worker process)."""
    src = mastercli.make_random_file(os.path.join(w.basedir, 'after-get.bin'), 2 * MIB + 3)
    r = w.run_master('get', 'after-get.bin', str(tmp_path / 'after.bin'))
    assert r.rc == 0, r
    assert sha256_file(str(tmp_path / 'after.bin')) == sha256_file(src)
    os.unlink(src)
    if pid is not None:
        assert w.pid == pid and w.running(), 'the worker was restarted or died'


@pytest.mark.parametrize('recursive', [False, True], ids=['file', 'dir'])
def test_get_write_refused(w, recursive, tmp_path):
    """The master refuses every write: the first answer (an error) ends the command while
    the other writes are still in flight; their answers come after it ended."""
    if recursive:
        root = os.path.join(w.basedir, 'refused-tree')
        os.makedirs(root, exist_ok=True)
        mastercli.make_random_file(os.path.join(root, 'big.bin'), 8 * MIB)
        args, op = ['-r', 'refused-tree', str(tmp_path / 'got')], 'update_upload_directory_write'
    else:
        mastercli.make_random_file(os.path.join(w.basedir, 'refused.bin'), 8 * MIB)
        args, op = ['refused.bin', str(tmp_path / 'got.bin')], 'update_upload_file_write'
    pid = w.pid
    r = w.run_master('get', *args, faults=f'exception_op={op}')
    assert r.rc == mastercli.EXIT_FAILURE and 'Sanitizer' not in r.stderr, r
    if w.kind == 'cworker':
        assert 'the master refused upload data: injected fault: exception' in r.stderr, r
    assert not os.path.exists(tmp_path / 'got.bin')
    assert master_temporaries(tmp_path) == []
    if recursive:
        assert os.listdir(tmp_path / 'got') == []
    assert_worker_goes_on(w, tmp_path, pid if w.kind == 'cworker' else None)


def fsize_limited_master(tmp_path, limit):
    """A cworker-master whose files may grow to `limit` bytes only (RLIMIT_FSIZE, SIGXFSZ
    ignored): its writes past that fail with EFBIG, in the middle of the transfer."""
    wrapper = tmp_path / 'fsize-master'
    wrapper.write_text(
        f'#!{sys.executable}\n'
        'import os, resource, signal, sys\n'
        'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
        f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n'
        f'os.execv({mastercli.MASTER_BIN!r}, [{mastercli.MASTER_BIN!r}] + sys.argv[1:])\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def test_get_master_write_fails(w, tmp_path):
    """The master's disk write fails after 3 MiB (blocks answered ahead of the disk, later
    ones refused): the command ends with the worker's error, LOCAL is untouched."""
    src = mastercli.make_random_file(os.path.join(w.basedir, 'efbig.bin'), 24 * MIB + 11)
    local = tmp_path / 'precious.bin'
    local.write_bytes(b'precious data\n')
    pid = w.pid
    try:
        r = w.run_master('get', 'efbig.bin', str(local),
                         binary=fsize_limited_master(tmp_path, 3 * MIB))
    finally:
        os.unlink(src)
    assert r.rc == mastercli.EXIT_FAILURE and 'Sanitizer' not in r.stderr, r
    assert re.search(r"cannot write '.*precious\.bin\.cwm-\w+': ", r.stderr), r
    if w.kind == 'cworker':
        assert 'the master refused upload data: write error on the master' in r.stderr, r
    assert local.read_bytes() == b'precious data\n'
    assert master_temporaries(tmp_path) == []
    assert_worker_goes_on(w, tmp_path, pid if w.kind == 'cworker' else None)


def start_big_get(w, tmp_path, local, faults=None):
    remote = os.path.join(w.basedir, 'sparse-get-2g.bin')
    with open(remote, 'wb') as f:
        f.truncate(2 << 30)  # sparse: costs no disk on the worker, still 2 GiB to send
    kw = {'faults': faults} if faults else {}
    m = w.start_master('get', 'sparse-get-2g.bin', str(local), **kw)
    return m, remote


def get_under_way(tmp_path):
    return any(os.path.getsize(tmp_path / n) > 4 * MIB for n in master_temporaries(tmp_path))


def test_get_interrupted(w, tmp_path):
    """SIGINT to cworker-master while writes are in flight: the worker ends the upload,
    LOCAL keeps its old content, no temporary is left, the same worker goes on."""
    local = tmp_path / 'precious.bin'
    local.write_bytes(b'precious data\n')
    m, remote = start_big_get(w, tmp_path, local)
    try:
        bbmaster.wait_for(lambda: get_under_way(tmp_path), 60, 'the upload to be under way')
        pid = w.pid
        m.signal(signal.SIGINT)
        r = m.wait(60)
    finally:
        os.unlink(remote)
    assert r.rc == mastercli.EXIT_FAILURE and 'Sanitizer' not in r.stderr, r
    assert local.read_bytes() == b'precious data\n'
    assert master_temporaries(tmp_path) == []
    assert_worker_goes_on(w, tmp_path, pid)


@pytest.mark.parametrize('aw', ['cworker'], indirect=True)
def test_get_link_lost(w, tmp_path):
    """The link drops while writes are in flight: every one of them is answered 'closed'
    at once; the command ends once, and the worker reconnects and goes on."""
    local = tmp_path / 'precious.bin'
    local.write_bytes(b'precious data\n')
    m, remote = start_big_get(w, tmp_path, local, faults='drop_after=40')
    pid = expect_link_lost(w, m, remote)
    assert local.read_bytes() == b'precious data\n'
    assert master_temporaries(tmp_path) == []
    assert_worker_goes_on(w, tmp_path, pid)


# last: it kills the module's worker (the next run_master starts it again)
@pytest.mark.parametrize('aw', ['cworker'], indirect=True)
def test_get_worker_killed(w, tmp_path):
    """The worker is killed (SIGKILL) in the middle of a pipelined get: cworker-master
    reports the lost link, LOCAL is untouched, no temporary is left; a new worker works."""
    local = tmp_path / 'precious.bin'
    local.write_bytes(b'precious data\n')
    m, remote = start_big_get(w, tmp_path, local)
    try:
        bbmaster.wait_for(lambda: get_under_way(tmp_path), 60, 'the upload to be under way')
        mastercli.kill_pid(w.pid)
        r = m.wait(60)
    finally:
        os.unlink(remote)
    assert r.rc == mastercli.EXIT_LINK_LOST and 'Sanitizer' not in r.stderr, r
    assert local.read_bytes() == b'precious data\n'
    assert master_temporaries(tmp_path) == []
    bbmaster.wait_for(lambda: not w.running(), 10, 'the killed worker to be reaped')
    assert_worker_goes_on(w, tmp_path)
