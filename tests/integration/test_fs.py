"""File-system commands of cworker against the real 3.7 master (reference §7.2): MakeDirectory,
RemoveDirectory, CopyDirectory, FileExists, plus SetPropertyFromCommand and a real `steps.Git`
checkout from a local bare repository.

Every test checks the worker-side file system and what the master stored (step results,
properties through REST). The tests run as root here, and root ignores permission bits, so the
read-only-tree removal is also run by a cworker that drops to `nobody` (setpriv) at start.
"""

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

import bbmaster
import cwhelpers
from cwhelpers import (WORKER_CREDS, WorkerPool, assert_same_tree, describe_build,  # noqa: F401
                       dump_worker_logs, per_kind, tree_snapshot, write_random_file)

BOTH = ('cworker', 'stock')
GIT_ARGS = "repourl=util.Property('repo'), branch='main', workdir=util.Property('gitdir')"

BUILDERS_BOTH = {
    'mkdir': "[steps.MakeDirectory(dir=util.Property('dir'))]",
    'rmdir': "[steps.RemoveDirectory(dir=util.Property('dir'))]",
    'cpdir': "[steps.CopyDirectory(src=util.Property('src'), dest=util.Property('dest'))]",
    'exists': "[steps.FileExists(file=util.Property('file'))]",
    'setprop': "[steps.SetPropertyFromCommand(command=\"printf '  value from stdout \\\\n'\", "
               "property='myprop')]",
    'git_full': f"[steps.Git({GIT_ARGS}, mode='full', method='clobber')]",
    'git_incr': f"[steps.Git({GIT_ARGS}, mode='incremental')]",
}

# A cworker running as `nobody` (uid/gid 65534), for permission handling that root bypasses.
NOBODY_UID = 65534
NOBODY = ('nobody', 'nobodypass')
BUILDERS_NOBODY = {
    'rmdir-nobody': {'steps': BUILDERS_BOTH['rmdir'], 'workernames': [NOBODY[0]]},
}


@pytest.fixture(scope='module')
def master(master_factory):
    builders = per_kind(BUILDERS_BOTH, BOTH)
    builders.update(BUILDERS_NOBODY)
    # CopyDirectory without `cpdir` ends in EXCEPTION: keep the quarantine short
    return master_factory(builders, workers=WORKER_CREDS + (NOBODY,), quarantine_timeout=1)


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin)
    yield p
    p.stop()


def _ok(b):
    assert b.result == 'SUCCESS', describe_build(b)


def _props(b, master):
    return master.get(f'builds/{b.id}/properties')['properties'][0]


# ---- MakeDirectory / FileExists ----------------------------------------------------------------

@pytest.mark.both_workers
def test_make_directory(pool, worker_kind, tmp_path):
    target = tmp_path / 'a' / 'b c' / 'd\u00e9'
    _ok(pool.run(worker_kind, 'mkdir', props={'dir': str(target)}))
    assert target.is_dir()
    # again: already there is fine
    _ok(pool.run(worker_kind, 'mkdir', props={'dir': str(target)}))
    # below a regular file: fails
    (tmp_path / 'plain').write_text('x')
    b = pool.run(worker_kind, 'mkdir', props={'dir': str(tmp_path / 'plain' / 'sub')})
    assert b.result == 'FAILURE', b.describe()
    assert (tmp_path / 'plain').read_text() == 'x'


@pytest.mark.both_workers
def test_file_exists(pool, worker_kind, tmp_path):
    (tmp_path / 'present.txt').write_text('here\n')
    (tmp_path / 'adir').mkdir()
    b = pool.run(worker_kind, 'exists', props={'file': str(tmp_path / 'present.txt')})
    _ok(b)
    assert b.step('FileExists').state_string.startswith('File found.')
    b = pool.run(worker_kind, 'exists', props={'file': str(tmp_path / 'missing.txt')})
    assert b.result == 'FAILURE', b.describe()
    assert b.step('FileExists').state_string.startswith('File not found.')
    b = pool.run(worker_kind, 'exists', props={'file': str(tmp_path / 'adir')})
    assert b.result == 'FAILURE', b.describe()
    assert b.step('FileExists').state_string.startswith('Not a file.')


# ---- RemoveDirectory ---------------------------------------------------------------------------

def _make_doomed_tree(base, owner=None):
    """base/tree: a read-only subtree (dirs 0555, files 0444), a 0000 dir with files, symlinks
    pointing OUTSIDE the tree (to a file and to a directory, relative and absolute).
    base/outside: the symlink targets, which must survive. Returns (tree, outside)."""
    tree, outside = base / 'tree', base / 'outside'
    (outside / 'keep').mkdir(parents=True)
    (outside / 'target.txt').write_text('must survive\n')
    (outside / 'keep' / 'inside.txt').write_text('must survive too\n')
    (tree / 'plain').mkdir(parents=True)
    (tree / 'plain' / 'f').write_text('f\n')
    (tree / 'ro' / 'inner').mkdir(parents=True)
    (tree / 'ro' / 'f').write_text('ro\n')
    (tree / 'ro' / 'inner' / 'g').write_text('g\n')
    (tree / 'locked' / 'deeper').mkdir(parents=True)
    (tree / 'locked' / 'h').write_text('h\n')
    (tree / 'locked' / 'deeper' / 'i').write_text('i\n')
    os.symlink('../outside/target.txt', tree / 'link-out-file')
    os.symlink('../../outside/keep', tree / 'plain' / 'link-out-dir')
    os.symlink(str(outside), tree / 'ro' / 'link-out-abs')
    if owner is not None:
        for p in [base] + [os.path.join(d, n) for d, ds, fs in os.walk(base) for n in ds + fs]:
            os.lchown(p, owner, owner)
    # permissions last, innermost first
    for f in ('ro/f', 'ro/inner/g', 'locked/h'):
        (tree / f).chmod(0o444)
    (tree / 'ro' / 'inner').chmod(0o555)
    (tree / 'ro').chmod(0o555)
    (tree / 'locked' / 'deeper').chmod(0o000)
    (tree / 'locked').chmod(0o000)
    tree.chmod(0o555)
    return tree, outside


@pytest.mark.both_workers
def test_remove_directory_read_only_tree(pool, worker_kind, tmp_path):
    tree, outside = _make_doomed_tree(tmp_path)
    before = tree_snapshot(outside)
    b = pool.run(worker_kind, 'rmdir', props={'dir': str(tree)})
    _ok(b)
    assert not os.path.lexists(tree)
    assert tree_snapshot(outside) == before
    # a directory that is not there: nothing to do, SUCCESS (rm -rf semantics)
    _ok(pool.run(worker_kind, 'rmdir', props={'dir': str(tmp_path / 'never-existed')}))


@pytest.fixture(scope='module')
def nobody_worker(master, cworker_bin):
    """A cworker that runs as `nobody`: a wrapper (run as root by the harness) hands the
    basedir to nobody and execs cworker through `setpriv`. Its base directory is outside
    pytest's 0700 tmp tree, so nobody can reach it. Note: the uid change clears
    PR_SET_PDEATHSIG, so this worker relies on the explicit stop() at module teardown."""
    if os.geteuid() != 0 or not shutil.which('setpriv'):
        pytest.skip('needs root and setpriv to run a worker as nobody')
    area = tempfile.mkdtemp(prefix='cw-nobody-')
    os.chmod(area, 0o755)
    wrapper = os.path.join(area, 'cworker-as-nobody')
    with open(wrapper, 'w') as f:
        f.write('#!/bin/sh\n'
                '# test harness only: run cworker as nobody\n'
                'base=; prev=\n'
                'for a in "$@"; do [ "$prev" = --basedir ] && base=$a; prev=$a; done\n'
                f'chown -R {NOBODY_UID}:{NOBODY_UID} "$base"\n'
                f'exec setpriv --reuid={NOBODY_UID} --regid={NOBODY_UID} --clear-groups '
                f'{cworker_bin} "$@"\n')
    os.chmod(wrapper, 0o755)
    basedir = os.path.join(area, 'worker')
    os.mkdir(basedir)
    w = bbmaster.CWorker(basedir, master, NOBODY[0], NOBODY[1], binary=wrapper)
    cwhelpers._POOL_WORKERS.append(w)   # so dump_worker_logs shows its log on failure
    w.start(timeout=60)
    yield w, area
    w.stop()
    cwhelpers._POOL_WORKERS.remove(w)
    subprocess.run(['chmod', '-R', 'u+rwx', area], check=False)
    shutil.rmtree(area, ignore_errors=True)


def test_remove_directory_read_only_tree_as_nobody(pool, nobody_worker):
    w, area = nobody_worker
    with open(f'/proc/{w.pid}/status') as f:
        uids = next(line for line in f if line.startswith('Uid:')).split()[1:]
    assert set(uids) == {str(NOBODY_UID)}, uids
    base = Path(tempfile.mkdtemp(dir=area, prefix='rm-'))
    tree, outside = _make_doomed_tree(base, owner=NOBODY_UID)
    before = tree_snapshot(outside)
    b = pool.master.run_build('rmdir-nobody', props={'dir': str(tree)})
    _ok(b)
    assert not os.path.lexists(tree)
    assert tree_snapshot(outside) == before
    # the targets were writable for the worker: make sure modes were not touched either
    assert stat.S_IMODE(os.stat(outside / 'target.txt').st_mode) == 0o644


# ---- CopyDirectory -----------------------------------------------------------------------------

@pytest.mark.both_workers
def test_copy_directory(pool, worker_kind, tmp_path):
    # Needs the worker's `cpdir` command: until cworker announces it, CopyDirectory's
    # checkWorkerHasCommand('cpdir') ends the step with EXCEPTION ("worker is too old").
    src = tmp_path / 'src'
    (src / 'a' / 'b').mkdir(parents=True)
    (src / 'empty').mkdir()
    write_random_file(src / 'a' / 'b' / 'data.bin', 100000, seed=1)
    write_random_file(src / 'caf\u00e9 \u20ac.txt', 10, seed=2)
    (src / 'a' / 'run.sh').write_text('#!/bin/sh\necho hi\n')
    (src / 'a' / 'run.sh').chmod(0o755)
    (src / 'a' / 'secret').write_text('s\n')
    (src / 'a' / 'secret').chmod(0o600)
    (src / 'a' / 'b').chmod(0o750)
    os.symlink('a/b/data.bin', src / 'link')
    os.symlink('/nonexistent/target', src / 'a' / 'abs-dangling')
    os.utime(src / 'a' / 'b' / 'data.bin', (1_400_000_000, 1_400_000_000))
    dest = tmp_path / 'copy'
    b = pool.run(worker_kind, 'cpdir', props={'src': str(src), 'dest': str(dest)})
    _ok(b)
    snap = assert_same_tree(src, dest, mtimes=True)
    assert snap['link'] == ('link', 'a/b/data.bin')


# ---- SetPropertyFromCommand --------------------------------------------------------------------

@pytest.mark.both_workers
def test_set_property_from_command(pool, worker_kind):
    b = pool.run(worker_kind, 'setprop')
    _ok(b)
    props = _props(b, pool.master)
    assert props['myprop'] == ['value from stdout', 'SetPropertyFromCommand Step']
    assert b.log('setproperty', 'property changes').raw == "myprop: 'value from stdout'\n"


# ---- Git ---------------------------------------------------------------------------------------

def _git(*args, cwd, env):
    r = subprocess.run(['git', *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f'git {args}: {r.stdout}{r.stderr}'
    return r.stdout.strip()


@pytest.mark.both_workers
def test_git_clobber_then_incremental(pool, worker_kind, tmp_path):
    home = tmp_path / 'home'
    home.mkdir()
    env = dict(os.environ, HOME=str(home), GIT_CONFIG_NOSYSTEM='1',
               GIT_AUTHOR_NAME='Test Author', GIT_AUTHOR_EMAIL='author@example.com',
               GIT_COMMITTER_NAME='Test Committer', GIT_COMMITTER_EMAIL='c@example.com')
    bare, wc = tmp_path / 'repo.git', tmp_path / 'wc'
    _git('init', '-q', '--bare', '-b', 'main', str(bare), cwd=tmp_path, env=env)
    _git('init', '-q', '-b', 'main', str(wc), cwd=tmp_path, env=env)
    _git('remote', 'add', 'origin', f'file://{bare}', cwd=wc, env=env)
    (wc / 'content.txt').write_text('first version\n')
    (wc / 'sub').mkdir()
    (wc / 'sub' / 'tool.sh').write_text('#!/bin/sh\necho tool\n')
    (wc / 'sub' / 'tool.sh').chmod(0o755)
    (wc / 'gone-later.txt').write_text('removed in the second commit\n')
    _git('add', '-A', cwd=wc, env=env)
    _git('commit', '-q', '-m', 'first', cwd=wc, env=env)
    _git('push', '-q', 'origin', 'main', cwd=wc, env=env)
    rev1 = _git('rev-parse', 'HEAD', cwd=wc, env=env)

    gitdir = tmp_path / 'checkout'
    gitdir.mkdir()
    (gitdir / 'stale.txt').write_text('clobber removes me\n')
    props = {'repo': f'file://{bare}', 'gitdir': str(gitdir)}
    b = pool.run(worker_kind, 'git_full', props=props, timeout=120)
    _ok(b)
    assert _props(b, pool.master)['got_revision'][0] == rev1
    assert not (gitdir / 'stale.txt').exists()
    assert (gitdir / 'content.txt').read_text() == 'first version\n'
    assert os.access(gitdir / 'sub' / 'tool.sh', os.X_OK)
    assert _git('rev-parse', 'HEAD', cwd=gitdir, env=env) == rev1
    assert _git('status', '--porcelain', cwd=gitdir, env=env) == ''

    (wc / 'content.txt').write_text('second version\n')
    (wc / 'new.txt').write_text('added\n')
    _git('rm', '-q', 'gone-later.txt', cwd=wc, env=env)
    _git('add', '-A', cwd=wc, env=env)
    _git('commit', '-q', '-m', 'second', cwd=wc, env=env)
    _git('push', '-q', 'origin', 'main', cwd=wc, env=env)
    rev2 = _git('rev-parse', 'HEAD', cwd=wc, env=env)
    (gitdir / 'untracked.txt').write_text('incremental keeps me\n')

    b = pool.run(worker_kind, 'git_incr', props=props, timeout=120)
    _ok(b)
    assert _props(b, pool.master)['got_revision'][0] == rev2
    assert (gitdir / 'untracked.txt').exists(), 'incremental mode must not clobber'
    assert (gitdir / 'content.txt').read_text() == 'second version\n'
    assert (gitdir / 'new.txt').read_text() == 'added\n'
    assert not (gitdir / 'gone-later.txt').exists()
    assert _git('rev-parse', 'HEAD', cwd=gitdir, env=env) == rev2
    assert _git('status', '--porcelain', '--untracked-files=no', cwd=gitdir, env=env) == ''
