"""cworker against a misbehaving master: cworker-master with CWORKER_MASTER_FAULTS
(see cw_master_faults_parse in src/master/master.c).

One cworker for the module, with short liveness settings
(--dead-timeout 3 --ping-interval 1 --backoff-max 1 --max-message 1 MiB). Each case runs a
faulted cworker-master, then checks that the same cworker process (same PID) logged
the problem and still works: a follow-up `run` on a fresh cworker-master without faults.
"""

import os
import re

import pytest

import bbmaster
import mastercli
from mastercli import EXIT_LINK_LOST, NIL, Endpoint, mp_int, mp_map, mp_str

pytestmark = [pytest.mark.only_protocol('msgpack')]  # the peer is cworker-master, which speaks msgpack

MAX_MESSAGE = 1 << 20
DEAD_TIMEOUT = 3
CWORKER_ARGS = ['--backoff-max', '1', '--dead-timeout', str(DEAD_TIMEOUT), '--ping-interval', '1',
                '--max-message', str(MAX_MESSAGE)]


def failed(request):
    node = request.node
    return any(getattr(node, 'rep_' + w, None) is not None and getattr(node, 'rep_' + w).failed
               for w in ('setup', 'call'))


@pytest.fixture(scope='module')
def aw(tmp_path_factory, cworker_bin):
    kinds = os.environ.get('CW_WORKER_KINDS')
    if kinds and 'cworker' not in kinds.split(','):
        pytest.skip('CW_WORKER_KINDS excludes cworker')
    base = tmp_path_factory.mktemp('mfaults')
    w = mastercli.AttachedWorker('cworker', str(base / 'worker'), Endpoint(), 'w1', 'pass1',
                                 workdir=str(base / 'masters'), cworker_bin=cworker_bin,
                                 cworker_args=CWORKER_ARGS)
    # attach once, so every test starts from an attached worker with a known PID
    r = w.run_master('run', '--', 'true', timeout=60)
    assert r.rc == 0, r
    yield w
    w.stop()


@pytest.fixture
def w(aw, request):
    off = aw.log_size()
    nm = len(aw.masters)
    pid = aw.pid
    yield aw
    if failed(request):
        print(f'\n===== cworker log (since test start) =====\n{aw.log_text()[off:][-6000:]}')
        for m in aw.masters[nm:]:
            print(f'\n===== cworker-master {m.argv[1:4]}... rc={m.returncode} '
                  f'faults={m.env.get("CWORKER_MASTER_FAULTS", "")[:80]!r} stderr =====\n'
                  f'{m.stderr_text()[-4000:]}')
    else:
        assert aw.pid == pid and aw.running(), 'cworker must survive every fault'


@pytest.fixture
def marker():
    mk = bbmaster.unique_marker('cwf')
    yield mk
    bbmaster.kill_processes(mk)


def follow_up(w, pid):
    """The same cworker process attaches to a fresh cworker-master and runs a command."""
    r = w.run_master('run', '--', 'echo', 'follow-up', timeout=60)
    assert r.rc == 0, r
    assert r.stdout == b'follow-up\n', r
    assert w.pid == pid and w.running(), 'cworker was restarted or died'


def new_log(w, off):
    return w.log_text()[off:]


# ---- 12: link dropped during a long output ----

def test_drop_after_during_output(w, marker):
    pid, off = w.pid, w.log_size()
    m = w.start_master('run', '--env', f'CW_MARKER={marker}', '--', 'sh', '-c',
                       'yes cworker-fault-test-output-line', faults='drop_after=20')
    r = m.wait(60)
    assert r.rc == EXIT_LINK_LOST, r
    assert 'fault injection: dropping the link' in r.stderr, r
    assert re.search(r"lost the link to worker 'w1'", r.stderr), r
    bbmaster.wait_for(lambda: 'connection to master lost' in new_log(w, off), 10,
                      'cworker to notice the drop')
    # the command of the lost link is killed (yes would otherwise run forever)
    bbmaster.wait_no_process(marker, timeout=10)
    assert 'interrupting (connection lost)' in new_log(w, off)
    follow_up(w, pid)


# ---- 13: master stops reading: dead-link detection ----

STALL_CASES = {
    # messages from the worker: 3 attach answers, then the start_command answer (#4)
    'ticks': ('while :; do echo tick; sleep 0.2; done', 3),
    # a flood: the worker is under output backpressure when the master stops reading
    'flood': ('yes cworker-stall-flood-line', 10),
}


@pytest.mark.parametrize('case', list(STALL_CASES))
def test_stall_dead_link_detection(w, marker, case):
    pid, off = w.pid, w.log_size()
    stall_ms = 8000
    script, after = STALL_CASES[case]
    m = w.start_master('run', '--env', f'CW_MARKER={marker}', '--', 'sh', '-c', script,
                       faults=f'stall_after={after},stall_ms={stall_ms}')
    bbmaster.wait_for(lambda: 'link dead' in new_log(w, off), 15, 'cworker to see the dead link')
    stall_line = mastercli.first_line(m.stderr_text(), 'fault injection: stalling')
    dead_line = mastercli.first_line(new_log(w, off), 'link dead')
    assert stall_line and dead_line, (m.stderr_text(), new_log(w, off))
    detect = mastercli.log_time(dead_line) - mastercli.log_time(stall_line)
    print(f'\n[cworker, {case}] dead-link detection: {detect:.2f} s after the master stalled '
          f'(--dead-timeout {DEAD_TIMEOUT} --ping-interval 1): {dead_line}')
    assert detect < stall_ms / 1000.0, 'must be noticed before the stall ends'
    assert detect >= DEAD_TIMEOUT - 0.5
    # the command's processes are killed
    bbmaster.wait_for(lambda: not mastercli.procs_except(marker, m.pid), 10,
                      'the command to be killed')
    # it reconnects at once, to this same cworker-master (still listening while stalled);
    # that one holds the new connection in duplicate-login arbitration until the stalled
    # one is gone, so the attach itself is checked by follow_up()
    bbmaster.wait_for(lambda: re.search(r'link dead.*\n(.*\n)*.*connected to master',
                                        new_log(w, off)), 15, 'cworker to reconnect')
    r = m.wait(stall_ms / 1000.0 + 20)
    assert r.rc == EXIT_LINK_LOST, r
    follow_up(w, pid)


# ---- 14: malformed messages and frames ----

def deep_array(depth):
    return b'\x91' * depth + NIL


def print_msg(message_packed, seq=900):
    return mp_map([('op', mp_str('print')), ('message', message_packed),
                   ('seq_number', mp_int(seq))])


GOOD_PRINT = print_msg(mp_str('hello'))

# id -> (fault spec, regex the cworker log must match, the link stays up)
MALFORMED = {
    # cut inside the "seq_number" key string, then right before the last value
    'truncated-str': ('send_hex=' + GOOD_PRINT[:-4].hex(),
                      r'malformed message from peer: str at offset \d+ declares \d+ bytes, '
                      r'only \d+ left', False),
    'truncated-value': ('send_hex=' + GOOD_PRINT[:-1].hex(),
                        r'malformed message from peer: truncated msgpack', False),
    'unknown-op': ('send_hex=' + mp_map([('op', mp_str('frobnicate')),
                                         ('seq_number', mp_int(901))]).hex(),
                   r"unknown op 'frobnicate'", True),
    'response-unknown-seq': ('send_hex=' + mp_map([('op', mp_str('response')),
                                                   ('seq_number', mp_int(902)),
                                                   ('result', NIL)]).hex(),
                             r'response to unknown seq_number 902 ignored', True),
    'invalid-utf8': ('send_hex=' + print_msg(mp_str(b'bad \xff\xfe utf8')).hex(),
                     r'malformed message from peer: str at offset \d+ is not valid UTF-8', False),
    'nested-10000': ('send_hex=' + print_msg(deep_array(10000)).hex(),
                     r'malformed message from peer: nesting deeper than \d+', False),
    'array32-huge': ('send_hex=' + (GOOD_PRINT[:1] + mp_str('op') + mp_str('print') +
                                    mp_str('seq_number') + mp_int(903) + mp_str('message') +
                                    b'\xdd\xff\xff\xff\xff').hex(),
                     r'malformed message from peer: array at offset \d+ declares 4294967295 '
                     r'elements', False),
    'not-a-map': ('send_hex=' + b'\x93\x01\x02\x03'.hex(),
                  r'malformed message from peer: message is not a map', False),
    'int-map-key': ('send_hex=' + b'\x82\x01\x02\xa2op\xa5print'.hex(),
                    r'malformed message from peer: map key at offset \d+ is not a str', False),
    'no-seq-number': ('send_hex=' + mp_map([('op', mp_str('print')),
                                            ('message', mp_str('x'))]).hex(),
                      r'seq_number', True),
    'ws-rsv-bits': ('raw_hex=c200', r'connection to master lost: .*protocol', False),
    'ws-masked-from-server': ('raw_hex=828001020304', r'connection to master lost: .*protocol',
                              False),
    'ws-unknown-opcode': ('raw_hex=8300', r'connection to master lost: .*protocol', False),
    'ws-text-frame': ('raw_hex=8105' + b'hello'.hex(), r'text WebSocket message ignored', True),
}


@pytest.mark.parametrize('case', list(MALFORMED))
def test_malformed(w, case):
    faults, log_re, stays = MALFORMED[case]
    pid, off = w.pid, w.log_size()
    m = w.start_master('run', '--', 'echo', 'in-faulted-master', faults=faults)
    r = m.wait(30)
    log = new_log(w, off)
    line = re.search(log_re, log)
    assert line, f'no log line matching {log_re!r}:\n{log}'
    if stays is True:
        # the worker ignored or answered it and went on: the command ran on this link
        assert r.rc == 0 and r.stdout == b'in-faulted-master\n', r
        assert 'detached: master stopping' in r.stderr, r
    elif stays is False:
        assert r.rc == EXIT_LINK_LOST, r
        assert 'connection to master lost' in log, log
    print(f'\n[{case}] faulted run rc={r.rc}; cworker: '
          f'{mastercli.first_line(log, line.group(0)) or line.group(0)}')
    follow_up(w, pid)


def test_unknown_op_answered_with_exception(w):
    """The unknown op gets an (exception) answer: cworker-master, which never sent that
    seq_number, logs the stray response."""
    pid = w.pid
    faults = MALFORMED['unknown-op'][0]
    m = w.start_master('run', '--verbose', '--', 'true', faults=faults)
    r = m.wait(30)
    assert r.rc == 0, r
    assert 'response to unknown seq_number 901 ignored' in r.stderr, r
    follow_up(w, pid)


# ---- 15: a message over --max-message ----

def test_oversize_message(w):
    pid, off = w.pid, w.log_size()
    m = w.start_master('run', '--', 'true', faults=f'oversize={2 * MAX_MESSAGE}')
    r = m.wait(30)
    log = new_log(w, off)
    assert re.search(r'connection to master lost: .*(size limit|exceeds)', log), log
    assert r.rc == EXIT_LINK_LOST, r
    follow_up(w, pid)


def test_message_at_max_size_is_accepted(w):
    """Control: a message just under the limit is accepted (bytes 0xc0... are a malformed
    message though, so the link closes for that reason, not the size)."""
    pid, off = w.pid, w.log_size()
    m = w.start_master('run', '--', 'true', faults=f'oversize={MAX_MESSAGE}')
    r = m.wait(30)
    log = new_log(w, off)
    assert 'size limit' not in log, log
    assert 'malformed message' in log, log
    assert r.rc == EXIT_LINK_LOST, r
    follow_up(w, pid)


# ---- 16: the master answers every update with an exception ----

def test_exception_on_update(w):
    pid, off = w.pid, w.log_size()
    m = w.start_master('run', '--', 'sh', '-c', 'echo one; echo two >&2',
                       faults='exception_op=update')
    r = m.wait(30)
    log = new_log(w, off)
    assert 'master refused an update: injected fault: exception' in log, log
    # the worker kept the link: the master itself closed it at exit
    assert 'detached: master stopping' in r.stderr, r
    assert r.rc != EXIT_LINK_LOST, r
    print(f'\n[exception_op=update] faulted run rc={r.rc} (the rc update was refused too)')
    follow_up(w, pid)
