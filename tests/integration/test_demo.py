"""scripts/demo's script, run on the binaries under test: the embedded-default part
(cworker-master + cworker) and the stock-master build must both succeed and say so."""

import os
import subprocess

import pytest

import mastercli

pytestmark = [pytest.mark.only_protocol('msgpack')]  # scripts/demo runs the msgpack ends


def test_demo_runs_both_parts(cworker_bin, repo_root):
    r = subprocess.run(['/usr/bin/python3', os.path.join(repo_root, 'scripts', 'lib', 'demo.py'),
                        cworker_bin, mastercli.MASTER_BIN],
                       capture_output=True, text=True, timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    # part 1: the command's own output, streamed through cworker-master, and the round trip
    assert 'hello world\nrunning on Linux' in out, out
    assert '8 MiB sent to the worker and fetched back: identical' in out, out
    # part 2: the stock master stored the build and its log
    assert '==> build finished: SUCCESS' in out, out
    assert '--- hello: stdout ---\nhello world\n' in out, out
