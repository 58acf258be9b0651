"""File transfers of cworker against the real 3.7 master (reference §7.3, §8.1, §8.2).

Every test checks BYTES on the receiving side (sha256 of the uploaded file as the master
stored it, unpacked trees compared entry by entry) and what the master stored (step
results, log text read back from the master database). One master serves the module;
one cworker (and, lazily, one stock worker for the `both_workers` cases) serve all tests.

Where the master keeps its temporary files (buildbot/process/remotetransfer.py, 3.7):
* FileWriter (FileUpload, MultipleFileUpload): `tempfile.mkstemp(dir=dirname(masterdest),
  prefix='buildbot-transfer-')`, i.e. NEXT TO the destination; renamed onto it on `close`.
  `writer.cancel()` runs after every transfer command (`runTransferCommand`'s finally): if
  no `close` came, it closes and deletes the temporary file AND an existing destination.
* DirectoryWriter (DirectoryUpload): the tarball is `tempfile.mkstemp(prefix=
  'buildbot-transfer-')` in the master's temp dir, and its FileWriter makes a second
  `buildbot-transfer-*` file in the same dir. This module points the master's
  `tempfile.tempdir` at `<master basedir>/mtmp` (extra_cfg, test-harness only), so those
  files can be watched without looking at the machine-wide /tmp.
"""

import os
import re
import shutil

import pytest

import bbmaster
from cwhelpers import (WORKER_CREDS, WorkerPool, assert_same_tree, describe_build,  # noqa: F401
                       dump_worker_logs, leftovers, per_kind, sha256_file, write_random_file)

BOTH = ('cworker', 'stock')
SRC = "util.Property('src')"
DEST = "util.Property('dest')"
MASTER_TMP = 'mtmp'   # relative to the master basedir (its cwd)
TRANSFER_TMP = 'buildbot-transfer-*'

# (blocksize, size) for the size sweep; all in one build (one step per file)
SIZE_CASES = ([(4096, n) for n in (0, 1, 4095, 4096, 4097, 3 * 4096)] +
              [(262144, n) for n in (1, 262143, 262144, 262145)])


def _size_steps():
    return '[' + ', '.join(
        f"steps.FileUpload(name='up-{bs}-{n}', blocksize={bs}, "
        f"workersrc=util.Interpolate('%(prop:src)s/f-{bs}-{n}'), "
        f"masterdest=util.Interpolate('%(prop:dest)s/f-{bs}-{n}'))"
        for bs, n in SIZE_CASES) + ']'


def _up(name, **kw):
    extra = ''.join(f', {k}={v!r}' for k, v in kw.items())
    return f"steps.FileUpload(name={name!r}, workersrc=util.Interpolate('%(prop:src)s/{name}'), " \
           f"masterdest=util.Interpolate('%(prop:dest)s/{name}'), haltOnFailure=False{extra})"


MAXSIZE = 100000
BUILDERS_BOTH = {
    'sizes': _size_steps(),
    'up': f"[steps.FileUpload(workersrc={SRC}, masterdest={DEST})]",
    # maxsize smaller / larger than the file; 100000 is not a multiple of the block size
    'maxsize': '[' + _up('smaller', maxsize=MAXSIZE, blocksize=4096) + ', ' +
               _up('larger', maxsize=MAXSIZE, blocksize=4096) + ']',
    'upmode': f"[steps.FileUpload(workersrc={SRC}, masterdest={DEST}, mode=0o640)]",
    'dirup_none': f"[steps.DirectoryUpload(workersrc={SRC}, masterdest={DEST})]",
    'dirup_gz': f"[steps.DirectoryUpload(workersrc={SRC}, masterdest={DEST}, compress='gz')]",
    'dirup_bz2': f"[steps.DirectoryUpload(workersrc={SRC}, masterdest={DEST}, compress='bz2')]",
    'multi': f"[steps.MultipleFileUpload(workersrcs=['*.txt'], masterdest={DEST}, glob=True)]",
}
BUILDERS_CW = {
    # a file of exactly maxsize bytes: not a multiple of the block size, and 4 whole blocks
    'maxsize_eq': '[' + _up('equal', maxsize=MAXSIZE, blocksize=4096) + ', ' +
                  _up('equal-blocks', maxsize=4 * 4096, blocksize=4096) + ']',
    'upkeep': f"[steps.FileUpload(workersrc={SRC}, masterdest={DEST}, keepstamp=True)]",
    'download': f"[steps.FileDownload(mastersrc={SRC}, workerdest={DEST})]",
    'strdownload': f"[steps.StringDownload('string download content\\n', workerdest={DEST})]",
    'hello': "[steps.ShellCommand(command='echo hello')]",
}

EXTRA_CFG = f'''
# Test harness only: the master's temporary files for DirectoryUpload go to
# <basedir>/{MASTER_TMP} instead of /tmp, so the tests can check they are removed.
import os as _os
import tempfile as _tempfile
_tempfile.tempdir = _os.path.abspath({MASTER_TMP!r})
_os.makedirs(_tempfile.tempdir, exist_ok=True)
'''


@pytest.fixture(scope='module')
def master(master_factory):
    builders = per_kind(BUILDERS_BOTH, BOTH)
    builders.update(per_kind(BUILDERS_CW))
    # keepstamp and a missing `glob` end in EXCEPTION: keep the quarantine short
    return master_factory(builders, workers=WORKER_CREDS, extra_cfg=EXTRA_CFG,
                          quarantine_timeout=1)


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin)
    yield p
    p.stop()


@pytest.fixture
def mtmp(master):
    """The master's temp dir for directory uploads (checked empty before the test; the tests
    check it again after their build)."""
    d = os.path.join(master.basedir, MASTER_TMP)
    assert leftovers(d, '*') == [], 'master temp dir not clean before the test'
    return d


def _dirs(tmp_path):
    src, dest = tmp_path / 'src', tmp_path / 'dest'
    src.mkdir()
    dest.mkdir()
    return src, dest


def _props(src, dest):
    return {'src': str(src), 'dest': str(dest)}


def _no_master_temp(*dirs):
    for d in dirs:
        assert leftovers(d, TRANSFER_TMP) == [], f'master temporary files left in {d}'


def _assert_alive(pool):
    # not pool.worker(): that would restart a worker that died
    w = pool.workers['cworker']
    assert w.running(), f'cworker exited with status {w.returncode}'
    assert pool.master.worker_connected('cw')
    b = pool.run('cworker', 'hello')
    assert b.result == 'SUCCESS', b.describe()


# ---- FileUpload ---------------------------------------------------------------------------------

@pytest.mark.both_workers
def test_upload_sizes_around_the_block_size(pool, worker_kind, tmp_path):
    src, dest = _dirs(tmp_path)
    digests = {}
    for bs, n in SIZE_CASES:
        digests[(bs, n)] = write_random_file(src / f'f-{bs}-{n}', n, seed=n)
    b = pool.run(worker_kind, 'sizes', props=_props(src, dest))
    assert b.result == 'SUCCESS', b.describe()
    for bs, n in SIZE_CASES:
        name = f'f-{bs}-{n}'
        assert b.step(f'up-{bs}-{n}').result == 'SUCCESS'
        got = dest / name
        assert got.stat().st_size == n, name
        assert sha256_file(got) == digests[(bs, n)], name
    assert f'sending {src}/f-4096-0' in b.log('up-4096-0').header
    _no_master_temp(dest)


def test_upload_50mib(pool, tmp_path):
    src, dest = _dirs(tmp_path)
    digest = write_random_file(src / 'big.bin', 50 << 20, seed=50)
    b = pool.run('cworker', 'up', props=_props(src / 'big.bin', dest / 'big.bin'), timeout=120)
    assert b.result == 'SUCCESS', b.describe()
    assert (dest / 'big.bin').stat().st_size == 50 << 20
    assert sha256_file(dest / 'big.bin') == digest
    _no_master_temp(dest)


@pytest.mark.both_workers
def test_upload_maxsize_smaller_and_larger(pool, worker_kind, tmp_path):
    src, dest = _dirs(tmp_path)
    write_random_file(src / 'smaller', MAXSIZE + 50000, seed=1)
    larger = write_random_file(src / 'larger', MAXSIZE - 50000, seed=2)
    b = pool.run(worker_kind, 'maxsize', props=_props(src, dest))
    assert b.result == 'FAILURE', b.describe()
    # maxsize < file: the first maxsize bytes are delivered, the step fails
    s = b.step('smaller')
    assert s.result == 'FAILURE', b.describe()
    assert s.log().stderr == f"Maximum filesize reached, truncating file '{src}/smaller'\n"
    with open(src / 'smaller', 'rb') as f:
        head = f.read(MAXSIZE)
    assert (dest / 'smaller').read_bytes() == head
    # maxsize > file: all of it
    assert b.step('larger').result == 'SUCCESS', b.describe()
    assert sha256_file(dest / 'larger') == larger
    assert b.log('larger').stderr == ''
    _no_master_temp(dest)


def test_upload_maxsize_equal_to_the_file(pool, tmp_path):
    # The stock worker reports a file of exactly maxsize bytes as truncated (reference §8.10).
    src, dest = _dirs(tmp_path)
    d1 = write_random_file(src / 'equal', MAXSIZE, seed=3)
    d2 = write_random_file(src / 'equal-blocks', 4 * 4096, seed=4)
    b = pool.run('cworker', 'maxsize_eq', props=_props(src, dest))
    assert b.result == 'SUCCESS', b.describe()
    for name, digest in (('equal', d1), ('equal-blocks', d2)):
        assert b.step(name).result == 'SUCCESS'
        assert b.log(name).stderr == ''
        assert sha256_file(dest / name) == digest


@pytest.mark.both_workers
def test_upload_mode(pool, worker_kind, tmp_path):
    src, dest = _dirs(tmp_path)
    digest = write_random_file(src / 'm.bin', 10000, seed=5, mode=0o600)
    b = pool.run(worker_kind, 'upmode', props=_props(src / 'm.bin', dest / 'm.bin'))
    assert b.result == 'SUCCESS', b.describe()
    st = (dest / 'm.bin').stat()
    assert oct(st.st_mode & 0o7777) == oct(0o640)
    assert sha256_file(dest / 'm.bin') == digest


def test_upload_missing_file(pool, tmp_path):
    src, dest = _dirs(tmp_path)
    missing = src / 'no-such-file'
    b = pool.run('cworker', 'up', props=_props(missing, dest / 'out.bin'))
    assert b.result == 'FAILURE', b.describe()
    lg = b.log('upload')
    assert re.search(rf"Cannot open file '{re.escape(str(missing))}' for upload: "
                     r".*no such file or directory", lg.stderr, re.I), lg.raw
    # cworker sends no `close` for a file it could not open, so the master never renames
    # its temporary file onto the destination (the stock worker does: an empty file).
    assert not (dest / 'out.bin').exists()
    assert leftovers(dest, '*') == []
    _assert_alive(pool)


def test_upload_missing_file_existing_destination(pool, tmp_path):
    src, dest = _dirs(tmp_path)
    (dest / 'out.bin').write_bytes(b'old content\n')
    b = pool.run('cworker', 'up', props=_props(src / 'no-such-file', dest / 'out.bin'))
    assert b.result == 'FAILURE', b.describe()
    # What the 3.7 master does, not cworker: without `close`, FileWriter.cancel() (called by
    # runTransferCommand after every transfer) closes its temporary file and deletes it AND
    # the existing destination ("the file is probably truncated, so delete it altogether").
    # cworker never touches the destination; the stock worker would send `close`, so the
    # master would replace the old file with an empty one. Either way the old content is gone.
    assert not (dest / 'out.bin').exists()
    assert leftovers(dest, '*') == []


@pytest.mark.only_protocol('msgpack')  # over PB utime works: test_pb.py
def test_upload_keepstamp_master_bug(pool, tmp_path):
    # 3.7 master bug (reference §8.2): update_upload_file_utime always raises, the step ends
    # EXCEPTION. The file itself was closed (renamed into place) before the utime request.
    src, dest = _dirs(tmp_path)
    digest = write_random_file(src / 'k.bin', 300000, seed=6)
    os.utime(src / 'k.bin', (1_500_000_000, 1_500_000_000))
    b = pool.run('cworker', 'upkeep', props=_props(src / 'k.bin', dest / 'k.bin'))
    assert b.result == 'EXCEPTION', b.describe()
    header = b.log('upload').header
    # (the test's tmp path contains 'keepstamp' too: leave out the 'sending <path>' line)
    line = next((ln for ln in header.splitlines()
                 if 'keepstamp' in ln and not ln.startswith('sending ')), None)
    assert line is not None, header
    assert 'master' in line and re.search(r'bug', line, re.I), line
    print(f'\n  keepstamp header: {line}')
    assert sha256_file(dest / 'k.bin') == digest
    _no_master_temp(dest)


# ---- DirectoryUpload ----------------------------------------------------------------------------

def _make_tree(root):
    """Nested dirs, an empty dir, relative symlinks, spaces and non-ASCII in names,
    modes 0755/0644/0600, an empty file, a hidden file, a file over several blocks."""
    (root / 'a' / 'b' / 'c').mkdir(parents=True)
    (root / 'empty').mkdir()
    (root / 'a' / 'b' / 'empty too').mkdir()
    write_random_file(root / 'a' / 'b' / 'c' / 'deep.bin', 70000, seed=10)
    write_random_file(root / 'big.bin', 300001, seed=11)        # several 16 KiB blocks
    write_random_file(root / 'exactly512', 512, seed=12)
    (root / 'empty-file').write_bytes(b'')
    (root / 'with space caf\u00e9 \u20ac \u00fc.txt').write_text('non-ASCII name\n')
    (root / '.hidden').write_text('hidden\n')
    script = root / 'a' / 'run.sh'
    script.write_text('#!/bin/sh\necho hi\n')
    script.chmod(0o755)
    (root / 'a' / 'private').write_text('private\n')
    (root / 'a' / 'private').chmod(0o600)
    (root / 'a' / 'b').chmod(0o750)
    os.symlink('a/b/c/deep.bin', root / 'link-to-file')
    os.symlink('../empty', root / 'a' / 'link-to-dir')
    os.symlink('does-not-exist', root / 'dangling')


@pytest.mark.both_workers
@pytest.mark.parametrize('compress', ['none', 'gz', 'bz2'])
def test_directory_upload_tree(pool, worker_kind, tmp_path, compress, mtmp):
    src, dest = _dirs(tmp_path)
    tree = src / 'tree'
    tree.mkdir()
    _make_tree(tree)
    out = dest / 'unpacked'
    b = pool.run(worker_kind, f'dirup_{compress}', props=_props(tree, out))
    assert b.result == 'SUCCESS', b.describe()
    snap = assert_same_tree(tree, out, mtimes=True)
    assert snap['a/run.sh'][1] == 0o755
    assert snap['link-to-file'] == ('link', 'a/b/c/deep.bin')
    assert snap['empty'][0] == 'dir'
    assert leftovers(mtmp, '*') == [], 'master temp files left after the unpack'


def test_directory_upload_without_utf8_locale(pool, tmp_path, mtmp):
    # A device without the C.UTF-8 locale files (or an emulated big-endian one reading the
    # build machine's): cworker then runs in the C locale, where libarchive 3.6 crashed on
    # a non-ASCII name (or wrote an empty one).  Names go out as bytes marked
    # hdrcharset=BINARY there; the master must store exactly the same tree.
    # The worker runs in a mount namespace of its own with an empty tmpfs over the
    # locale directory (the harness runs as root: see tests/integration/README.md).
    w = pool.worker('cworker')
    w.stop()
    saved = w.env, w.binary
    wrapper = tmp_path / 'cworker-no-locales'
    wrapper.write_text('#!/bin/sh\n'
                       'exec unshare --mount --propagation private sh -c '
                       '\'mount -t tmpfs none /usr/lib/locale && exec "$0" "$@"\' '
                       f'{w.binary} "$@"\n')
    wrapper.chmod(0o755)
    w.env = dict(saved[0] or {}, LC_ALL='C', LANG='C')
    w.binary = str(wrapper)
    try:
        w.start(timeout=60)
        src, dest = _dirs(tmp_path)
        tree = src / 'tree'
        tree.mkdir()
        _make_tree(tree)
        (tree / os.fsdecode(b'not-utf8-\xff\xfe.bin')).write_bytes(b'latin-1 name\n')
        os.symlink('with space caf\u00e9 \u20ac \u00fc.txt', tree / 'link-to-caf\u00e9')
        out = dest / 'unpacked'
        b = pool.run('cworker', 'dirup_gz', props=_props(tree, out))
        assert b.result == 'SUCCESS', b.describe()
        snap = assert_same_tree(tree, out, mtimes=True)
        assert snap['link-to-caf\u00e9'] == ('link', 'with space caf\u00e9 \u20ac \u00fc.txt')
        assert (out / os.fsdecode(b'not-utf8-\xff\xfe.bin')).read_bytes() == b'latin-1 name\n'
        assert leftovers(mtmp, '*') == []
    finally:
        w.stop()
        w.env, w.binary = saved
        w.start(timeout=60)


def test_directory_upload_missing_dir(pool, tmp_path, mtmp):
    src, dest = _dirs(tmp_path)
    b = pool.run('cworker', 'dirup_none', props=_props(src / 'nope', dest / 'out'))
    assert b.result == 'FAILURE', b.describe()
    assert 'nope' in b.log('upload').stderr, b.log('upload').raw
    assert not (dest / 'out').exists()
    assert leftovers(mtmp, '*') == []


# ---- MultipleFileUpload with glob ---------------------------------------------------------------

@pytest.mark.both_workers
def test_multiple_file_upload_glob(pool, worker_kind, tmp_path):
    # Needs the worker's `glob` command (the master sends it without checking
    # worker_commands). Until cworker announces `glob` this fails for cworker.
    pool.worker(worker_kind)
    wd = pool.workdir(worker_kind, 'multi')
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(os.path.join(wd, 'sub'))
    digests = {}
    for name in ('a.txt', 'b.txt', 'c d.txt'):
        digests[name] = write_random_file(os.path.join(wd, name), 5000 + len(name), seed=len(name))
    for name in ('x.log', '.hidden.txt', 'sub/e.txt'):   # not matched by *.txt
        write_random_file(os.path.join(wd, name), 100, seed=1)
    dest = tmp_path / 'dest'
    b = pool.run(worker_kind, 'multi', props={'dest': str(dest)})
    assert b.result == 'SUCCESS', describe_build(b)
    assert sorted(os.listdir(dest)) == sorted(digests)
    for name, digest in digests.items():
        assert sha256_file(dest / name) == digest, name


# ---- downloads (3.7 master bug, reference §8.1) -------------------------------------------------

def _download_bug_message(stderr):
    s = stderr.lower()
    assert 'update_read_file' in s and 'bug' in s and 'master' in s, stderr


@pytest.mark.only_protocol('msgpack')  # the master's nil answers are msgpack's (§8.1)
@pytest.mark.parametrize('builder,step', [('download', 'download'),
                                          ('strdownload', 'string_download')])
def test_download_fails_clearly_and_writes_nothing(pool, tmp_path, builder, step):
    msrc = tmp_path / 'master-src.txt'
    msrc.write_text('content on the master\n' * 100)
    wdir = tmp_path / 'wdest'
    wdir.mkdir()
    b = pool.run('cworker', builder, props={'src': str(msrc), 'dest': str(wdir / 'f.txt')})
    assert b.result == 'FAILURE', b.describe()
    assert b.step(step).result == 'FAILURE'
    _download_bug_message(b.log(step).stderr)
    assert os.listdir(wdir) == [], 'nothing (not even an empty file or a *.cworker-* temp)'
    _assert_alive(pool)


@pytest.mark.only_protocol('pb')  # the 3.7 master sends the data over PB only
@pytest.mark.parametrize('builder,step', [('download', 'download'),
                                          ('strdownload', 'string_download')])
def test_download_writes_the_masters_bytes(pool, tmp_path, builder, step):
    msrc = tmp_path / 'master-src.txt'
    msrc.write_text('content on the master\n' * 100)
    want = msrc.read_bytes() if builder == 'download' else b'string download content\n'
    wdir = tmp_path / 'wdest'
    wdir.mkdir()
    (wdir / 'f.txt').write_text('old\n')
    b = pool.run('cworker', builder, props={'src': str(msrc), 'dest': str(wdir / 'f.txt')})
    assert b.result == 'SUCCESS', b.describe()
    assert (wdir / 'f.txt').read_bytes() == want
    assert os.listdir(wdir) == ['f.txt'], 'no *.cworker-* temp left'
    _assert_alive(pool)


@pytest.mark.only_protocol('msgpack')  # fails because of the master's nil answer (§8.1)
def test_failed_download_keeps_existing_destination(pool, tmp_path):
    wdir = tmp_path / 'wdest'
    wdir.mkdir()
    (wdir / 'f.txt').write_text('old\n')
    b = pool.run('cworker', 'strdownload', props={'dest': str(wdir / 'f.txt')})
    assert b.result == 'FAILURE', b.describe()
    _download_bug_message(b.log('string_download').stderr)
    assert (wdir / 'f.txt').read_text() == 'old\n'
    assert leftovers(wdir, '*.cworker-*') == []
    assert os.listdir(wdir) == ['f.txt']


def test_download_into_missing_directory(pool, tmp_path):
    # the directories are made first, as the stock worker does; over msgpack the master's
    # nil answer then fails the step and no file is left
    wdir = tmp_path / 'new' / 'sub'
    b = pool.run('cworker', 'strdownload', props={'dest': str(wdir / 'f.txt')})
    if bbmaster.PROTOCOL == 'pb':
        assert b.result == 'SUCCESS', b.describe()
        assert (wdir / 'f.txt').read_text() == 'string download content\n'
        assert leftovers(wdir, '*.cworker-*') == []
        return
    assert b.result == 'FAILURE', b.describe()
    assert not (wdir / 'f.txt').exists()
    assert leftovers(wdir, '*') == []


# ---- interrupts ---------------------------------------------------------------------------------

def _wait_bytes_moved(directory, pattern=TRANSFER_TMP, min_bytes=1 << 20, timeout=60):
    """Wait until a master temp file in `directory` has at least min_bytes; -> its name."""
    def grown():
        for n in leftovers(directory, pattern):
            try:
                if os.path.getsize(os.path.join(directory, n)) >= min_bytes:
                    return n
            except FileNotFoundError:
                pass
        return None
    return bbmaster.wait_for(grown, timeout, f'{min_bytes} bytes in {directory}/{pattern}',
                             interval=0.01)


def _stop_and_check(pool, brid, buildid):
    master = pool.master
    master.stop_build(buildid, reason='interrupted by test_transfer')
    b = bbmaster.Build(master, master.wait_build(brid, 60))
    assert b.result == 'CANCELLED', b.describe()
    assert b.step('upload').result == 'CANCELLED', b.describe()
    return b


def test_interrupt_file_upload(pool, tmp_path):
    master = pool.master
    src, dest = _dirs(tmp_path)
    write_random_file(src / 'big.bin', 200 << 20, seed=7)
    brid = pool.force('cworker', 'up', props=_props(src / 'big.bin', dest / 'big.bin'))
    build = master.wait_build_started(brid)
    tmpname = _wait_bytes_moved(dest)
    _stop_and_check(pool, brid, build['buildid'])
    # master side: its temporary file is gone and no truncated file was delivered
    assert not (dest / tmpname).exists()
    assert leftovers(dest, '*') == []
    # worker side: nothing but the source
    assert sorted(os.listdir(src)) == ['big.bin']
    _assert_alive(pool)


def test_interrupt_directory_upload(pool, tmp_path, mtmp):
    master = pool.master
    src, dest = _dirs(tmp_path)
    tree = src / 'tree'
    tree.mkdir()
    for i in range(50):
        write_random_file(tree / f'f{i:03d}.bin', 2 << 20, seed=100 + i)
    brid = pool.force('cworker', 'dirup_none', props=_props(tree, dest / 'out'))
    build = master.wait_build_started(brid)
    _wait_bytes_moved(mtmp)
    _stop_and_check(pool, brid, build['buildid'])
    assert leftovers(mtmp, '*') == [], 'master temp files left after the interrupt'
    assert not (dest / 'out').exists()
    assert leftovers(src, '*') == ['tree']
    assert len(os.listdir(tree)) == 50
    _assert_alive(pool)
