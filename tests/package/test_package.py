"""The Debian package (debian/, scripts/build-deb): build it, install it, use it, purge it.

Run as root with Debian's interpreter (it has pytest and buildbot):

    /usr/bin/python3 -m pytest tests/package -v -s

CWORKER_DEB=/path/to/cworker_VERSION_ARCH.deb tests that .deb instead of building one with
scripts/build-deb.  The tests install the package on this machine with apt-get and purge it
again, also when they fail (fixture teardown).  They refuse to start when cworker is
installed already, or a cworker account, /etc/cworker or /var/lib/cworker exists: the tests
would take those for the package's and remove them.

What purge must leave: nothing, when the administrator removed the workers' configuration
and data first (test_purge_leaves_nothing: the list of paths under /etc, /usr and /var/lib
is the same as before the install, the account and group are gone); the administrator's
files in /etc/cworker and /var/lib/cworker, and the account that owns them, otherwise
(test_purge_keeps_the_administrators_files; debian/cworker.postrm says why).
"""

import contextlib
import os
import pwd
import grp
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'integration'))

import bbmaster  # noqa: E402

PKG = 'cworker'
ACCOUNT = 'cworker'
CONF_DIR = Path('/etc/cworker')
HOME = Path('/var/lib/cworker')
UNIT = Path('/lib/systemd/system/cworker@.service')
SNAPSHOT_ROOTS = ('/etc', '/usr', '/var/lib')
SERVICE_INSTANCE = 'pkgtest'     # cworker@pkgtest.service, run as the unit would
APT = ['apt-get', '-o', 'DPkg::Lock::Timeout=600']
APT_ENV = dict(os.environ, DEBIAN_FRONTEND='noninteractive')


def run(argv, check=True, timeout=900, **kw):
    """Run a command, output captured; on failure the assertion shows both streams."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, (f'{shlex.join(argv)}: exit {p.returncode}\n'
                                   f'stdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}')
    return p


def pkg_status(name=PKG):
    """dpkg's status of a package: 'install ok installed', 'deinstall ok config-files', ...
    or '' when dpkg does not know it."""
    p = run(['dpkg-query', '-W', '-f=${Status}', name], check=False)
    return p.stdout.strip() if p.returncode == 0 else ''


def on_machine(name=PKG):
    """Installed, half-installed or with configuration files left: anything but purged."""
    st = pkg_status(name)
    return bool(st) and not st.endswith(' not-installed')


def account_exists():
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(ACCOUNT)
    return None


def group_exists():
    with contextlib.suppress(KeyError):
        return grp.getgrnam(ACCOUNT)
    return None


def snapshot():
    """Every path under /etc, /usr and /var/lib (symlinks not followed, one file system)."""
    paths = set()
    for root in SNAPSHOT_ROOTS:
        dev = os.lstat(root).st_dev
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if os.lstat(os.path.join(d, x)).st_dev == dev]
            paths.update(os.path.join(d, x) for x in dirs + files)
    return paths


# Changes that are never this package's and happen on a shared machine at any time:
# package lists from anybody's `apt-get update`, Python byte code that the Buildbot master
# (Debian's python3) compiles on first import.
UNRELATED = (re.compile(r'^/var/lib/apt/lists/'), re.compile(r'/__pycache__(/|$)'))


def dpkg_log_actions(since):
    """(action, package) for each install/upgrade/remove/purge in /var/log/dpkg.log since
    `since` ('YYYY-MM-DD HH:MM:SS')."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        with open('/var/log/dpkg.log', errors='replace') as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and f'{parts[0]} {parts[1]}' >= since and \
                        parts[2] in ('install', 'upgrade', 'remove', 'purge'):
                    out.append((parts[2], parts[3].split(':')[0]))
    return out


class Installation:
    """One install of the .deb: the state before it, what apt-get installed with it."""

    def __init__(self, deb):
        self.deb = deb
        self.before = None
        self.started = None          # dpkg.log time stamp before the install
        self.new_packages = []       # packages apt-get installed (cworker and dependencies)
        self.install_output = ''
        self.purged = False

    def check_preconditions(self):
        problems = []
        if on_machine():
            problems.append(f'package {PKG} is on this machine already ({pkg_status()})')
        if account_exists():
            problems.append(f'an account {ACCOUNT} exists already')
        if group_exists():
            problems.append(f'a group {ACCOUNT} exists already')
        for p in (CONF_DIR, HOME):
            if os.path.lexists(p):
                problems.append(f'{p} exists already')
        if problems:
            pytest.fail('refusing to install and purge the package: ' + '; '.join(problems) +
                        ' (the test would remove them as the package\'s)', pytrace=False)

    def install(self):
        self.before = snapshot()
        self.started = time.strftime('%Y-%m-%d %H:%M:%S')
        t0 = time.monotonic()
        p = run(APT + ['install', '-y', '--no-install-recommends', str(self.deb)], env=APT_ENV,
                check=False)
        self.install_output = p.stdout + p.stderr
        m = re.search(r'The following NEW packages will be installed:\n((?:  .*\n)+)', p.stdout)
        self.new_packages = m.group(1).split() if m else []
        print(f'\napt-get install {self.deb.name}: {time.monotonic() - t0:.1f} s; new packages: '
              f'{" ".join(self.new_packages) or "none"}')
        assert p.returncode == 0, f'apt-get install failed:\n{self.install_output[-4000:]}'
        assert pkg_status() == 'install ok installed'

    def purge(self):
        """apt-get purge cworker (what an administrator runs); returns apt-get's output."""
        t0 = time.monotonic()
        p = run(APT + ['purge', '-y', PKG], env=APT_ENV, check=False)
        print(f'apt-get purge {PKG}: {time.monotonic() - t0:.1f} s')
        self.purged = p.returncode == 0
        assert p.returncode == 0, f'apt-get purge failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}'
        return p.stdout + p.stderr

    def leftovers(self):
        """Paths added or removed since before the install that this package could have
        caused: [(sign, path)]."""
        after = snapshot()
        diff = [('+', x) for x in after - self.before] + [('-', x) for x in self.before - after]
        diff = sorted((s, x) for s, x in diff if not any(r.search(x) for r in UNRELATED))
        mine = {PKG, *self.new_packages}
        others = sorted({p for _, p in dpkg_log_actions(self.started) if p not in mine})
        if others and diff:
            # somebody else installed or removed packages meanwhile (a shared machine): their
            # files cannot be told from ours by name, except that ours name cworker
            print(f'other dpkg activity since the install ({", ".join(others)}); not counted: ' +
                  ', '.join(s + x for s, x in diff if 'cworker' not in x))
            diff = [(s, x) for s, x in diff if 'cworker' in x]
        return diff

    def cleanup(self):
        """Leave the machine as it was, whatever happened (fixture teardown).  Runs only
        after check_preconditions() passed: what it removes did not exist before."""
        if on_machine():
            p = run(APT + ['purge', '-y', PKG], env=APT_ENV, check=False)
            if p.returncode != 0:
                print(f'cleanup: apt-get purge {PKG} failed, forcing dpkg --purge:\n'
                      f'{p.stderr[-2000:]}')
                run(['dpkg', '--purge', '--force-remove-reinstreq', PKG], check=False)
        deps = [x for x in self.new_packages
                if x != PKG and pkg_status(x) == 'install ok installed']
        if deps:
            run(APT + ['purge', '-y'] + deps, env=APT_ENV, check=False)
        # preconditions said none of these existed before
        if account_exists():
            run(['userdel', ACCOUNT], check=False)
        if group_exists():
            run(['groupdel', ACCOUNT], check=False)
        for p in (CONF_DIR, HOME):
            if os.path.lexists(p):
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def installed(deb):
    inst = Installation(deb)
    # outside the try: when the machine has a cworker of its own, cleanup() must not run
    inst.check_preconditions()
    try:
        inst.install()
        yield inst
    finally:
        inst.cleanup()


@pytest.fixture(scope='session')
def deb(tmp_path_factory):
    """The .deb: $CWORKER_DEB, or built now by scripts/build-deb (lintian included)."""
    if os.geteuid() != 0:
        pytest.fail('the package tests install packages: run them as root', pytrace=False)
    env_deb = os.environ.get('CWORKER_DEB')
    if env_deb:
        path = Path(env_deb).resolve()
        assert path.is_file(), f'CWORKER_DEB={env_deb}: no such file'
        return path
    out = tmp_path_factory.mktemp('deb')
    t0 = time.monotonic()
    p = run([str(REPO / 'scripts' / 'build-deb'), str(out)], check=False, cwd=REPO)
    print(f'\nscripts/build-deb: {time.monotonic() - t0:.1f} s\n{p.stdout}')
    assert p.returncode == 0, f'scripts/build-deb failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}'
    path = Path(p.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out, p.stdout
    return path


@pytest.fixture(scope='class')
def pkg(deb):
    with installed(deb) as inst:
        yield inst


def unit_settings(path=UNIT):
    """{key: [values]} of the unit's [Unit], [Service] and [Install] lines."""
    d = {}
    for line in path.read_text().splitlines():
        m = re.match(r'^([A-Za-z]+)=(.*)$', line)
        if m:
            d.setdefault(m.group(1), []).append(m.group(2).strip())
    return d


# ---- the installed files ------------------------------------------------------------------

def test_package_metadata(deb):
    f = run(['dpkg-deb', '-f', str(deb), 'Package', 'Version', 'Depends',
             'Static-Built-Using']).stdout
    upstream = re.search(r"^\s*version : '([^']+)'", (REPO / 'meson.build').read_text(), re.M)[1]
    assert re.search(rf'^Version: {re.escape(upstream)}-\d+$', f, re.M), f
    # dpkg-shlibdeps found the libraries the binaries link (libssl3: cworker loads libssl on
    # the first wss:// connection, cworker-master links libcrypto; zlib1g, libbz2-1.0: the
    # gzip and bzip2 filters of the libarchive objects linked in)
    for lib in ('libc6', 'libuv1', 'libmsgpackc2', 'libssl3', 'zlib1g', 'libbz2-1.0', 'adduser'):
        assert re.search(rf'\b{lib}\b', f), f'{lib} missing from Depends:\n{f}'
    # libarchive is linked from its static archive, only the tar code (docs/performance.md,
    # "Footprint"): not libarchive13 and what it pulls (libxml2, ICU: 37 MiB installed)
    for lib in ('libarchive13', 'libxml2', 'libicu72'):
        assert not re.search(rf'\b{lib}\b', f), f'{lib} in Depends:\n{f}'
    assert re.search(r'^Static-Built-Using: .*\blibarchive \(= ', f, re.M), f


class TestInstalled:
    """One install: the files, the account, the unit, builds, then a purge that must leave
    nothing behind.  The class-scoped fixture purges whatever is left when the class ends."""

    def test_installed_files(self, pkg):
        files = set(run(['dpkg', '-L', PKG]).stdout.split())
        expected = {
            '/usr/bin/cworker', '/usr/bin/cworker-master', str(UNIT),
            '/usr/share/man/man1/cworker.1.gz', '/usr/share/man/man1/cworker-master.1.gz',
            '/usr/share/doc/cworker/cworker.conf.example', '/usr/share/doc/cworker/README.md.gz',
            '/usr/share/doc/cworker/copyright', '/usr/share/doc/cworker/changelog.Debian.gz',
            '/usr/share/doc/cworker/README.Debian',
            str(CONF_DIR),
        }
        assert expected <= files, f'missing: {sorted(expected - files)}'
        # docs/*.md, compressed by dh_compress when larger than 4 KiB
        for doc in (REPO / 'docs').glob('*.md'):
            d = f'/usr/share/doc/cworker/docs/{doc.name}'
            assert d in files or d + '.gz' in files, f'{doc.name} missing'
        for b in ('/usr/bin/cworker', '/usr/bin/cworker-master'):
            assert os.access(b, os.X_OK)
        out = run(['/usr/bin/cworker', '--version']).stdout
        assert 'msgpack_experimental_v7' in out, out
        assert run(['/usr/bin/cworker-master', '--version']).stdout.startswith('cworker-master ')
        # stripped (the symbols are in cworker-dbgsym)
        assert '.symtab' not in run(['readelf', '-S', '/usr/bin/cworker']).stdout
        st = os.stat(CONF_DIR)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755


    def test_example_config_checks_against_the_installed_layout(self, pkg, tmp_path):
        """The shipped example, with its password, passes --check-config: its basedir
        /var/lib/cworker/NAME lies in the package's directory."""
        conf = tmp_path / 'w.conf'
        shutil.copy('/usr/share/doc/cworker/cworker.conf.example', conf)
        os.chmod(conf, 0o600)
        p = run(['/usr/bin/cworker', '--config', str(conf), '--check-config'], check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not (HOME / 'NAME').exists()


    def test_account(self, pkg):
        pw = account_exists()
        assert pw, 'no cworker account'
        assert pw.pw_uid < 1000, f'not a system account: uid {pw.pw_uid}'
        assert pw.pw_dir == str(HOME)
        assert pw.pw_shell in ('/usr/sbin/nologin', '/sbin/nologin', '/bin/false'), pw.pw_shell
        gr = group_exists()
        assert gr and gr.gr_gid == pw.pw_gid, 'the account\'s primary group is not cworker'
        st = os.stat(HOME)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == pw.pw_uid
        # no password: nobody logs in as cworker
        shadow = run(['getent', 'shadow', ACCOUNT]).stdout.split(':')
        assert shadow[1] in ('*', '!', '!*') or shadow[1].startswith('!'), shadow[1]


    def test_unit(self, pkg):
        """systemd-analyze verify (offline too: it loads the unit from disk and checks that
        ExecStart's program and the Documentation= man page exist), and the unit's paths and
        account are the package's."""
        p = run(['systemd-analyze', 'verify', 'cworker@test.service'], check=False)
        assert p.returncode == 0 and not p.stderr.strip(), p.stdout + p.stderr
        u = unit_settings()
        argv = shlex.split(u['ExecStart'][0])
        assert argv == ['/usr/bin/cworker', '--config', '/etc/cworker/%i.conf'], argv
        assert u['User'] == [ACCOUNT] and u['Group'] == [ACCOUNT]
        assert u['StateDirectory'] == ['cworker/%i']       # /var/lib/cworker/NAME: the home
        assert u['ConfigurationDirectory'] == ['cworker']  # /etc/cworker
        # a template: no instance enabled or started by the package
        wants = list(Path('/etc/systemd/system').glob('*/cworker@*'))
        assert not wants, wants


    def test_man_pages(self, pkg):
        for page in ('cworker', 'cworker-master'):
            path = run(['man', '-w', page]).stdout.strip()
            assert path == f'/usr/share/man/man1/{page}.1.gz', path
            text = run(['man', '-P', 'cat', page], env=dict(os.environ, MANWIDTH='80')).stdout
            assert page in text and len(text) > 1000


    # ---- a real build -------------------------------------------------------------------------


    def test_builds_with_the_installed_binary(self, pkg, tmp_path):
        """Two workers on the real Buildbot master, both the installed /usr/bin/cworker:
        w1 through the project's harness (as root, basedir in a temporary directory), and
        SERVICE_INSTANCE the way cworker@pkgtest.service runs it: the unit's ExecStart as its
        User=/Group=, /etc/cworker/pkgtest.conf, basedir in the state directory."""
        u = unit_settings()
        exec_start = [a.replace('%i', SERVICE_INSTANCE) for a in shlex.split(u['ExecStart'][0])]
        conf = Path(exec_start[exec_start.index('--config') + 1])
        state = Path('/var/lib') / u['StateDirectory'][0].replace('%i', SERVICE_INSTANCE)
        pw = pwd.getpwnam(u['User'][0])
        builders = {
            'hello': {'steps': "[steps.ShellCommand(command=['sh', '-c', 'echo hello from $0', "
                               "'cworker'])]", 'workernames': ['w1']},
            'service': {'steps': "[steps.ShellCommand(command=['sh', '-c', "
                                 "'id -un; id -gn; pwd'])]",
                        'workernames': [SERVICE_INSTANCE]},
        }
        # the master also listens for PB, the protocol the service speaks by default (a
        # configuration that names only the master, as an administrator writes it)
        pb_port = bbmaster.free_port()
        with bbmaster.Master(tmp_path / 'master', builders, pb_port=pb_port,
                             workers=(('w1', 'pass1'), (SERVICE_INSTANCE, 'pass-pkgtest'))) as m:
            w = bbmaster.CWorker(tmp_path / 'w1', m, 'w1', 'pass1', binary='/usr/bin/cworker')
            try:
                t0 = time.monotonic()
                w.start(timeout=30)
                b = m.run_build('hello')
                print(f'\nharness worker: connected and built in {time.monotonic() - t0:.1f} s')
                assert b.result == 'SUCCESS', b.describe()
                assert b.log('shell').stdout == 'hello from cworker\n'
            except Exception:
                print(w.log_text()[-3000:])
                raise
            finally:
                w.stop()

            # what systemd does for the instance: StateDirectory= (owned by User=, mode
            # StateDirectoryMode=); the administrator writes the configuration (0600, the
            # service's account: it holds the password)
            state.mkdir(mode=int(u['StateDirectoryMode'][0], 8))
            os.chown(state, pw.pw_uid, pw.pw_gid)
            conf.write_text(f'master = 127.0.0.1:{pb_port}\nname = {SERVICE_INSTANCE}\n'
                            f'basedir = {state}\npassword = pass-pkgtest\n')
            os.chown(conf, pw.pw_uid, pw.pw_gid)
            os.chmod(conf, 0o600)
            area = tmp_path / 'svc'
            area.mkdir()
            wrapper = area / 'as-the-unit'
            wrapper.write_text('#!/bin/sh\n# test only: the unit\'s ExecStart as its User=/Group= '
                               '(the harness\'s own arguments are not used)\n'
                               f'exec setpriv --reuid={pw.pw_name} --regid={u["Group"][0]} '
                               f'--init-groups {shlex.join(exec_start)}\n')
            wrapper.chmod(0o755)
            svc = bbmaster.CWorker(area, m, SERVICE_INSTANCE, 'unused', binary=str(wrapper))
            try:
                svc.start(timeout=30)
                b = m.run_build('service')
                assert b.result == 'SUCCESS', b.describe()
                assert b.log('shell').stdout == f'{ACCOUNT}\n{ACCOUNT}\n{state}/service/build\n'
                # the build's directory belongs to the service's account
                st = os.stat(state / 'service' / 'build')
                assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
            except Exception:
                print(svc.log_text()[-3000:])
                raise
            finally:
                svc.stop()
        # the administrator retires the instance: its configuration and data go
        conf.unlink()
        shutil.rmtree(state)


    # ---- purge --------------------------------------------------------------------------------

    def test_purge_leaves_nothing(self, pkg):
        """With the workers' configuration and data gone, purge leaves no trace: the same paths
        under /etc, /usr and /var/lib as before the install; the account and group are gone."""
        assert not list(CONF_DIR.iterdir()) and not list(HOME.iterdir()), \
            'a test before this one left files in /etc/cworker or /var/lib/cworker'
        pkg.purge()
        assert not on_machine(), pkg_status()
        assert not account_exists(), 'the cworker account is still there'
        assert not group_exists(), 'the cworker group is still there'
        left = pkg.leftovers()
        assert not left, 'purge left these changes behind:\n' + '\n'.join(s + x for s, x in left)


def test_purge_keeps_the_administrators_files(deb):
    """Configuration the administrator wrote in /etc/cworker and a worker's data in
    /var/lib/cworker survive remove and then purge, and so does the account that owns them (deleting it
    would hand its files to the next account given its uid); purge says what it kept.  Once
    the administrator removes them as told, nothing is left."""
    with installed(deb) as inst:
        pw = pwd.getpwnam(ACCOUNT)
        conf = CONF_DIR / 'w1.conf'
        conf.write_text('name = w1\npassword = secret\n')
        os.chown(conf, pw.pw_uid, pw.pw_gid)
        os.chmod(conf, 0o600)
        data = HOME / 'w1' / 'build' / 'output.txt'
        data.parent.mkdir(parents=True)
        data.write_text('a build product\n')
        for p in (HOME / 'w1', data.parent, data):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        # remove first: the programs go, the account and everything in the two directories stay
        run(APT + ['remove', '-y', PKG], env=APT_ENV)
        assert pkg_status() == 'deinstall ok config-files', pkg_status()
        assert not os.path.exists('/usr/bin/cworker') and not UNIT.exists()
        assert account_exists() and conf.exists() and data.exists()
        out = inst.purge()
        assert not on_machine(), pkg_status()
        assert conf.read_text() == 'name = w1\npassword = secret\n'
        assert data.read_text() == 'a build product\n'
        kept = account_exists()
        assert kept, 'purge removed the cworker account although files it owns were kept'
        assert kept.pw_uid == pw.pw_uid and os.stat(data).st_uid == pw.pw_uid
        assert 'kept /etc/cworker /var/lib/cworker' in out, out
        # what purge told the administrator to do
        m = re.search(r'cworker: when they are no longer needed: (.*)', out)
        assert m, out
        run(['sh', '-c', m.group(1)])
        assert not account_exists() and not group_exists()
        left = inst.leftovers()
        assert not left, 'left behind:\n' + '\n'.join(s + x for s, x in left)
