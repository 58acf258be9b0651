"""Command line of the cworker binary itself (no master needed): exit status 0 for
--help/--version, 2 with a message naming the problem for every usage error."""

import os
import subprocess

import pytest

# protocol-neutral (the command line alone, no master): run once, in the msgpack pass
pytestmark = pytest.mark.only_protocol('msgpack')

TIMEOUT = 15  # a usage error must exit at once; this only bounds a hang


def run(cworker_bin, *args, env_extra=None, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if k != 'CWORKER_PASSWORD'}
    if env_extra:
        env.update(env_extra)
    return subprocess.run([cworker_bin, *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                          cwd=str(tmp_path) if tmp_path else None)


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / 'password'
    p.write_text('secret\n')
    p.chmod(0o600)
    return str(p)


def test_help(cworker_bin):
    r = run(cworker_bin, '--help')
    assert r.returncode == 0, r
    assert 'Usage' in r.stdout + r.stderr
    for opt in ('--master', '--name', '--basedir', '--password-file', 'CWORKER_PASSWORD'):
        assert opt in r.stdout + r.stderr


def test_version(cworker_bin):
    r = run(cworker_bin, '--version')
    assert r.returncode == 0, r
    assert 'cworker' in r.stdout
    assert any(ch.isdigit() for ch in r.stdout)


def test_missing_master(cworker_bin, tmp_path, pwfile):
    r = run(cworker_bin, '--name', 'w', '--basedir', str(tmp_path / 'b'), '--password-file', pwfile)
    assert r.returncode == 2, r
    assert '--master' in r.stderr


@pytest.mark.parametrize('value', ['127.0.0.1:99999', '127.0.0.1:abc', '127.0.0.1:', 'http://x:1',
                                   'ws://', ''])
def test_bad_master(cworker_bin, tmp_path, pwfile, value):
    r = run(cworker_bin, '--master', value, '--name', 'w', '--basedir', str(tmp_path / 'b'),
            '--password-file', pwfile)
    assert r.returncode == 2, r
    assert '--master' in r.stderr
    assert f"'{value}'" in r.stderr or value in r.stderr


@pytest.mark.parametrize('missing', ['--name', '--basedir'])
def test_missing_required(cworker_bin, tmp_path, pwfile, missing):
    args = {'--master': '127.0.0.1:1', '--name': 'w', '--basedir': str(tmp_path / 'b'),
            '--password-file': pwfile}
    del args[missing]
    r = run(cworker_bin, *[x for kv in args.items() for x in kv])
    assert r.returncode == 2, r
    assert missing in r.stderr


def test_unknown_option(cworker_bin, tmp_path, pwfile):
    r = run(cworker_bin, '--master', '127.0.0.1:1', '--name', 'w', '--basedir', str(tmp_path / 'b'),
            '--password-file', pwfile, '--bogus-option')
    assert r.returncode == 2, r
    assert '--bogus-option' in r.stderr


def test_bad_number(cworker_bin, tmp_path, pwfile):
    r = run(cworker_bin, '--master', '127.0.0.1:1', '--name', 'w', '--basedir', str(tmp_path / 'b'),
            '--password-file', pwfile, '--dead-timeout', 'soon')
    assert r.returncode == 2, r
    assert '--dead-timeout' in r.stderr


def test_no_password_anywhere(cworker_bin, tmp_path):
    r = run(cworker_bin, '--master', '127.0.0.1:1', '--name', 'w', '--basedir', str(tmp_path / 'b'))
    assert r.returncode == 2, r
    assert 'password' in r.stderr.lower()
    assert 'CWORKER_PASSWORD' in r.stderr or '--password-file' in r.stderr


def test_unreadable_password_file(cworker_bin, tmp_path):
    missing = str(tmp_path / 'no-such-password-file')
    r = run(cworker_bin, '--master', '127.0.0.1:1', '--name', 'w', '--basedir', str(tmp_path / 'b'),
            '--password-file', missing)
    assert r.returncode == 2, r
    assert missing in r.stderr
