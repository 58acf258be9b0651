"""The container image of scripts/build-image against the real master (marked `slow`: the
per-protocol passes of scripts/check leave it out; its image stage builds the image and runs
this file).

* its root file system, chrooted as the image's user and as PID 1 of a PID namespace (the way a
  container runs it), configured by nothing but the official image's variables: a build passes
  over PB (the default) and over msgpack; WORKERPASS and what WORKER_ENVIRONMENT_BLACKLIST names
  never reach the build step; the build's files belong to the image's user; SIGTERM ends it 0;
* as PID 1 it reaps the orphans a build leaves (the official image needs dumb-init for that);
* the OCI archive written without container tools unpacks (umoci) to the same files, and
  podman's build of packaging/Containerfile has the same configuration and files;
* with podman, where it can run containers here, the image itself runs a build.

Needs root (chroot, unshare) and `scripts/build-image` first (CW_IMAGE_DIR, default
build-image/).  The PID-1 test borrows busybox (busybox-static) into its copy of the file
system: the image has no shell.
"""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time

import pytest

import bbmaster
from cwhelpers import describe_build

pytestmark = pytest.mark.slow

IMAGE_DIR = os.environ.get('CW_IMAGE_DIR') or os.path.join(bbmaster.REPO_ROOT, 'build-image')
BUSYBOX = '/bin/busybox'
PASSWORD = 'image-pass'

PROBE = "[steps.ShellCommand(name='probe', command=['/bin/cworker', '--version'], logEnviron=True)]"
# the subshell ends at once; its `sleep` is orphaned and adopted by PID 1: cworker
ORPHAN = ("[steps.ShellCommand(name='orphan', logEnviron=False, command=['/bin/busybox', 'sh', "
          "'-c', '(/bin/busybox sleep 3 >/dev/null 2>&1 &); echo left an orphan'])]")


def _need_root():
    if os.geteuid() != 0:
        pytest.fail('chroot and unshare need root (scripts/check runs as root)', pytrace=False)


@pytest.fixture(scope='module')
def image():
    """{'dir', 'rootfs', 'sizes', 'config' (the OCI image configuration)}."""
    rootfs = os.path.join(IMAGE_DIR, 'rootfs')
    if not os.path.exists(os.path.join(rootfs, 'bin', 'cworker')):
        pytest.fail(f'no image in {IMAGE_DIR}: run scripts/build-image first', pytrace=False)
    with open(os.path.join(IMAGE_DIR, 'sizes.json')) as f:
        sizes = json.load(f)
    with open(os.path.join(IMAGE_DIR, 'oci', 'blobs', 'sha256', sizes['config'][7:])) as f:
        config = json.load(f)
    return {'dir': IMAGE_DIR, 'rootfs': rootfs, 'sizes': sizes, 'config': config}


@pytest.fixture(scope='module')
def master(master_factory):
    # a PB port whatever this run's CW_PROTOCOL: the image's default protocol is pb
    return master_factory({'probe': PROBE, 'orphan': ORPHAN}, workers=(('img', PASSWORD),),
                          pb_port=bbmaster.free_port())


def _copy_rootfs(image, dest, busybox=False):
    """A private copy of the image's files (owners and modes kept), plus /dev/null, which a
    container runtime would provide; busybox=True adds /bin/busybox for shell steps."""
    subprocess.run(['cp', '-a', image['rootfs'], str(dest)], check=True)
    os.makedirs(dest / 'dev', exist_ok=True)
    os.mknod(dest / 'dev' / 'null', stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(dest / 'dev' / 'null', 0o666)  # past the umask: the image's user writes to it
    if busybox:
        if not os.access(BUSYBOX, os.X_OK):
            pytest.fail(f'{BUSYBOX} missing: apt-get install busybox-static', pytrace=False)
        shutil.copy2(BUSYBOX, dest / 'bin' / 'busybox')
    return dest


def _runtime_env(image, **variables):
    """The environment a container runtime gives the image's CMD: the image's Env, HOME of its
    user, then the variables given (None removes one)."""
    env = dict(e.split('=', 1) for e in image['config']['config'].get('Env', []))
    env['HOME'] = '/home/buildbot'
    env['HOSTNAME'] = 'cworker-image-test'
    for k, v in variables.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class ChrootWorker:
    """`unshare --pid --fork chroot --userspec=UID:GID ROOT CMD`: the image's CMD as its USER, as
    PID 1 of a new PID namespace.  .pid is cworker's PID on the host."""

    def __init__(self, image, root, env, logpath):
        cfg = image['config']['config']
        user = cfg['User']
        argv = ['unshare', '--pid', '--fork', '--kill-child', 'chroot', f'--userspec={user}',
                str(root)] + cfg.get('Entrypoint', []) + cfg['Cmd']
        self.log = open(logpath, 'wb')
        self.logpath = logpath
        self.outer = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                      stderr=subprocess.STDOUT, cwd=str(root))
        self.pid = bbmaster.wait_for(lambda: (bbmaster.descendants(self.outer.pid) or [None])[0],
                                     10, 'the chrooted cworker to start')

    def log_text(self):
        with open(self.logpath, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def terminate(self, timeout=30):
        """SIGTERM to cworker (PID 1 inside); returns unshare's exit status, which is its."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return self.outer.wait(timeout)
        finally:
            self.log.close()

    def kill(self):
        """Clean-up: SIGKILL cworker, PID 1 inside, which ends everything in its namespace
        (unshare's --kill-child does not reach it: chroot --userspec changes its credentials,
        which clears the parent-death signal)."""
        if self.outer.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.outer.wait(10)
            except subprocess.TimeoutExpired:
                self.outer.kill()
                self.outer.wait(10)
        self.log.close()


def _header_env(log):
    """{name: value} from the ' environment:' block of a step's header (logEnviron)."""
    env, inside = {}, False
    for line in log.header.splitlines():
        if line.startswith(' environment:'):
            inside = True
        elif inside and line.startswith('  '):
            k, _, v = line[2:].partition('=')
            env[k] = v
        elif inside:
            break
    return env


def test_root_file_system(image):
    r = image['rootfs']
    out = subprocess.run(['readelf', '-d', '-l', os.path.join(r, 'bin', 'cworker')],
                         capture_output=True, text=True).stdout
    assert 'There is no dynamic section' in out and 'INTERP' not in out
    passwd = open(os.path.join(r, 'etc', 'passwd')).read()
    assert 'buildbot:x:1000:1000:' in passwd
    for d in ('buildbot', 'home/buildbot'):
        st = os.stat(os.path.join(r, d))
        assert (st.st_uid, st.st_gid) == (1000, 1000), d
    assert stat.S_IMODE(os.stat(os.path.join(r, 'tmp')).st_mode) == 0o1777
    bundle = open(os.path.join(r, 'etc', 'ssl', 'certs', 'ca-certificates.crt')).read()
    assert bundle.count('BEGIN CERTIFICATE') > 100
    assert os.path.realpath(os.path.join(r, 'usr/lib/ssl/cert.pem'), strict=False).endswith(
        '/etc/ssl/certs/ca-certificates.crt')
    # nothing a shell or a library would need: the image is the binary and its data
    files = [os.path.relpath(os.path.join(d, f), r) for d, _, fs in os.walk(r) for f in fs]
    assert not [f for f in files if f.endswith('.so') or '.so.' in f], files
    cfg = image['config']['config']
    assert cfg['User'] == '1000:1000' and cfg['WorkingDir'] == '/buildbot'
    assert cfg['Cmd'] == ['/bin/cworker'] and 'CWORKER_MAX_RETRIES=10' in cfg['Env']
    s = image['sizes']
    print(f"\nimage: root file system {s['rootfs_bytes']} bytes ({s['rootfs_bytes'] / 1048576:.2f} "
          f"MiB), binary {s['binary_bytes']}, layer {s['layer_size']} bytes gzipped "
          f"({s['layer_size'] / 1048576:.2f} MiB)")


@pytest.mark.parametrize('protocol', ['pb', 'msgpack'])
def test_chroot_build_from_the_image_variables(image, master, tmp_path, protocol):
    """The image's files alone, its user, PID 1, and only the official image's variables:
    BUILDMASTER left at its default (localhost, from the image's /etc/hosts) over PB."""
    _need_root()
    root = _copy_rootfs(image, tmp_path / 'root')
    variables = {
        'BUILDMASTER': None if protocol == 'pb' else '127.0.0.1',
        'BUILDMASTER_PORT': str(master.worker_port(protocol)),
        'BUILDMASTER_PROTOCOL': None if protocol == 'pb' else 'msgpack',
        'WORKERNAME': 'img', 'WORKERPASS': PASSWORD,
        'WORKER_ENVIRONMENT_BLACKLIST': 'DEPLOY_* API_TOKEN',
        'DEPLOY_KEY': 'dk-secret', 'API_TOKEN': 'tok-secret', 'KEEP_ME': 'kept'}
    w = ChrootWorker(image, root, _runtime_env(image, **variables), tmp_path / 'worker.log')
    try:
        master.wait_worker_connected('img', timeout=30)
        b = master.run_build('probe')
        assert b.result == 'SUCCESS', describe_build(b) + '\n' + w.log_text()
        log = b.log('probe')
        assert log.stdout.startswith('cworker '), log.stdout
        env = _header_env(log)
        for var in ('WORKERPASS', 'DEPLOY_KEY', 'API_TOKEN'):
            assert var not in env, (var, log.header)
        for secret in (PASSWORD, 'dk-secret', 'tok-secret'):
            assert secret not in log.raw, secret
        assert env.get('KEEP_ME') == 'kept' and env.get('HOME') == '/home/buildbot', env
        assert env.get('CWORKER_MAX_RETRIES') == '10', env
        # the build ran in the image's basedir, as its user
        st = os.stat(root / 'buildbot' / 'probe')
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert w.terminate() == 0, w.log_text()
    finally:
        w.kill()
    master.wait_worker_disconnected('img', timeout=15)


def _children(pid):
    """[(pid, state, comm)] of the live children of `pid` on the host."""
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat', 'rb') as f:
                s = f.read()
        except OSError:
            continue
        rp = s.rfind(b')')
        fields = s[rp + 2:].split()
        if int(fields[1]) == pid:
            out.append((int(entry), fields[0].decode(), s[s.find(b'(') + 1:rp].decode()))
    return out


def test_pid1_reaps_orphans(image, master, tmp_path):
    """A build's orphan is adopted by cworker, PID 1 of the namespace, and reaped when it
    ends: no zombie stays behind (the official image runs dumb-init for this)."""
    _need_root()
    root = _copy_rootfs(image, tmp_path / 'root', busybox=True)
    env = _runtime_env(image, BUILDMASTER='127.0.0.1',
                       BUILDMASTER_PORT=str(master.worker_port('pb')), WORKERNAME='img',
                       WORKERPASS=PASSWORD)
    w = ChrootWorker(image, root, env, tmp_path / 'worker.log')
    try:
        master.wait_worker_connected('img', timeout=30)
        b = master.run_build('orphan')
        assert b.result == 'SUCCESS', describe_build(b) + '\n' + w.log_text()
        assert b.log('orphan').stdout == 'left an orphan\n'
        adopted = [c for c in _children(w.pid) if c[2] == 'busybox']
        assert adopted, ('the orphan was not adopted by cworker', _children(w.pid))
        bbmaster.wait_for(lambda: not _children(w.pid), 10,
                          'the orphan to end and be reaped (no zombie child of PID 1)')
        assert w.terminate() == 0, w.log_text()
    finally:
        w.kill()
    master.wait_worker_disconnected('img', timeout=15)


def _tar_members(fileobj=None, path=None):
    """{name: (type, mode, uid, gid, size, linkname, sha256 of a file's bytes)}, names
    normalised to 'bin/cworker' form."""
    out = {}
    with tarfile.open(name=path, fileobj=fileobj, mode='r:*') as t:
        for m in t:
            name = m.name[2:] if m.name.startswith('./') else m.name
            name = name.rstrip('/')
            if not name or name == '.':
                continue
            digest = hashlib.sha256(t.extractfile(m).read()).hexdigest() if m.isfile() else None
            out[name] = (m.type, m.mode & 0o7777, m.uid, m.gid, m.size if m.isfile() else 0,
                         m.linkname, digest)
    return out


def test_oci_archive_unpacks_to_the_root_file_system(image, tmp_path):
    """The hand-written OCI layout is a valid image: umoci (Debian's) unpacks it to the same
    files, owners and modes as the root file system tar."""
    if not shutil.which('umoci'):
        pytest.fail('umoci missing: apt-get install umoci', pytrace=False)
    _need_root()
    tag = 'cworker:' + image['sizes']['version']
    bundle = tmp_path / 'bundle'
    r = subprocess.run(['umoci', 'unpack', '--image', f"{image['dir']}/oci:{tag}", str(bundle)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = _tar_members(path=os.path.join(image['dir'], 'cworker-rootfs.tar'))
    got = {}
    for d, dirs, files in os.walk(bundle / 'rootfs'):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, bundle / 'rootfs')
            got[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    assert set(got) == set(want), set(got) ^ set(want)
    for name, (_t, mode, uid, gid, *_rest) in want.items():
        assert got[name] == (mode, uid, gid), (name, got[name], (mode, uid, gid))
    spec = json.load(open(bundle / 'config.json'))
    assert spec['process']['args'] == ['/bin/cworker']
    assert spec['process']['cwd'] == '/buildbot'
    assert (spec['process']['user']['uid'], spec['process']['user']['gid']) == (1000, 1000)


# ------------------------------------------------------------------------------------------
# podman, where scripts/build-image could use it

def _engine(image):
    try:
        return open(os.path.join(image['dir'], 'engine')).read().strip()
    except OSError:
        return 'none'


@pytest.fixture(scope='module')
def podman_image(image):
    if _engine(image) != 'podman':
        pytest.skip(f"scripts/build-image built no podman image here (engine: {_engine(image)})")
    return f"localhost/cworker:{image['sizes']['version']}"


def test_podman_build_matches_the_oci_archive(image, podman_image, tmp_path):
    """podman's build of packaging/Containerfile and packaging/oci-image.py's image agree: the
    same configuration and the same files, owners and modes."""
    r = subprocess.run(['podman', 'image', 'inspect', podman_image], capture_output=True,
                       text=True, check=True)
    pcfg = json.loads(r.stdout)[0]['Config']
    pcfg.get('Labels', {}).pop('io.buildah.version', None)
    ours = image['config']['config']
    assert pcfg == ours, (pcfg, ours)
    archive = tmp_path / 'podman.oci.tar'
    subprocess.run(['podman', 'save', '--format', 'oci-archive', '-o', str(archive),
                    podman_image], check=True, capture_output=True, timeout=120)
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile('index.json'))
        manifest = json.load(t.extractfile('blobs/sha256/' + index['manifests'][0]['digest'][7:]))
        assert len(manifest['layers']) == 1, manifest
        layer = t.extractfile('blobs/sha256/' + manifest['layers'][0]['digest'][7:])
        got = _tar_members(fileobj=layer)
    want = _tar_members(path=os.path.join(image['dir'], 'cworker-rootfs.tar'))
    assert set(got) == set(want), set(got) ^ set(want)
    for name in want:
        assert got[name][:6] == want[name][:6] and got[name][6] == want[name][6], name


@pytest.fixture(scope='module')
def podman_run_args(podman_image):
    """podman's default runtime (crun) cannot start containers on every machine; this one's
    mix of cgroup v1 and v2 and lowered limits need runc and explicit limits.  Returns the
    extra `podman run` arguments that work, or raises Skipped with podman's own words."""
    tries = [[], ['--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024']]
    errors = []
    for extra in tries:
        if extra and not shutil.which('runc'):
            continue
        r = subprocess.run(['podman', 'run', '--rm', '--network=host'] + extra +
                           [podman_image, '/bin/cworker', '--version'],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0 and r.stdout.startswith('cworker '):
            return extra
        errors.append(f"{' '.join(extra) or '(defaults)'}: {r.stderr.strip()[-300:]}")
    pytest.skip('podman cannot run containers on this machine: ' + ' | '.join(errors))


@pytest.mark.parametrize('protocol', ['pb', 'msgpack'])
def test_podman_runs_a_build(image, podman_image, podman_run_args, master, tmp_path, protocol):
    extra = podman_run_args
    name = f'cworker-image-test-{os.getpid()}-{protocol}'
    argv = ['podman', 'run', '--rm', '--name', name, '--network=host'] + extra + [
        '-e', 'BUILDMASTER=127.0.0.1', '-e', f'BUILDMASTER_PORT={master.worker_port(protocol)}',
        '-e', 'WORKERNAME=img', '-e', 'WORKERPASS', '-e', 'WORKER_ENVIRONMENT_BLACKLIST=DEPLOY_*',
        '-e', 'DEPLOY_KEY', '-e', 'KEEP_ME=kept']
    if protocol == 'msgpack':
        argv += ['-e', 'BUILDMASTER_PROTOCOL=msgpack']
    argv.append(podman_image)
    env = dict(os.environ, WORKERPASS=PASSWORD, DEPLOY_KEY='dk-secret')  # not on the command line
    log = open(tmp_path / 'podman.log', 'wb')
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        master.wait_worker_connected('img', timeout=60)
        attach = time.monotonic() - t0
        b = master.run_build('probe')
        assert b.result == 'SUCCESS', describe_build(b) + open(tmp_path / 'podman.log').read()
        env = _header_env(b.log('probe'))
        assert 'WORKERPASS' not in env and 'DEPLOY_KEY' not in env, env
        assert env.get('KEEP_ME') == 'kept', env
        t1 = time.monotonic()
        r = subprocess.run(['podman', 'stop', '-t', '30', name], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert p.wait(60) == 0, open(tmp_path / 'podman.log').read()
        print(f'\npodman run over {protocol}: attached {attach:.2f} s after `podman run`, '
              f'`podman stop` took {time.monotonic() - t1:.2f} s')
    finally:
        if p.poll() is None:
            subprocess.run(['podman', 'rm', '-f', name], capture_output=True, timeout=60)
            p.wait(30)
        log.close()
    master.wait_worker_disconnected('img', timeout=15)
