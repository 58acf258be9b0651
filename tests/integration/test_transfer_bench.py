"""Transfer throughput of cworker vs the stock Python worker through the stock 3.7 master.

Marked `slow` (excluded in CI with `-m "not slow"`). It measures and PRINTS (asserts only that
the bytes arrived intact), for each worker kind, on the same machine in the same run:
* a 200 MiB FileUpload (default blocksize 262144);
* a 200 MiB DirectoryUpload of 200 files of 1 MiB (default blocksize 16384, no compression).
Figures: wall time from force to build complete, worker CPU seconds (utime+stime of the
worker process from /proc/<pid>/stat, before/after) and master CPU seconds.

    /usr/bin/python3 -m pytest tests/integration/test_transfer_bench.py -m slow -s
"""

import os
import shutil
import time

import pytest

from cwhelpers import (WORKER_CREDS, WorkerPool, dump_worker_logs, per_kind,  # noqa: F401
                       proc_cpu_seconds, sha256_file, tree_snapshot, write_random_file)

pytestmark = pytest.mark.slow

BOTH = ('cworker', 'stock')
SIZE = 200 << 20
NFILES = 200
BUILDERS = {
    'bigup': "[steps.FileUpload(workersrc=util.Property('src'), masterdest=util.Property('dest'))]",
    'bigdir': "[steps.DirectoryUpload(workersrc=util.Property('src'), "
              "masterdest=util.Property('dest'))]",
}

RESULTS = {}


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory(per_kind(BUILDERS, BOTH), workers=WORKER_CREDS)


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin)
    yield p
    p.stop()
    if RESULTS:
        print('\n\n  transfer through the stock 3.7 master (same machine, same run)')
        print(f'  {"case":<38} {"wall s":>7} {"MiB/s":>7} {"worker CPU s":>13} '
              f'{"master CPU s":>13}')
        for (what, kind), (wall, wcpu, mcpu) in sorted(RESULTS.items()):
            print(f'  {what + " / " + kind:<38} {wall:7.2f} {SIZE / (1 << 20) / wall:7.1f} '
                  f'{wcpu:13.2f} {mcpu:13.2f}')


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp('bench-src')
    big = d / 'big.bin'
    digest = write_random_file(big, SIZE, seed=200)
    tree = d / 'tree'
    tree.mkdir()
    for i in range(NFILES):
        write_random_file(tree / f'f{i:03d}.bin', SIZE // NFILES, seed=i)
    return {'file': (big, digest), 'dir': (tree, tree_snapshot(tree))}


def _measure(pool, kind, builder, props):
    w = pool.worker(kind)
    m = pool.master
    w0, m0, t0 = proc_cpu_seconds(w.pid), proc_cpu_seconds(m.pid), time.monotonic()
    b = pool.run(kind, builder, props=props, timeout=600)
    wall = time.monotonic() - t0
    wcpu, mcpu = proc_cpu_seconds(w.pid) - w0, proc_cpu_seconds(m.pid) - m0
    assert b.result == 'SUCCESS', b.describe()
    return wall, wcpu, mcpu


@pytest.mark.both_workers
@pytest.mark.parametrize('what', ['file', 'dir'])
def test_transfer_200mib(pool, worker_kind, what, sources, tmp_path):
    src, expected = sources[what]
    dest = tmp_path / 'dest'
    builder = 'bigup' if what == 'file' else 'bigdir'
    wall, wcpu, mcpu = _measure(pool, worker_kind, builder, {'src': str(src), 'dest': str(dest)})
    label = ('FileUpload 200 MiB' if what == 'file'
             else f'DirectoryUpload {NFILES} x {SIZE // NFILES >> 20} MiB')
    RESULTS[(label, worker_kind)] = (wall, wcpu, mcpu)
    print(f'\n  {label} / {worker_kind}: wall {wall:.2f} s, worker CPU {wcpu:.2f} s, '
          f'master CPU {mcpu:.2f} s')
    if what == 'file':
        assert sha256_file(dest) == expected
        os.unlink(dest)
    else:
        got = tree_snapshot(dest)
        assert {k: v for k, v in got.items() if k} == {k: v for k, v in expected.items() if k}
        shutil.rmtree(dest)
