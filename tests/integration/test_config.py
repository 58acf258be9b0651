"""cworker configuration, migration from buildbot-worker and service integration.

* config file / environment / flags: precedence, `--check-config` output and exit codes,
  messages naming the bad key and its source, the password rules;
* `--from-tac` on real buildbot.tac files written by Debian's `buildbot-worker create-worker`
  with various options (pb, the stock default, and msgpack; keepalive, allow_shutdown),
  `--write-config`, `cworker create-worker` next to the stock one;
* the protocol rules on the command line: pb by default, a ws:// master means msgpack, pb
  with one or with an HTTP proxy is refused, the proxy variables are not used for pb;
* end to end on the real master, over msgpack only (every run says so: the PB link is tested
  elsewhere): a worker created by the stock create-worker (msgpack) is switched to cworker
  with `--from-tac` and runs builds; JSON logs; what build steps see;
* sd_notify against a datagram socket we bind; umask at start-up;
* packaging: `meson install --destdir`, `systemd-analyze verify` of the unit, the man pages
  rendered without warnings, the example config.
"""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

import bbmaster

# protocol-neutral (configuration alone; it names both protocols itself): run once, in the msgpack pass
pytestmark = pytest.mark.only_protocol('msgpack')

TIMEOUT = 20
PROTO = '--protocol=msgpack_experimental_v7'
MSGPACK = ('--protocol', 'msgpack')   # for cworker runs against the master's msgpack port


def clean_env(extra=None):
    """Our environment without CWORKER_* settings and proxies, plus extra."""
    drop = ('http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY',
            'NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID')
    env = {k: v for k, v in bbmaster._clean_env().items()
           if not k.startswith('CWORKER_') and k not in drop}
    env.update(extra or {})
    return env


def run(cworker_bin, *args, env=None, cwd=None, stdin=subprocess.DEVNULL):
    return subprocess.run([cworker_bin, *args], capture_output=True, text=True,
                          env=clean_env(env), timeout=TIMEOUT, stdin=stdin, cwd=cwd)


def report(stdout):
    """--check-config output -> {key: (value, source)}; comment lines skipped."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r'^([a-z-]+) = (.*?)\s+# (.*)$', line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def values(stdout):
    return {k: v for k, (v, _) in report(stdout).items()}


def stock_create(basedir, master, name, password, *opts):
    r = subprocess.run([bbmaster.PYTHON, bbmaster.BUILDBOT_WORKER, 'create-worker', '-q', *opts,
                        str(basedir), master, name, password],
                       env=bbmaster._clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    tac = os.path.join(str(basedir), 'buildbot.tac')
    assert os.path.exists(tac)
    return tac


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / 'password'
    p.write_text('secret\n')
    p.chmod(0o600)
    return str(p)


def basic(tmp_path, pwfile):
    return ['--master', '127.0.0.1:9989', '--name', 'w1', '--basedir', str(tmp_path / 'b'),
            '--password-file', pwfile]


# ------------------------------------------------------------------------------------------
# configuration sources

def test_check_config_prints_effective_configuration(cworker_bin, tmp_path, pwfile):
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), '--dead-timeout', '12.5',
            '--log-format', 'json')
    assert r.returncode == 0, r
    rep = report(r.stdout)
    assert rep['master'] == ('127.0.0.1:9989', '--master')
    assert rep['protocol'] == ('pb', 'default')
    assert rep['keepalive'] == ('600', 'default')
    assert rep['allow-shutdown'] == ('none', 'default')
    assert rep['dead-timeout'] == ('12.5', '--dead-timeout')
    assert rep['ping-interval'] == ('10', 'default')
    assert rep['log-format'][0] == 'json'
    assert rep['password-file'][0] == pwfile
    assert 'secret' not in r.stdout + r.stderr
    # nothing was created, nothing connected
    assert not (tmp_path / 'b').exists()


def test_precedence_flags_env_file(cworker_bin, tmp_path, pwfile):
    conf = tmp_path / 'w.conf'
    conf.write_text('# a comment\nmaster = file-host:1\nname = file-name\nbasedir = wdir\n'
                    'password-file = password\ndead-timeout = 40\nping-interval = 7\n'
                    'kill-grace = 3\n')
    r = run(cworker_bin, '--config', str(conf), '--check-config', '--dead-timeout', '5',
            env={'CWORKER_DEAD_TIMEOUT': '20', 'CWORKER_PING_INTERVAL': '8',
                 'CWORKER_NAME': 'env-name'})
    assert r.returncode == 0, r
    rep = report(r.stdout)
    assert rep['dead-timeout'] == ('5', '--dead-timeout')
    assert rep['ping-interval'] == ('8', 'CWORKER_PING_INTERVAL')
    assert rep['name'] == ('env-name', 'CWORKER_NAME')
    assert rep['kill-grace'] == ('3', f'{conf}:8')
    assert rep['master'] == ('file-host:1', f'{conf}:2')
    # relative paths in the file are relative to the file
    assert rep['basedir'][0] == str(tmp_path / 'wdir')
    assert rep['password-file'][0] == pwfile
    # CWORKER_CONFIG names the file too
    r = run(cworker_bin, '--check-config', env={'CWORKER_CONFIG': str(conf)})
    assert r.returncode == 0, r
    assert values(r.stdout)['name'] == 'file-name'


@pytest.mark.parametrize('where', ['file', 'env', 'flag'])
@pytest.mark.parametrize('key,bad', [('dead-timeout', 'soon'), ('umask', '0999'),
                                     ('log-format', 'xml'), ('master', 'http://x:1'),
                                     ('max-retries', '-3'), ('proxy', 'socks5://p:1080'),
                                     ('keepalive', 'soon'), ('allow-shutdown', 'reboot')])
def test_bad_value_names_key_and_source(cworker_bin, tmp_path, pwfile, where, key, bad):
    args = basic(tmp_path, pwfile) if key != 'master' else basic(tmp_path, pwfile)[2:]
    env = {}
    if where == 'file':
        conf = tmp_path / 'w.conf'
        conf.write_text(f'# line 1\n{key} = {bad}\n')
        args += ['--config', str(conf)]
        want = [f'{conf}:2', key, bad]
    elif where == 'env':
        var = 'CWORKER_' + key.upper().replace('-', '_')
        env[var] = bad
        want = [var, bad]
    else:
        args += [f'--{key}', bad]
        want = [f'--{key}', bad]
    r = run(cworker_bin, '--check-config', *args, env=env)
    assert r.returncode == 2, r
    for w in want:
        assert w in r.stderr, (w, r.stderr)
    assert r.stdout == ''


def test_config_file_errors(cworker_bin, tmp_path, pwfile):
    conf = tmp_path / 'w.conf'
    for text, want in [('master = h:1\nmaster = h:2\n', ':2: \'master\' was already set'),
                       ('bogus = 1\n', ":1: unknown key 'bogus'"),
                       ('just words\n', ':1: expected'),
                       ('name = "unterminated\n', ':1: name')]:
        conf.write_text(text)
        r = run(cworker_bin, '--config', str(conf), '--check-config')
        assert r.returncode == 2, r
        assert f'{conf}{want}' in r.stderr, r.stderr
    r = run(cworker_bin, '--config', str(tmp_path / 'missing.conf'), '--check-config')
    assert r.returncode == 2 and 'missing.conf' in r.stderr, r


def test_password_rules(cworker_bin, tmp_path, pwfile):
    # never a flag
    r = run(cworker_bin, *basic(tmp_path, pwfile), '--password', 'hunter2')
    assert r.returncode == 2, r
    assert 'never taken from the command line' in r.stderr
    assert 'hunter2' not in r.stderr
    # a password key in a file others can read: refused, like ssh
    conf = tmp_path / 'w.conf'
    conf.write_text(f'master = h:1\nname = w\nbasedir = {tmp_path}/b\npassword = s3cret\n')
    conf.chmod(0o644)
    r = run(cworker_bin, '--config', str(conf), '--check-config')
    assert r.returncode == 2, r
    assert 'group or others' in r.stderr and 'chmod 600' in r.stderr and ':4' in r.stderr
    assert 's3cret' not in r.stderr
    conf.chmod(0o600)
    r = run(cworker_bin, '--config', str(conf), '--check-config')
    assert r.returncode == 0, r
    assert 's3cret' not in r.stdout
    assert '# password: set, hidden' in r.stdout
    # an empty password file; an unreadable basedir parent
    empty = tmp_path / 'empty'
    empty.write_text('\n')
    r = run(cworker_bin, '--check-config', '--master', 'h', '--name', 'w', '--basedir',
            str(tmp_path / 'b'), '--password-file', str(empty))
    assert r.returncode == 2 and 'empty' in r.stderr, r
    r = run(cworker_bin, '--check-config', '--master', 'h', '--name', 'w', '--basedir',
            '/nonexistent/dir/below', '--password-file', pwfile)
    assert r.returncode == 2 and '/nonexistent/dir/below' in r.stderr and '--basedir' in r.stderr


def test_proxy_from_environment(cworker_bin, tmp_path, pwfile):
    env = {'http_proxy': 'http://proxy.example:3128', 'https_proxy': 'http://sproxy:8443',
           'no_proxy': '.internal,10.0.0.0/8'}
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), *MSGPACK, env=env)
    assert report(r.stdout)['proxy'] == ('http://proxy.example:3128',
                                         'http_proxy (environment)'), r
    args = basic(tmp_path, pwfile) + list(MSGPACK)
    args[1] = 'bm.internal:9989'
    r = run(cworker_bin, '--check-config', *args, env=env)
    assert values(r.stdout)['proxy'] == 'none', r
    args[1] = '10.1.2.3:9989'
    r = run(cworker_bin, '--check-config', *args, env=env)
    assert values(r.stdout)['proxy'] == 'none', r
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), *MSGPACK, '--proxy', 'none',
            env=env)
    assert values(r.stdout)['proxy'] == 'none', r
    # the proxy password is not printed
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), *MSGPACK, '--proxy',
            'http://user:pa55@p:1')
    assert values(r.stdout)['proxy'] == 'http://user:***@p:1', r
    # pb (the default) ignores the variables, as the stock PB worker does ...
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), env=env)
    assert r.returncode == 0, r
    assert report(r.stdout)['proxy'] == ('none', 'default: protocol pb, proxy variables not used')
    # ... and refuses an explicit proxy, without showing its password
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), '--proxy',
            'http://user:pa55@p:1')
    assert r.returncode == 2, r
    assert '--proxy: an HTTP proxy is supported over msgpack only' in r.stderr, r
    assert 'pa55' not in r.stderr


def test_protocol_rules(cworker_bin, tmp_path, pwfile):
    rest = basic(tmp_path, pwfile)[2:]
    # a ws:// or wss:// master means msgpack
    r = run(cworker_bin, '--check-config', '--master', 'ws://bm:9990/ws', *rest)
    assert r.returncode == 0, r
    assert report(r.stdout)['protocol'] == ('msgpack_experimental_v7',
                                            'from the ws:// or wss:// master URL')
    # the aliases, and an explicit pb next to a HOST:PORT master
    for value, want in (('msgpack', 'msgpack_experimental_v7'),
                        ('msgpack_experimental_v7', 'msgpack_experimental_v7'), ('pb', 'pb')):
        r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), '--protocol', value)
        assert r.returncode == 0, r
        assert report(r.stdout)['protocol'] == (want, '--protocol')
        assert report(r.stdout)['master'][0] == ('127.0.0.1:9989' if want == 'pb'
                                                 else 'ws://127.0.0.1:9989/')
    # pb with a URL: an error naming both sources
    r = run(cworker_bin, '--check-config', *rest, '--protocol', 'pb',
            env={'CWORKER_MASTER': 'wss://bm/'})
    assert r.returncode == 2, r
    assert "--protocol 'pb'" in r.stderr and "CWORKER_MASTER='wss://bm/'" in r.stderr, r
    r = run(cworker_bin, '--check-config', *basic(tmp_path, pwfile), '--protocol', 'spdy')
    assert r.returncode == 2 and 'needs pb or msgpack_experimental_v7' in r.stderr, r
    # a protocol below the master's source is dropped; noted when that changes it
    conf = tmp_path / 'w.conf'
    conf.write_text('protocol = msgpack\nkeepalive = 45\nallow-shutdown = signal\n')
    r = run(cworker_bin, '--check-config', '--config', str(conf), *rest,
            env={'CWORKER_MASTER': 'h:1'})
    assert r.returncode == 0, r
    rep = report(r.stdout)
    assert rep['protocol'] == ('pb', 'default')
    assert rep['keepalive'] == ('45', f'{conf}:2')
    assert rep['allow-shutdown'] == ('signal', f'{conf}:3')
    assert f"# note: {conf}:1: protocol 'msgpack' ignored" in r.stdout
    # keepalive set for msgpack: a note, not an error
    r = run(cworker_bin, '--check-config', '--master', 'ws://h/', *rest,
            env={'CWORKER_KEEPALIVE': '30'})
    assert r.returncode == 0, r
    assert '# note: CWORKER_KEEPALIVE: keepalive has no effect over msgpack' in r.stdout


def test_help_and_docs_list_every_option(cworker_bin, repo_root):
    r = run(cworker_bin, '--help')
    assert r.returncode == 0
    opts = sorted(set(re.findall(r'^  --([a-z-]+)', r.stdout, re.M)))
    assert len(opts) >= 20, opts
    readme = open(os.path.join(repo_root, 'README.md')).read()
    conf_section = readme.split('## Configuration', 1)[1].split('\n## ', 1)[0]
    man = open(os.path.join(repo_root, 'man', 'cworker.1')).read().replace('\\-', '-')
    example = open(os.path.join(repo_root, 'packaging', 'cworker.conf.example')).read()
    for o in opts + ['password']:
        if o not in ('config', 'check-config', 'write-config', 'help', 'version'):
            assert f'`{o}`' in conf_section or f'--{o}' in conf_section, o
            assert re.search(rf'^#?{o} =', example, re.M), o
        assert f'--{o}' in man or o == 'password', o
        env = 'CWORKER_' + o.upper().replace('-', '_')
        if o not in ('check-config', 'write-config', 'help', 'version'):
            assert env in r.stdout or f'CWORKER_<NAME>' in r.stdout


# ------------------------------------------------------------------------------------------
# buildbot.tac

TAC_CASES = {
    'msgpack': ([PROTO], 'localhost:9989', 'w1', 'Secret-One',
                {'master': 'ws://localhost:9989/', 'name': 'w1', 'umask': 'none',
                 'max-retries': '0', 'use-tls': 'false', 'delete-leftover-dirs': 'false',
                 'proxy': 'none'}),
    'all-options': ([PROTO, '--umask=0o22', '--maxretries=5', '--delete-leftover-dirs',
                     '--keepalive=60', '--maxdelay=100', '--numcpus=4', '--allow-shutdown=signal',
                     '--proxy-connection-string', "'tcp:host=proxy.example:port=3128'", '-n'],
                    'bm.example.org:9990', 'w2', 'pa ss',
                    {'master': 'ws://bm.example.org:9990/', 'name': 'w2', 'umask': '022',
                     'max-retries': '5', 'delete-leftover-dirs': 'true',
                     'proxy': 'http://proxy.example:3128', 'keepalive': '60',
                     'allow-shutdown': 'signal', 'protocol': 'msgpack_experimental_v7'}),
    'pb': ([], 'bm.example.org:9989', 'w4', 'Secret-Pb',
           {'master': 'bm.example.org:9989', 'protocol': 'pb', 'keepalive': '600',
            'allow-shutdown': 'none', 'proxy': 'none', 'use-tls': 'false'}),
    'msgpack-k20-file': (['--protocol=msgpack_experimental_v7', '-k', '20', '-a', 'file'],
                         'localhost:9989', 'w6', 'Secret-6',
                         {'master': 'ws://localhost:9989/', 'protocol': 'msgpack_experimental_v7',
                          'keepalive': '20', 'allow-shutdown': 'file'}),
    'pb-tls': (['--use-tls', '-k', '30', '-a', 'file'], 'bm.example.org:9443', 'w5', 'Secret-5',
               {'master': 'bm.example.org:9443', 'protocol': 'pb', 'use-tls': 'true',
                'keepalive': '30', 'allow-shutdown': 'file'}),
    'relocatable-ipv6': (['-r', PROTO, '--umask=18'], '[::1]:1234', "w\u00f6'rk\"er",
                         'p"a\\ss\'', {'master': 'ws://[::1]:1234/', 'umask': '022',
                                       'name': "w\u00f6'rk\"er"}),
    'tls': ([PROTO, '--use-tls'], 'bm.example.org:9443', 'w3', 'Secret-Tls',
            {'master': 'wss://bm.example.org:9443/', 'use-tls': 'true'}),
}


@pytest.mark.parametrize('case', list(TAC_CASES))
def test_from_tac_real_files(cworker_bin, tmp_path, case):
    opts, master, name, password, want = TAC_CASES[case]
    base = tmp_path / 'worker'
    tac = stock_create(base, master, name, password, *opts)
    r = run(cworker_bin, '--from-tac', tac, '--check-config')
    if case in ('tls', 'pb-tls') and 'not supported by this build' in r.stderr:
        pytest.skip('built without TLS')
    assert r.returncode == 0, r
    got = report(r.stdout)
    for k, v in want.items():
        assert got[k][0] == v, (k, got[k], r.stdout)
    for k in ('master', 'name', 'basedir'):
        assert 'buildbot.tac:' in got[k][1], got[k]
    assert got['basedir'][0] == str(base)
    assert password not in r.stdout
    for k in ('protocol', 'keepalive', 'allow-shutdown'):
        assert f'buildbot.tac:' in got[k][1] and got[k][1].endswith(f'({k.replace("-", "_")})'), \
            (k, got[k])
    if case == 'msgpack-k20-file':
        assert '(keepalive): keepalive has no effect over msgpack' in r.stdout
    elif case in ('pb', 'pb-tls', 'msgpack'):
        assert 'keepalive has no effect' not in r.stdout   # pb uses it; 600 is the default
    if case == 'all-options':
        # keepalive does nothing over msgpack: a note; maxdelay and -n are ignored settings
        assert '(keepalive): keepalive has no effect over msgpack' in r.stdout
        assert '(maxdelay): ignored' in r.stdout
        assert got['numcpus'][0] == '4' and '(numcpus)' in got['numcpus'][1], got['numcpus']
    else:
        assert got['numcpus'] == ('auto', 'default'), got['numcpus']
    # twistd.log's rotation settings are read; the log stays on stderr (with a note)
    assert got['log-size'][0] == '10000000' and '(rotateLength)' in got['log-size'][1]
    assert got['log-count'][0] == '10' and '(maxRotatedFiles)' in got['log-count'][1]
    assert got['log-file'] == ('none', 'default')
    assert '--log-file BASEDIR/twistd.log' in r.stdout

    # --write-config gives the same configuration, mode 0600, with the password
    out = tmp_path / 'w.conf'
    w = run(cworker_bin, '--from-tac', tac, '--write-config', str(out))
    assert w.returncode == 0, w
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text()
    pw_lines = [ln for ln in text.splitlines() if ln.startswith('password = ')]
    assert len(pw_lines) == 1
    assert pw_lines[0][len('password = '):] in (password, json.dumps(password))
    again = run(cworker_bin, '--config', str(out), '--check-config')
    assert again.returncode == 0, again
    assert values(again.stdout) == values(r.stdout)
    # an existing file is only replaced with --force
    w = run(cworker_bin, '--from-tac', tac, '--write-config', str(out))
    assert w.returncode == 2 and '--force' in w.stderr, w
    w = run(cworker_bin, '--from-tac', tac, '--write-config', str(out), '--force')
    assert w.returncode == 0, w


def test_from_tac_pb_and_flags_win(cworker_bin, tmp_path):
    tac = stock_create(tmp_path / 'pbw', 'bm.example.org:9989', 'w1', 'pw')   # stock default: pb
    r = run(cworker_bin, '--from-tac', tac, '--check-config')
    assert r.returncode == 0, r
    got = report(r.stdout)
    assert got['protocol'] == ('pb', f'{tac}:40 (protocol)')
    assert got['master'] == ('bm.example.org:9989', f'{tac}:27 (buildmaster_host)')
    # the master given another way: the tac's protocol was about the tac's port and is
    # dropped (pb anyway: no note); other values still come from the tac, flags win over it
    r = run(cworker_bin, '--from-tac', tac, '--check-config', '--master', 'bm.example.org:9990',
            '--name', 'renamed')
    assert r.returncode == 0, r
    got = report(r.stdout)
    assert got['master'] == ('bm.example.org:9990', '--master')
    assert got['protocol'] == ('pb', 'default')
    assert 'protocol' not in ''.join(ln for ln in r.stdout.splitlines() if '# note:' in ln)
    assert got['name'] == ('renamed', '--name')
    assert got['basedir'][0] == str(tmp_path / 'pbw')
    # a ws:// master from a flag makes it msgpack, and the dropped pb is noted
    r = run(cworker_bin, '--from-tac', tac, '--check-config', '--master', 'ws://bm:9990/')
    assert r.returncode == 0, r
    assert report(r.stdout)['protocol'] == ('msgpack_experimental_v7',
                                            'from the ws:// or wss:// master URL')
    assert f"{tac}:40 (protocol): protocol 'pb' ignored" in r.stdout
    # a tac others can read holds a readable password: refused
    os.chmod(tac, 0o644)
    r = run(cworker_bin, '--from-tac', tac, '--check-config', '--master', 'h:1')
    assert r.returncode == 2 and 'chmod 600' in r.stderr, r


def test_from_tac_expression_needs_override(cworker_bin, tmp_path, pwfile):
    base = tmp_path / 'expr'
    tac = stock_create(base, 'localhost:9989', 'w1', 'pw', PROTO)
    text = open(tac).read().replace("workername = 'w1'", "workername = os.environ['WORKER']")
    with open(tac, 'w') as f:
        f.write(text)
    r = run(cworker_bin, '--from-tac', tac, '--check-config')
    assert r.returncode == 2, r
    assert '(workername)' in r.stderr and 'does not run Python' in r.stderr
    r = run(cworker_bin, '--from-tac', tac, '--check-config', env={'CWORKER_NAME': 'w1'})
    assert r.returncode == 0, r


def test_create_worker_like_the_stock_one(cworker_bin, tmp_path):
    stock = tmp_path / 'stock'
    stock_create(stock, 'bm.example.org:9989', 'w1', 'pw', PROTO, '--umask=0o22')
    mine = tmp_path / 'mine'
    r = run(cworker_bin, 'create-worker', '--umask=0o22', '--maxretries', '3',
            '--delete-leftover-dirs', '--keepalive', '300', '-a', 'file', '--maxdelay', '60',
            str(mine), 'bm.example.org:9989', 'w1', 'p w#d')
    assert r.returncode == 0, r
    assert 'worker configured in' in r.stdout and 'cworker --config' in r.stdout
    assert '--maxdelay: ignored' in r.stdout   # the note about an ignored option
    assert 'keepalive' not in r.stdout         # pb (the default) uses it
    for f in ('info/admin', 'info/host'):
        assert (mine / f).read_text() == (stock / f).read_text()
    conf = mine / 'cworker.conf'
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    for line in ('master = bm.example.org:9989', 'name = w1', 'password = p w#d',
                 f'basedir = {mine}', 'umask = 022', 'max-retries = 3',
                 'delete-leftover-dirs = true', 'keepalive = 300', 'allow-shutdown = file'):
        assert line + '\n' in text, (line, text)
    r = run(cworker_bin, '--config', str(conf), '--check-config')
    assert r.returncode == 0, r
    assert values(r.stdout)['protocol'] == 'pb'
    # again: refused without --force; with it, info/ files are kept
    (mine / 'info' / 'admin').write_text('Me <me@example.org>\n')
    r = run(cworker_bin, 'create-worker', str(mine), 'bm:1', 'w1', 'pw')
    assert r.returncode == 2 and '--force' in r.stderr, r
    r = run(cworker_bin, 'create-worker', '-f', str(mine), 'bm:1', 'w1', 'pw')
    assert r.returncode == 0, r
    assert (mine / 'info' / 'admin').read_text() == 'Me <me@example.org>\n'
    assert 'master = bm:1\n' in conf.read_text()
    # msgpack, as the stock script writes it; keepalive then does nothing (a note)
    r = run(cworker_bin, 'create-worker', '--protocol=msgpack_experimental_v7', '-k', '20',
            str(tmp_path / 'mp'), 'bm', 'w', 'p')
    assert r.returncode == 0, r
    assert '-k: keepalive has no effect over msgpack' in r.stdout, r
    text = (tmp_path / 'mp' / 'cworker.conf').read_text()
    assert 'master = ws://bm:9989/\n' in text and 'protocol = msgpack_experimental_v7\n' in text
    # pb with a ws:// MASTER, or a bad -a: refused before anything is created
    for args in (['--protocol', 'pb', str(tmp_path / 'bad'), 'ws://bm/', 'w', 'p'],
                 ['-a', 'reboot', str(tmp_path / 'bad'), 'bm', 'w', 'p']):
        r = run(cworker_bin, 'create-worker', *args)
        assert r.returncode == 2, r
        assert ('conflicts with the master URL' in r.stderr
                or "-a 'reboot': needs signal, file or none" in r.stderr), r
        assert not (tmp_path / 'bad').exists()


# ------------------------------------------------------------------------------------------
# the variables of the buildbot/buildbot-worker container image

IMAGE_ENV = {'BUILDMASTER': 'bm.example', 'BUILDMASTER_PORT': '9990', 'WORKERNAME': 'w7',
             'WORKERPASS': 's3cret', 'BUILDMASTER_PROTOCOL': 'msgpack_experimental_v7'}


def test_container_variables(cworker_bin, tmp_path, pwfile):
    env = dict(IMAGE_ENV, BUILDBOT_BASEDIR=str(tmp_path / 'cb'))
    r = run(cworker_bin, '--check-config', env=env)
    assert r.returncode == 0, r
    rep = report(r.stdout)
    assert rep['master'] == ('ws://bm.example:9990/', 'BUILDMASTER, BUILDMASTER_PORT')
    assert rep['name'] == ('w7', 'WORKERNAME')
    assert rep['basedir'] == (str(tmp_path / 'cb'), 'BUILDBOT_BASEDIR')
    assert rep['protocol'] == ('msgpack_experimental_v7', 'BUILDMASTER_PROTOCOL')
    assert '# password: set, hidden (WORKERPASS)' in r.stdout
    assert 's3cret' not in r.stdout + r.stderr
    # explicit settings win, each of its own
    r = run(cworker_bin, '--check-config', '--name', 'flag-name', '--password-file', pwfile,
            env=dict(env, CWORKER_BASEDIR=str(tmp_path / 'envb')))
    assert r.returncode == 0, r
    rep = report(r.stdout)
    assert rep['name'] == ('flag-name', '--name')
    assert rep['basedir'] == (str(tmp_path / 'envb'), 'CWORKER_BASEDIR')
    assert rep['password-file'][0] == pwfile
    assert rep['master'][1] == 'BUILDMASTER, BUILDMASTER_PORT'
    # the image's defaults: localhost, 9989, docker, /buildbot
    r = run(cworker_bin, '--check-config',
            env={'WORKERPASS': 'x', 'BUILDMASTER_PROTOCOL': 'msgpack'})
    assert r.returncode in (0, 2), r   # /buildbot may not be creatable here
    if r.returncode == 2:
        assert "basedir '/buildbot'" in r.stderr, r
    else:
        assert values(r.stdout)['basedir'] == '/buildbot'
    r = run(cworker_bin, '--check-config', '--basedir', str(tmp_path / 'b'),
            env={'WORKERPASS': 'x', 'BUILDMASTER_PROTOCOL': 'msgpack'})
    assert r.returncode == 0, r
    got = values(r.stdout)
    assert got['master'] == 'ws://localhost:9989/' and got['name'] == 'docker'
    # with the master configured another way, the image's defaults are off and its
    # protocol was about another port: dropped, with a note when that changes it
    r = run(cworker_bin, '--check-config', '--master', 'h:1', '--name', 'n',
            env={'WORKERPASS': 'x', 'BUILDMASTER_PROTOCOL': 'pb'})
    assert r.returncode == 2 and 'no base directory' in r.stderr, r
    r = run(cworker_bin, '--check-config', '--master', 'h:1', '--name', 'n', '--basedir',
            str(tmp_path / 'b'), env={'WORKERPASS': 'x', 'BUILDMASTER_PROTOCOL': 'msgpack'})
    assert r.returncode == 0, r
    assert report(r.stdout)['protocol'] == ('pb', 'default')
    assert "BUILDMASTER_PROTOCOL: protocol 'msgpack' ignored" in r.stdout
    # pb, the image's default protocol, is cworker's: unset or set, it simply works
    for extra, src in (({}, "the container image's default (no BUILDMASTER_PROTOCOL)"),
                       ({'BUILDMASTER_PROTOCOL': 'pb'}, 'BUILDMASTER_PROTOCOL')):
        r = run(cworker_bin, '--check-config', '--basedir', str(tmp_path / 'b'),
                env=dict({'BUILDMASTER': 'bm', 'WORKERPASS': 'x'}, **extra))
        assert r.returncode == 0, r
        rep = report(r.stdout)
        assert rep['protocol'] == ('pb', src), rep['protocol']
        assert rep['master'] == ('bm:9989', 'BUILDMASTER')


# ------------------------------------------------------------------------------------------
# start-up without a master: umask, JSON logs, sd_notify

def _start(cworker_bin, args, env=None):
    return subprocess.Popen([cworker_bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(env), stdin=subprocess.DEVNULL)


def _stop(p):
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=TIMEOUT)
    return p.returncode, out, err


def test_umask_json_logs_and_sd_notify(cworker_bin, tmp_path, pwfile):
    sock_path = str(tmp_path / 'notify')
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(5)
    base = tmp_path / 'newbase'
    port = bbmaster.free_port()   # nothing listens: the worker keeps retrying
    p = _start(cworker_bin, ['--master', f'127.0.0.1:{port}', '--name', 'w1', '--basedir',
                             str(base), '--password-file', pwfile, '--umask', '027',
                             '--log-format', 'json', '--backoff-max', '1', *MSGPACK],
               env={'NOTIFY_SOCKET': sock_path, 'WATCHDOG_USEC': '1000000'})
    try:
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ('READY=1' in got and 'WATCHDOG=1' in got):
            try:
                got.append(s.recv(4096).decode())
            except socket.timeout:
                break
        assert 'READY=1' in got, got
        assert any(m.startswith('STATUS=connecting to master 127.0.0.1:') for m in got), got
        assert 'WATCHDOG=1' in got, got
        # the umask applies before the basedir is created
        assert stat.S_IMODE(base.stat().st_mode) == 0o750
    finally:
        rc, out, err = _stop(p)
        s.close()
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) >= 2, err
    for ln in lines:
        obj = json.loads(ln)
        assert set(obj) >= {'time', 'program', 'level', 'msg'}, obj
    assert any('cannot connect' in json.loads(ln)['msg'] for ln in lines), err


# ------------------------------------------------------------------------------------------
# end to end on the real master

PROBE = ("[steps.ShellCommand(name='probe', logEnviron=False, "
         "command=['sh', '-c', 'echo umask=$(umask); echo pwd=$(pwd); env'])]")

# what a build sees of the worker info (the stock way to size `make -j`)
NCPU = ("[steps.ShellCommand(name='ncpu', logEnviron=False, "
        "command=['echo', util.Interpolate('ncpu=%(worker:numcpus)s')])]")


@pytest.fixture(scope='module')
def master(master_factory):
    return master_factory({'probe': PROBE, 'ncpu': NCPU},
                          workers=(('w1', 'pass1'), ('w2', 'pass2')))


class ArgvCWorker(bbmaster.CWorker):
    """cworker started with exactly the given arguments (no --master/--name/...)."""

    def __init__(self, basedir, master, name, password, args, **kw):
        super().__init__(basedir, master, name, password, **kw)
        self.args = list(args)

    def argv(self):
        return [self.binary] + self.args


def _probe(master):
    b = master.run_build('probe')
    assert b.result == 'SUCCESS', b.describe()
    out = b.log('probe').stdout
    env = dict(ln.split('=', 1) for ln in out.splitlines() if '=' in ln)
    return out, env


def test_switch_stock_worker_to_cworker(master, tmp_path, cworker_bin):
    base = tmp_path / 'stockw'
    tac = stock_create(base, f'127.0.0.1:{master.msgpack_port}', 'w1', 'pass1', PROTO,
                       '--umask=0o27')
    stock = bbmaster.StockWorker(str(base), master, 'w1', 'pass1')
    stock._created = True          # keep the tac written above
    stock.start(timeout=60)
    try:
        out, env = _probe(master)
        assert env['umask'] == '0027' and env['pwd'].startswith(str(base)), out
    finally:
        stock.stop()
        master.wait_worker_disconnected('w1', timeout=30)

    # the same basedir, name and password; nothing changed on the master
    w = ArgvCWorker(str(base), master, 'w1', 'pass1', ['--from-tac', tac, '--log-format', 'json'],
                    binary=cworker_bin, env={'NOTIFY_SOCKET': '@cworker-test-unused',
                                             'WATCHDOG_USEC': '60000000'})
    w.start(timeout=30)
    try:
        out, env = _probe(master)
        assert env['umask'] == '0027', out
        assert env['pwd'].startswith(str(base)), out       # same builder directories
        for var in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'CWORKER_PASSWORD'):
            assert var not in env, var
        for ln in w.log_text().splitlines():
            if ln.strip():
                json.loads(ln)
    finally:
        assert w.stop() == 0
        master.wait_worker_disconnected('w1', timeout=30)


def _ncpu(master):
    """numcpus as builds see it: the master's worker info, %(worker:numcpus)s.  (The 3.7
    master's REST `workerinfo` holds only admin, host, access_uri and version.)"""
    b = master.run_build('ncpu')
    assert b.result == 'SUCCESS', b.describe()
    out = b.log('ncpu').stdout
    m = re.search(r'^ncpu=(\S*)$', out, re.M)
    assert m, out
    return m.group(1)


def test_numcpus_reaches_the_master(master, tmp_path, cworker_bin):
    def flags(base, *extra):
        return ['--master', f'127.0.0.1:{master.msgpack_port}', *MSGPACK, '--name', 'w1',
                '--basedir', str(tmp_path / base), *extra]

    # default: the CPUs cworker may run on; then a flag
    for base, extra, want in (('auto', (), len(os.sched_getaffinity(0))),
                              ('flag', ('--numcpus', '37'), 37)):
        w = ArgvCWorker(str(tmp_path / base), master, 'w1', 'pass1', flags(base, *extra),
                        binary=cworker_bin, env={'CWORKER_PASSWORD': 'pass1'})
        w.start(timeout=30)
        try:
            assert _ncpu(master) == str(want)
        finally:
            assert w.stop() == 0
            master.wait_worker_disconnected('w1', timeout=30)
    # a tac written by the stock create-worker --numcpus
    base = tmp_path / 'tacw'
    tac = stock_create(base, f'127.0.0.1:{master.msgpack_port}', 'w1', 'pass1', PROTO,
                       '--numcpus=3')
    w = ArgvCWorker(str(base), master, 'w1', 'pass1', ['--from-tac', tac], binary=cworker_bin)
    w.start(timeout=30)
    try:
        assert _ncpu(master) == '3'
    finally:
        assert w.stop() == 0
        master.wait_worker_disconnected('w1', timeout=30)
    # cworker create-worker --numcpus writes it
    base = tmp_path / 'createw'
    r = run(cworker_bin, 'create-worker', '-q', '--numcpus', '5', *MSGPACK, str(base),
            f'127.0.0.1:{master.msgpack_port}', 'w1', 'pass1')
    assert r.returncode == 0, r
    assert 'numcpus = 5\n' in (base / 'cworker.conf').read_text()


def test_created_worker_runs_from_its_config(master, tmp_path, cworker_bin):
    base = tmp_path / 'created'
    r = run(cworker_bin, 'create-worker', '-q', *MSGPACK, str(base),
            f'127.0.0.1:{master.msgpack_port}', 'w2', 'pass2')
    assert r.returncode == 0, r
    w = ArgvCWorker(str(base), master, 'w2', 'pass2',
                    ['--config', str(base / 'cworker.conf')], binary=cworker_bin,
                    env={'CWORKER_PING_INTERVAL': '5'})
    w.start(timeout=30)
    try:
        out, env = _probe(master)
        assert env['pwd'].startswith(str(base)), out
    finally:
        assert w.stop() == 0
        master.wait_worker_disconnected('w2', timeout=30)


def test_password_from_environment_not_in_builds(master, tmp_path, cworker_bin):
    base = tmp_path / 'envpw'
    w = ArgvCWorker(str(base), master, 'w2', 'pass2',
                    ['--master', f'127.0.0.1:{master.msgpack_port}', *MSGPACK, '--name', 'w2',
                     '--basedir', str(base)], binary=cworker_bin,
                    env={'CWORKER_PASSWORD': 'pass2'})
    w.start(timeout=30)
    try:
        out, env = _probe(master)
        assert 'CWORKER_PASSWORD' not in env and 'pass2' not in out, out
    finally:
        w.stop()
        master.wait_worker_disconnected('w2', timeout=30)


def test_container_worker_hides_its_secrets_from_builds(master, tmp_path, cworker_bin):
    """Started like the image's worker, from its variables only; build steps see neither
    WORKERPASS nor what WORKER_ENVIRONMENT_BLACKLIST names (glob patterns)."""
    base = tmp_path / 'container'
    env = {'BUILDMASTER': '127.0.0.1', 'BUILDMASTER_PORT': str(master.msgpack_port),
           'WORKERNAME': 'w2', 'WORKERPASS': 'pass2', 'BUILDMASTER_PROTOCOL': 'msgpack',
           'BUILDBOT_BASEDIR': str(base),
           'WORKER_ENVIRONMENT_BLACKLIST': 'DEPLOY_* API_TOKEN',
           'DEPLOY_KEY': 'dk-secret', 'DEPLOY_USER': 'deployer', 'API_TOKEN': 'tok-secret',
           'API_TOKEN_PUBLIC': 'pub', 'KEEP_ME': 'kept'}
    w = ArgvCWorker(str(base), master, 'w2', 'pass2', [], binary=cworker_bin, env=env)
    w.start(timeout=30)
    try:
        out, benv = _probe(master)
        assert benv['pwd'].startswith(str(base)), out
        for var in ('WORKERPASS', 'DEPLOY_KEY', 'DEPLOY_USER', 'API_TOKEN', 'CWORKER_PASSWORD'):
            assert var not in benv, (var, out)
        for secret in ('pass2', 'dk-secret', 'tok-secret'):
            assert secret not in out, (secret, out)
        assert benv['KEEP_ME'] == 'kept' and benv['API_TOKEN_PUBLIC'] == 'pub', out
        assert benv['WORKERNAME'] == 'w2', out   # like the image, only the password goes
    finally:
        assert w.stop() == 0
        master.wait_worker_disconnected('w2', timeout=30)


# ------------------------------------------------------------------------------------------
# packaging

@pytest.fixture(scope='module')
def installed(cworker_bin, tmp_path_factory):
    """`meson install --destdir` of the build cworker_bin comes from -> (destdir, prefix dir)."""
    builddir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cworker_bin))))
    if not os.path.exists(os.path.join(builddir, 'build.ninja')):
        pytest.skip(f'{cworker_bin} is not in a meson build directory')
    dest = tmp_path_factory.mktemp('destdir')
    r = subprocess.run(['meson', 'install', '-C', builddir, '--destdir', str(dest),
                        '--no-rebuild'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r
    bins = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == 'cworker']
    assert len(bins) == 1, bins
    prefix = os.path.dirname(os.path.dirname(bins[0]))
    return str(dest), prefix


def test_meson_install_lists_expected_files(installed):
    dest, prefix = installed
    files = sorted(os.path.relpath(os.path.join(d, f), prefix)
                   for d, _, fs in os.walk(dest) for f in fs)
    for want in ('bin/cworker', 'bin/cworker-master', 'lib/systemd/system/cworker@.service',
                 'share/man/man1/cworker.1', 'share/man/man1/cworker-master.1',
                 'share/doc/cworker/cworker.conf.example'):
        assert want in files, (want, files)
    unit = open(os.path.join(prefix, 'lib/systemd/system/cworker@.service')).read()
    bindir = os.path.relpath(os.path.join(prefix, 'bin'), dest)
    assert f'ExecStart=/{bindir}/cworker --config /etc/cworker/%i.conf' in unit


def test_systemd_unit_verifies(installed, tmp_path):
    if shutil.which('systemd-analyze') is None:
        pytest.skip('systemd-analyze not installed (apt-get install systemd)')
    dest, prefix = installed
    text = open(os.path.join(prefix, 'lib/systemd/system/cworker@.service')).read()
    # point ExecStart at the installed copy, man pages at the installed ones
    text = re.sub(r'^ExecStart=\S+', f'ExecStart={prefix}/bin/cworker', text, flags=re.M)
    env = dict(os.environ, MANPATH=os.path.join(prefix, 'share', 'man'))
    for name in ('cworker@.service', 'cworker@w1.service'):
        (tmp_path / name).write_text(text)
        r = subprocess.run(['systemd-analyze', 'verify', str(tmp_path / name)],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and r.stderr.strip() == '', r
    for key in ('Type=notify', 'KillMode=mixed', 'TimeoutStopSec=90', 'WatchdogSec=',
                'Restart=on-failure', 'RestartPreventExitStatus=2'):
        assert re.search(rf'^{re.escape(key)}', text, re.M), key


@pytest.mark.parametrize('page', ['cworker.1', 'cworker-master.1'])
def test_man_pages_render_without_warnings(repo_root, page):
    path = os.path.join(repo_root, 'man', page)
    if shutil.which('groff') is None:
        pytest.skip('groff not installed')
    r = subprocess.run(['groff', '-ww', '-z', '-man', path], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == '', r
    if shutil.which('man'):
        r = subprocess.run(['man', '-l', path], capture_output=True, text=True,
                           env=dict(os.environ, MANWIDTH='80', LC_ALL='C.UTF-8', MANPAGER='cat',
                                    PAGER='cat'))
        assert r.returncode == 0 and r.stderr == '', r
        assert 'SYNOPSIS' in r.stdout


def test_master_man_page_covers_its_options(repo_root):
    master_bin = os.environ.get('CWORKER_MASTER_BIN') or os.path.join(
        os.path.dirname(os.path.dirname(bbmaster.default_cworker_bin())), 'master',
        'cworker-master')
    if not os.access(master_bin, os.X_OK):
        pytest.skip(f'{master_bin} not built')
    r = subprocess.run([master_bin, '--help'], capture_output=True, text=True)
    opts = set(re.findall(r'--([a-z][a-z-]+)', r.stdout + r.stderr))
    man = open(os.path.join(repo_root, 'man', 'cworker-master.1')).read().replace('\\-', '-')
    for o in opts:
        assert f'--{o}' in man, o


def test_example_config(cworker_bin, repo_root, tmp_path):
    text = open(os.path.join(repo_root, 'packaging', 'cworker.conf.example')).read()
    text = text.replace('/var/lib/cworker/NAME', str(tmp_path / 'w')).replace('= NAME', '= w1')
    conf = tmp_path / 'w1.conf'
    conf.write_text(text)
    conf.chmod(0o600)
    r = run(cworker_bin, '--config', str(conf), '--check-config')
    assert r.returncode == 0, r
    assert values(r.stdout)['master'] == 'buildmaster.example.org:9989'
    assert values(r.stdout)['protocol'] == 'pb'
    conf.chmod(0o644)   # as installed: the password line makes it refuse
    r = run(cworker_bin, '--config', str(conf), '--check-config')
    assert r.returncode == 2 and 'chmod 600' in r.stderr, r


def test_relay_options(cworker_bin, tmp_path):
    """relay and relay-tls: flag, environment and file, shown by --check-config; a relay needs
    a port; relay excludes proxy (and the proxy variables are not used with it); relay-tls
    alone is noted; the TLS files count as used with relay-tls."""
    pwfile = tmp_path / 'pw'
    pwfile.write_text('pw\n')
    pwfile.chmod(0o600)
    rest = basic(tmp_path, pwfile)
    r = run(cworker_bin, '--check-config', *rest, '--relay', 'relay.example.org:9991',
            '--relay-tls')
    assert r.returncode == 0, r
    rep = report(r.stdout)
    assert rep['relay'] == ('relay.example.org:9991', '--relay')
    assert rep['relay-tls'] == ('true', '--relay-tls')
    r = run(cworker_bin, '--check-config', *rest, env={'CWORKER_RELAY': '[::1]:7'})
    assert r.returncode == 0 and report(r.stdout)['relay'] == ('[::1]:7', 'CWORKER_RELAY'), r
    conf = tmp_path / 'r.conf'
    conf.write_text('relay = 127.0.0.1:9991\nrelay_tls = yes\n')
    r = run(cworker_bin, '--check-config', *rest, '--config', str(conf))
    assert r.returncode == 0, r
    assert report(r.stdout)['relay'] == ('127.0.0.1:9991', f'{conf}:1')
    assert report(r.stdout)['relay-tls'] == ('true', f'{conf}:2')
    for bad in ('relay.example.org', 'ws://r:1/', 'r:0', 'r:99999', '::1:5', 'a b:1'):
        r = run(cworker_bin, '--check-config', *rest, '--relay', bad)
        assert r.returncode == 2 and 'needs HOST:PORT or [IPv6]:PORT of a cworker-relay' in \
            r.stderr, (bad, r)
    r = run(cworker_bin, '--check-config', *rest, '--master', 'ws://h/', '--relay', 'r:1',
            '--proxy', 'http://p:3128')
    assert r.returncode == 2 and 'cannot be used with a relay' in r.stderr, r
    r = run(cworker_bin, '--check-config', *rest, '--master', 'ws://h/', '--relay', 'r:1',
            env={'http_proxy': 'http://p:3128'})
    assert r.returncode == 0, r
    assert report(r.stdout)['proxy'] == ('none', 'default: through the relay, proxy variables '
                                                 'not used')
    r = run(cworker_bin, '--check-config', *rest, '--relay-tls')
    assert r.returncode == 0 and '# note: --relay-tls: relay-tls is only used with relay' in \
        r.stdout, r
    ca = tmp_path / 'ca.pem'
    ca.write_text('x')
    r = run(cworker_bin, '--check-config', *rest, '--ca-file', str(ca))
    assert r.returncode == 0 and 'ca-file is only used with' in r.stdout, r
    r = run(cworker_bin, '--check-config', *rest, '--ca-file', str(ca), '--relay', 'r:1',
            '--relay-tls')
    assert r.returncode == 0 and 'ca-file is only used with' not in r.stdout, r
