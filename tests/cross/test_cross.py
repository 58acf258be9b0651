"""A cross-built cworker, run under qemu-user, against the real Debian Buildbot master.

CWORKER_BIN is a wrapper script that execs qemu-ARCH on the target binary (scripts/check-cross
writes it), so the worker process the harness watches is the emulator running cworker.

Checks, each against what the master STORED:
* hello world (stdout text);
* an env + exit-code step (a step env variable and ${VAR} expansion from the worker's
  environment reach the command; exit 3 is a FAILURE with exit code 3);
* a 10 MiB log: its sha256 as stored by the master equals the file's;
* FileUpload of a 3 MiB + 1 byte file, by sha256;
* DirectoryUpload, by sha256 of every file: a binary with libarchive (CW_EXPECT_ARCHIVE=1)
  must deliver the tree; one without (CW_EXPECT_ARCHIVE=0) announces no upload_directory, so
  the master must refuse the step as "too old"; either way the worker stays attached.
* (marker over4gib, run for armhf) a FileUpload of 4 GiB + 3 MiB: sizes and offsets past 2^32
  on a 32-bit worker; pieces of random data at the start, across the 4 GiB boundary and at
  the end (the rest is a hole), compared by sha256.
Prints the emulated worker's idle RSS (the qemu process: guest memory + translator).
"""

import base64
import hashlib
import os
import random
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))

import bbmaster  # noqa: E402
from cwhelpers import (WORKER_CREDS, WorkerPool, assert_same_tree, describe_build,  # noqa: E402,F401
                       dump_worker_logs, per_kind, proc_status_kib, sha256_file,
                       write_random_file)

ARCH = os.environ.get('CW_CROSS_ARCH', 'native')
EXPECT_ARCHIVE = os.environ.get('CW_EXPECT_ARCHIVE')

WORKER_ENV = {'CW_CROSS_WORKER_VAR': 'from-worker'}

BUILDERS = {
    'hello': "[steps.ShellCommand(command='echo hello world')]",
    'envexit': "[steps.ShellCommand(command='echo \"A=$CW_A B=$CW_B\"; exit 3', "
               "env={'CW_A': 'step value', 'CW_B': 'x-${CW_CROSS_WORKER_VAR}-y'})]",
    'catlog': "[steps.ShellCommand(name='cat', command=['cat', util.Property('src')])]",
    'up': "[steps.FileUpload(workersrc=util.Property('src'), masterdest=util.Property('dest'))]",
    'dirup': "[steps.DirectoryUpload(workersrc=util.Property('src'), "
             "masterdest=util.Property('dest'), compress='gz')]",
}


@pytest.fixture(scope='module')
def master(master_factory):
    # emulated workers are slow to start: a generous quarantine keeps restarts quick
    return master_factory(per_kind(BUILDERS), workers=WORKER_CREDS, quarantine_timeout=1)


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin, cworker_env=WORKER_ENV)
    yield p
    p.stop()


def _run(pool, name, props=None, timeout=180):
    return pool.run('cworker', name, props=props, timeout=timeout)


def test_hello_world(pool):
    b = _run(pool, 'hello')
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('shell').stdout == 'hello world\n'


def test_env_and_exit_code(pool):
    b = _run(pool, 'envexit')
    assert b.result == 'FAILURE', describe_build(b)
    lg = b.log('shell')
    assert lg.stdout == 'A=step value B=x-from-worker-y\n', lg.raw
    assert 'program finished with exit code 3' in lg.header, lg.header


def test_10mib_log_by_sha256(pool, tmp_path):
    # text lines (base64, 76 columns) the master stores unchanged; 10 MiB exactly
    rnd = random.Random(7)
    raw = bytes(rnd.getrandbits(8) for _ in range(64 * 1024))
    chunk = base64.encodebytes(raw)
    data = (chunk * (10 * 1024 * 1024 // len(chunk) + 1))[:10 * 1024 * 1024 - 1] + b'\n'
    src = tmp_path / 'big.txt'
    src.write_bytes(data)
    t0 = time.monotonic()
    b = _run(pool, 'catlog', props={'src': str(src)}, timeout=600)
    took = time.monotonic() - t0
    assert b.result == 'SUCCESS', describe_build(b)
    assert b.log('cat').sha256('o') == hashlib.sha256(data).hexdigest()
    print(f'\n[{ARCH}] 10 MiB log in {took:.1f} s')


def test_file_upload_by_sha256(pool, tmp_path):
    src = tmp_path / 'up.bin'
    digest = write_random_file(str(src), 3 * 1024 * 1024 + 1, seed=3)
    dest = tmp_path / 'dest' / 'up.bin'
    dest.parent.mkdir()
    b = _run(pool, 'up', props={'src': str(src), 'dest': str(dest)})
    assert b.result == 'SUCCESS', describe_build(b)
    assert sha256_file(str(dest)) == digest


@pytest.mark.over4gib
def test_file_upload_over_4gib(pool, tmp_path):
    size = (4 << 30) + (3 << 20)
    src = tmp_path / 'huge.bin'
    rnd = random.Random(11)
    with open(src, 'wb') as f:
        for off in (0, (4 << 30) - (1 << 20), size - (1 << 20)):
            f.seek(off)
            f.write(rnd.randbytes(1 << 20))
    assert os.path.getsize(src) == size
    digest = sha256_file(str(src))
    dest = tmp_path / 'dest' / 'huge.bin'
    dest.parent.mkdir()
    t0 = time.monotonic()
    try:
        b = _run(pool, 'up', props={'src': str(src), 'dest': str(dest)}, timeout=900)
        took = time.monotonic() - t0
        assert b.result == 'SUCCESS', describe_build(b)
        assert os.path.getsize(dest) == size
        assert sha256_file(str(dest)) == digest
        print(f'\n[{ARCH}] FileUpload of {size} bytes in {took:.1f} s')
    finally:
        for p in (src, dest):
            if p.exists():
                p.unlink()


def test_directory_upload(pool, tmp_path):
    # The master keeps worker_commands to itself (REST's workerinfo leaves them out), so what
    # the binary announces shows in the result: a build with libarchive must deliver the
    # tree; one without must be refused by the master as "too old".  CW_EXPECT_ARCHIVE
    # (0/1, set by scripts/check-cross) says which of the two this binary must do.
    src = tmp_path / 'tree'
    (src / 'sub' / 'empty').mkdir(parents=True)
    sums = {rel: write_random_file(str(src / rel), size, seed=i)
            for i, (rel, size) in enumerate([('a.bin', 1 << 20), ('sub/b.bin', 70001),
                                             ('sub/zero', 0)])}
    dest = tmp_path / 'dest'
    b = _run(pool, 'dirup', props={'src': str(src), 'dest': str(dest)})
    text = describe_build(b)
    if EXPECT_ARCHIVE is None:
        announced = b.result == 'SUCCESS'
        print(f'\n[{ARCH}] CW_EXPECT_ARCHIVE unset: DirectoryUpload {b.result}')
    else:
        announced = EXPECT_ARCHIVE == '1'
    if announced:
        assert b.result == 'SUCCESS', text
        for rel, digest in sums.items():
            assert sha256_file(str(dest / rel)) == digest, rel
        assert_same_tree(src, dest)
    else:
        assert b.result in ('EXCEPTION', 'FAILURE'), text
        assert 'too old' in text, text
        assert not dest.exists()
    # either way the worker is still attached and works
    b = _run(pool, 'hello')
    assert b.result == 'SUCCESS', describe_build(b)


def test_idle_rss(pool):
    w = pool.worker('cworker')
    time.sleep(3)
    rss = proc_status_kib(w.pid, 'VmRSS')
    assert rss is not None and rss > 0
    print(f'\n[{ARCH}] worker idle RSS (pid {w.pid}; under qemu: the emulator process): '
          f'{rss / 1024:.1f} MiB')
