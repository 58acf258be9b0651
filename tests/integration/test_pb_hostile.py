"""cworker's Perspective Broker link against a hostile master (reference PB §11.3, issue 13
item 5): declared lengths past the limits, deep nesting, unknown types, answers to unknown
requests, floods of references, refused jelly, bad command arguments, bad transfer answers,
a master that stops reading or never answers.

The master is pbfake.FakeMaster (test-only, standard library): it logs the worker in like a
3.7 master (dialect offer, version 6, login challenge, respond checked, attach calls) and
then scripts what it sends.  Every case asserts what a user would notice:

* fatal input: the worker closes the connection, logs the reason, and is back (new TCP
  connection, new login) within a few seconds;
* anything else: the expected answer (an error with the Python-style type, or None), the
  link stays up and the next command works;
* always: the worker is alive (or exited 0 where it should), no sanitizer report in its log,
  it never sends what a 3.7 master would drop the link for (reference §11.4, checked by the
  fake for every byte), every reference it received is given back exactly once, and no
  process of its commands survives.

One worker serves the whole module (fatal cases end in a reconnect anyway); the shutdown
case has its own.  Run with Debian's interpreter:

    /usr/bin/python3 -m pytest tests/integration/test_pb_hostile.py -q -p no:cacheprovider

CWORKER_BIN picks the binary (e.g. an ASan+UBSan build); memory bounds are only asserted
for a build without sanitizers.
"""

import math
import os
import re
import time

import pytest

import bbmaster
import pbfake
from hardening_util import SANITIZED, proc_status
from pbfake import (BOT, FileReader, FileWriter, Remote, RemoteCommand, RemoteObject, Tree, b128,
                    enc)

pytestmark = pytest.mark.only_protocol('pb')

RECONNECT_S = 5          # a fatal case: the worker is logged in again within this
RSS_LIMIT_KIB = 64 << 10
SH = {'workdir': 'build', 'command': 'echo ok', 'logEnviron': False}


@pytest.fixture(autouse=True)
def _cworker_selected():
    kinds = os.environ.get('CW_WORKER_KINDS')
    if kinds and 'cworker' not in kinds.split(','):
        pytest.skip('CW_WORKER_KINDS excludes cworker')


def _sanitized_binary(path):
    if SANITIZED:
        return True
    with open(path, 'rb') as f:
        return b'__asan_init' in f.read()


class Session:
    """The fake master, the shared worker and the current connection."""

    def __init__(self, fake, worker):
        self.fake = fake
        self.worker = worker
        self.conn = None
        self.sanitized = _sanitized_binary(worker.binary)

    def next_conn(self, timeout=10):
        """The worker's next connection; fails at once when the worker has exited."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_healthy()
            try:
                return self.fake.wait_conn(min(0.2, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise

    def link(self):
        """A logged-in connection: the current one, or the worker's next one."""
        c = self.conn
        if c is None or c.closed:
            c = self.next_conn()
            c.login()
            self.conn = c
        c.reading.set()
        return c

    def fresh(self):
        """The worker's next connection, before any byte from us: the current one is closed
        from our side first."""
        if self.conn is not None:
            self.conn.close()
            self.conn.wait_closed(5)
        self.conn = None
        return self.next_conn()

    def reconnected(self, since):
        """After a fatal case: the next connection logs in within RECONNECT_S of `since`."""
        c = self.next_conn(max(0.1, since + RECONNECT_S - time.monotonic()))
        c.login()
        self.conn = c
        return time.monotonic() - since

    def log_since(self, off):
        return self.worker.log_since(off)

    def wait_log(self, off, pattern, timeout=5):
        """The worker's log since `off` matches `pattern` (waits a little: lines come late)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(off)
            if rx.search(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f'worker log has no /{pattern}/ since the case began:\n'
                                     f'{text[-3000:]}')
            time.sleep(0.05)

    def assert_healthy(self):
        assert self.worker.running(), (f'worker exited with {self.worker.returncode}:\n'
                                       f'{self.worker.log_text()[-3000:]}')
        rep = pbfake.sanitizer_report(self.worker.log_text())
        assert rep is None, f'sanitizer report in the worker log: {rep}'

    def rss_kib(self):
        return proc_status(self.worker.pid)['VmRSS']


@pytest.fixture(scope='module')
def session(cworker_bin, tmp_path_factory):
    fake = pbfake.FakeMaster()
    basedir = tmp_path_factory.mktemp('pbhostile') / 'worker'
    w = pbfake.PBWorker(str(basedir), fake, binary=cworker_bin)
    w.start()
    s = Session(fake, w)
    yield s
    w.stop()
    fake.stop()


@pytest.fixture
def link(session, request):
    """The logged-in connection of the shared worker; the worker's log and health are
    checked after the test, and its log tail printed when the test failed."""
    c = session.link()
    yield c
    if not session.worker.running():
        return  # stopped by the test, or its exit already failed it
    failed = any(getattr(request.node, 'rep_' + w, None) is not None and
                 getattr(request.node, 'rep_' + w).failed for w in ('setup', 'call'))
    if failed:
        print(f'\n===== worker log =====\n{session.worker.log_text()[-6000:]}')
        # the next test starts on a new connection (the worker ends this one's commands)
        if session.conn is not None:
            session.conn.close()
    session.assert_healthy()


def _up(s, conn):
    """The link is still up and clean: ping answered, nothing a master would drop the link
    for, every reference given back."""
    assert not conn.closed, 'the worker closed the connection'
    assert conn.ping(), 'print("ping") not answered'
    assert conn.violations == []
    conn.wait(lambda: not conn.held_refs(), 5, 'every reference given back')
    s.assert_healthy()


def _echo(conn, builder='b1', text='next command works'):
    """A command after a hostile case runs normally."""
    cmd = conn.run_command(builder, 'shell', dict(SH, command=f'echo {text}'))
    assert cmd.completed == ('ok', None) and cmd.rc == 0 and cmd.text() == f'{text}\n'
    conn.wait_refs_released([cmd.luid])


# ---------------------------------------------------------------------------------------------
# The normal path: what the hostile cases start from


def test_normal_path(session, link, proc_marker):
    """Login (MD5 challenge), attach (print, getWorkerInfo, setBuilderList), a shell command
    with stdout/stderr/rc, an upload and a download: all answered as a 3.7 master expects,
    and every RemoteCommand/FileWriter/FileReader reference decref'd exactly once."""
    c = link
    assert c.username == b'w1'
    assert {'version', 'worker_commands', 'basedir', 'system', 'numcpus'} <= set(c.info)
    assert {'shell', 'uploadFile', 'downloadFile'} <= set(c.info['worker_commands'])
    assert set(c.builders) == {'b1', 'b2'}
    cmd = c.run_command('b1', 'shell', dict(SH, command='echo out; echo err >&2; exit 3',
                                             env={'CW_MARKER': proc_marker}))
    assert (cmd.text(), cmd.text('stderr'), cmd.rc) == ('out\n', 'err\n', 3)
    assert cmd.completed == ('ok', None)
    bdir = os.path.join(session.worker.basedir, 'b1')
    data = os.urandom(100_000)
    with open(os.path.join(bdir, 'up.bin'), 'wb') as f:
        f.write(data)
    wr = FileWriter()
    up = c.run_command('b1', 'uploadFile', {'workdir': '.', 'workersrc': 'up.bin',
                                            'writer': c.export(wr), 'maxsize': None,
                                            'blocksize': 16384, 'keepstamp': False})
    assert up.rc == 0 and wr.data == data and wr.calls[-1] == 'close'
    rd = FileReader(data=data[::-1])
    down = c.run_command('b1', 'downloadFile', {'workdir': '.', 'workerdest': 'down.bin',
                                                'reader': c.export(rd), 'maxsize': None,
                                                'blocksize': 32768, 'mode': None})
    assert down.rc == 0
    with open(os.path.join(bdir, 'down.bin'), 'rb') as f:
        assert f.read() == data[::-1]
    c.wait_refs_released([cmd.luid, up.luid, wr.luid, down.luid, rd.luid])
    for luid in (cmd.luid, up.luid, wr.luid, down.luid, rd.luid):
        assert c.decrefs.count(luid) == 1
    _up(session, c)
    bbmaster.wait_no_process(proc_marker, 5)


# ---------------------------------------------------------------------------------------------
# Fatal input after login: an orderly close, the reason in the log, a reconnect


def _call_bytes(reqid=50, target=BOT, method=b'print', nfields=7):
    fields = [b'message', reqid, target, method, 1, [b'tuple'], [b'dictionary']]
    return enc((fields + [5] * 7)[:nfields])


BAD_REQID = r'call with a request id that is not a 64-bit integer'
FATAL = {
    'string_over_limit': (b128(pbfake.SIZE_LIMIT + 1) + b'\x82', r'STRING longer than 655,360'),
    'list_over_limit': (b128(pbfake.SIZE_LIMIT + 1) + b'\x80', r'LIST longer than 655,360'),
    'prefix_65_digits': (b'\x01' * 65 + b'\x81', r'prefix longer than 64 digits'),
    'prefix_65_no_type_byte': (b'\x01' * 65, r'prefix longer than 64 digits'),
    'type_byte_88': (b'\x02\x80\x00\x88', r'unknown banana type byte'),
    'type_byte_ff': (b'\x01\x80\x05\xff', r'unknown banana type byte'),
    'vocab_0': (b'\x01\x80\x00\x87', r'VOCAB index outside 1\.\.31'),
    'vocab_32': (b'\x01\x80\x20\x87', r'VOCAB index outside 1\.\.31'),
    'deep_nesting': (b'\x01\x80' * 100_000, r'lists nested deeper than allowed'),
    'messages_over_16MiB': (lambda: enc([b'x' * pbfake.SIZE_LIMIT] * 30),
                            r'message longer than allowed'),
    'non_list_int': (b'\x05\x81', r'non-list expression received'),
    'non_list_string': (enc(b'message'), r'non-list expression received'),
    'empty_list': (b'\x00\x80', r'non-list expression received'),
    'word_not_a_string': (enc([1, 2]), r'message word is not a string'),
    'message_6_fields': (_call_bytes(nfields=6), r'call without exactly 7 fields'),
    'message_8_fields': (_call_bytes(nfields=8), r'call without exactly 7 fields'),
    'reqid_longint_2_70': (_call_bytes(reqid=2 ** 70), BAD_REQID),
    'reqid_bytes': (_call_bytes(reqid=b'x'), BAD_REQID),
    'reqid_float': (_call_bytes(reqid=1.5), BAD_REQID),
    'method_not_string': (_call_bytes(method=7), r'call with a method name that is not a string'),
    'version_again_5': (enc([b'version', 5]), r'version incompatibility'),
    'answer_2_fields': (enc([b'answer', 5]), r'answer without exactly 3 fields'),
    'decref_3_fields': (enc([b'decref', 5, 6]), r'decref without exactly 2 fields'),
}


@pytest.mark.parametrize('case', list(FATAL))
def test_fatal_after_login(session, link, case):
    data, reason = FATAL[case]
    c = link
    off = session.worker.log_size()
    t0 = time.monotonic()
    c.send_raw(data() if callable(data) else data)
    assert c.wait_closed(RECONNECT_S), 'the worker kept the connection open'
    session.wait_log(off, r'connection to master lost: protocol error from the master: ' + reason)
    assert c.violations == [], 'the worker answered the bad input with something a master drops'
    session.reconnected(t0)
    _up(session, session.conn)


def test_eof_inside_a_message(session, link):
    """Half a call, then EOF: the worker notices the close and reconnects."""
    c = link
    off = session.worker.log_size()
    t0 = time.monotonic()
    c.send_raw(_call_bytes()[:9])
    time.sleep(0.1)
    c.close()
    session.wait_log(off, r'connection to master lost: the master closed the connection')
    session.reconnected(t0)
    _up(session, session.conn)


def test_eof_inside_a_message_is_named(session, link):
    c = link
    off = session.worker.log_size()
    t0 = time.monotonic()
    c.send_raw(_call_bytes()[:9])
    time.sleep(0.1)
    c.close()
    try:
        session.wait_log(off, r'connection to master lost: .*inside a message', timeout=2)
    finally:
        session.reconnected(t0)


def test_fatal_while_commands_run(session, link, proc_marker):
    """Fatal input while a shell command runs on b1 and an upload on b2 waits for the answer
    to its write: the link closes, both commands end (no process survives), the worker is
    back and its builders run commands."""
    c = link
    r1, sleeper = c.start_command('b1', 'shell', dict(
        SH, command=f'sleep 60 & sleep 60; wait # {proc_marker}', env={'CW_MARKER': proc_marker}))
    assert c.wait_answer(r1) == ('answer', None)
    bbmaster.wait_for(lambda: len(bbmaster.find_processes(proc_marker)) >= 3, 5, 'the command')
    with open(os.path.join(session.worker.basedir, 'b2', 'src.bin'), 'wb') as f:
        f.write(os.urandom(200_000))

    class Stuck(FileWriter):
        def handle(self, reqid, method, args, kwargs):
            self.calls.append(method)
            return None if method == 'write' else ('answer', None)

    wr = Stuck()
    r2, up = c.start_command('b2', 'uploadFile', _upload(c, writer=c.export(wr)))
    assert c.wait_answer(r2) == ('answer', None)
    c.wait(lambda: 'write' in wr.calls, 5, 'the first write')
    off = session.worker.log_size()
    t0 = time.monotonic()
    c.send_raw(b'\x00\x88')
    assert c.wait_closed(RECONNECT_S)
    session.wait_log(off, r'protocol error from the master: unknown banana type byte')
    session.wait_log(off, r'interrupting \(connection lost\)')
    bbmaster.wait_no_process(proc_marker, 5)
    session.reconnected(t0)
    _echo(session.conn, 'b1')
    _echo(session.conn, 'b2')
    _up(session, session.conn)


def test_reference_flood_over_the_limit(session, link):
    """One call handing out 20,000 distinct references (more than the session holds):
    orderly close, reconnect."""
    c = link
    off = session.worker.log_size()
    refs = [c.export(RemoteObject()) for _ in range(20_000)]
    t0 = time.monotonic()
    c.call(BOT, 'print', message='flood', junk=refs)
    assert c.wait_closed(RECONNECT_S)
    session.wait_log(off, r'protocol error from the master: the peer handed out more references')
    assert c.violations == []
    session.reconnected(t0)
    _up(session, session.conn)


# ---------------------------------------------------------------------------------------------
# Fatal input during the negotiation


def _eof_in_offer(c):
    c.send_raw(b'\x02\x80\x02\x82pb\x04\x82no')
    time.sleep(0.1)
    c.close()


def _eof_after_offer(c):
    c.send([b'pb', b'none'], vocab=False)
    c.wait(lambda: c.version is not None, 5, "the worker's version")
    c.close()


def _eof_in_login_answer(c):
    c.handshake()
    c.wait_inbox(5, 'login')
    c.send_raw(b'\x03\x80\x1b\x87\x01\x81\x03\x80')  # ("answer" 1 ("tuple" ... cut
    time.sleep(0.1)
    c.close()


NEGOTIATION = {
    'offer_without_pb': (lambda c: c.send([b'none', b'xyz'], vocab=False),
                         r'the master does not offer the pb dialect'),
    'empty_offer': (lambda c: c.send([], vocab=False), r'the master does not offer the pb dialect'),
    'offer_not_a_list': (lambda c: c.send(b'pb', vocab=False), r'the dialect offer is not a list'),
    'vocab_in_offer': (lambda c: c.send_raw(b'\x02\x80\x02\x82pb\x01\x87'),
                       r'VOCAB before the pb dialect was chosen'),
    'vocab_before_offer': (lambda c: c.send_raw(b'\x01\x87'),
                           r'VOCAB before the pb dialect was chosen'),
    'version_5': (lambda c: c.handshake(version=5), r'version incompatibility'),
    'version_longint': (lambda c: c.handshake(version=2 ** 70), r'version incompatibility'),
    'version_bytes': (lambda c: c.handshake(version=b'6'), r'version incompatibility'),
    'eof_in_offer': (_eof_in_offer, r'the master closed the connection'),
    'eof_after_offer': (_eof_after_offer, r'the master closed the connection'),
    'eof_in_login_answer': (_eof_in_login_answer, r'the master closed the connection'),
}


@pytest.mark.parametrize('case', list(NEGOTIATION))
def test_fatal_negotiation(session, link, case):
    script, reason = NEGOTIATION[case]
    c = session.fresh()
    off = session.worker.log_size()
    t0 = time.monotonic()
    script(c)
    assert c.wait_closed(RECONNECT_S), 'the worker kept the connection open'
    session.wait_log(off, r'cannot connect to master [^:]+:\d+: ' + reason)
    assert c.violations == []
    session.reconnected(t0)
    _up(session, session.conn)


# ---------------------------------------------------------------------------------------------
# Input that is ignored: logged, the link stays up


IGNORED = {
    'unknown_word': (enc([b'frobnicate', 1]), r"message 'frobnicate' ignored"),
    'didNotUnderstand': (enc([b'didNotUnderstand', b'x']), r"message 'didNotUnderstand' ignored"),
    'decache': (enc([b'decache', 1]), r"message 'decache' ignored"),
    'answer_not_outstanding': (enc([b'answer', 999, [b'None']]),
                               r'answer for request 999, which is not waiting: ignored'),
    'error_not_outstanding': (enc([b'error', 999, pbfake.failure_tree('builtins.X', 'y')]),
                              r'error for request 999, which is not waiting: ignored'),
    'answer_reqid_longint': (enc([b'answer', 2 ** 70, [b'None']]), r'which is not waiting'),
    'decref_unknown': (enc([b'decref', 999]), r'decref of an object we do not export'),
    'decref_negative': (enc([b'decref', -1]), r'decref of an object we do not export'),
    'decref_root': (enc([b'decref', b'root']), r'decref of an object we do not export'),
    'decref_longint': (enc([b'decref', 2 ** 80]), r'decref of an object we do not export'),
}


@pytest.mark.parametrize('case', list(IGNORED))
def test_ignored_input(session, link, case):
    data, note = IGNORED[case]
    c = link
    off = session.worker.log_size()
    c.send_raw(data)
    session.wait_log(off, note)
    _up(session, c)


def test_decrefs_of_builders_and_bot(session, link):
    """The master decrefs the Bot and a builder more often than it got them (as after a
    reconfig): the exports are pinned, commands on the builder still work."""
    c = link
    for _ in range(5):
        c.send([b'decref', c.builders['b1']])
        c.send([b'decref', BOT])
    _up(session, c)
    _echo(c)


def test_call_without_answer_wanted(session, link):
    """answerRequired 0, also on an unknown object and with an unknown method: nothing is
    answered (an answer would be for an id the master is not waiting for)."""
    c = link
    base = 10 ** 9  # ids our calls never use
    c.send([b'message', base, 99, b'print', 0, [b'tuple'], [b'dictionary']])
    c.send([b'message', base + 1, BOT, b'nosuch', 0, [b'tuple'], [b'dictionary']])
    c.send([b'message', base + 2, BOT, b'print', 0, [b'tuple', [b'unicode', b'x']],
            [b'dictionary']])
    c.send([b'message', base + 3, BOT, b'print', 0, [b'tuple', [b'class', b'x']],
            [b'dictionary']])
    _up(session, c)
    assert c.violations == []


# ---------------------------------------------------------------------------------------------
# Calls answered with an error; the link stays up


CALL_ERRORS = {
    'unknown_luid': (99, b'print', 'twisted.spread.pb.Error', r'Invalid Object ID'),
    'luid_longint': (2 ** 70, b'print', 'twisted.spread.pb.Error', r'Invalid Object ID'),
    'luid_bytes': (b'foo', b'print', 'twisted.spread.pb.Error', r'Invalid Object ID'),
    'luid_negative': (-3, b'print', 'twisted.spread.pb.Error', r'Invalid Object ID'),
    'luid_float': (1.0, b'print', 'twisted.spread.pb.Error', r'Invalid Object ID'),
    'bot_unknown_method': (BOT, b'nosuch', 'twisted.spread.flavors.NoSuchMethod',
                           r'No such method: remote_nosuch'),
    'builder_unknown_method': ('b1', b'getWorkerInfo', 'twisted.spread.flavors.NoSuchMethod',
                               r'No such method: remote_getWorkerInfo'),
}


@pytest.mark.parametrize('case', list(CALL_ERRORS))
def test_call_error(session, link, case):
    target, method, ftype, fvalue = CALL_ERRORS[case]
    c = link
    target = c.builders[target] if isinstance(target, str) else target
    off = session.worker.log_size()
    reqid = c.new_reqid()
    c.send([b'message', reqid, target, method, 1, [b'tuple'],
            [b'dictionary', [[b'unicode', b'message'], [b'unicode', b'x']]]])
    kind, f = c.wait_answer(reqid)
    assert kind == 'error' and f.type == ftype and re.search(fvalue, f.value), (kind, f)
    if ftype == 'twisted.spread.pb.Error':
        session.wait_log(off, r'call \d+ of \S+ on an unknown object: Invalid Object ID')
    _up(session, c)


def _doubling_bomb(levels=25):
    """Each level is a list of the previous level twice (the second as a dereference):
    2**levels values once expanded, 2 banana levels per level."""
    t = [b'reference', 1, [b'list', 1, 2]]
    for i in range(2, levels + 1):
        t = [b'reference', i, [b'list', t, [b'dereference', i - 1]]]
    return t


JELLY = {
    'class': ([b'class', b'os.system'], 'twisted.spread.jelly.InsecureJelly', 'class'),
    'instance': ([b'instance', b'os.X', [b'dictionary']], 'twisted.spread.jelly.InsecureJelly',
                 'instance'),
    'module': ([b'module', b'os'], 'twisted.spread.jelly.InsecureJelly', 'module'),
    'function': ([b'function', b'os.system'], 'twisted.spread.jelly.InsecureJelly', 'function'),
    'persistent': ([b'persistent', b'x'], 'twisted.spread.jelly.InsecureJelly', 'persistent'),
    'set': ([b'set', [b'list', 1, 2]], 'twisted.spread.jelly.InsecureJelly', 'set'),
    'frozenset': ([b'frozenset', [b'list', 1]], 'twisted.spread.jelly.InsecureJelly',
                  'frozenset'),
    'dotted_class': ([b'os.system', b'rm -rf /'], 'twisted.spread.jelly.InsecureJelly',
                     'os.system'),
    'local': ([b'local', 1], 'twisted.spread.jelly.InsecureJelly', 'local'),
    'cached': ([b'cached', 1], 'twisted.spread.jelly.InsecureJelly', 'cached'),
    'invalid_utf8': ([b'unicode', b'ok\xff\xfe'], 'builtins.UnicodeDecodeError', 'utf-8'),
    'dict_pair_of_3': ([b'dictionary', [[b'unicode', b'k'], 1, 2]], 'builtins.ValueError',
                       'not a pair'),
    'dict_pair_of_1': ([b'dictionary', [1]], 'builtins.ValueError', 'not a pair'),
    'boolean_yes': ([b'boolean', b'yes'], 'builtins.AssertionError', 'boolean'),
    'dereference_unknown': ([b'dereference', 7], 'builtins.ValueError', 'unknown reference 7'),
    'reference_cycle': ([b'reference', 1, [b'list', [b'dereference', 1]]], 'builtins.ValueError',
                        'circular reference'),
    'reference_twice': ([b'list', [b'reference', 1, [b'list']], [b'reference', 1, [b'list']]],
                        'builtins.AssertionError', 'Multiple references with same ID'),
    'reference_bomb': (_doubling_bomb(), 'builtins.ValueError', 'references expanded'),
    'remote_not_int': ([b'remote', b'x'], 'builtins.ValueError', 'remote'),
    'empty_form': ([], 'builtins.IndexError', 'empty list'),
}


@pytest.mark.parametrize('case', list(JELLY))
def test_refused_jelly(session, link, case):
    """Bot.print(message=<form>), with a reference of ours before the bad form: an error
    answer of the stock type, the reference given back once, the link up."""
    form, ftype, fvalue = JELLY[case]
    c = link
    off = session.worker.log_size()
    ref = c.export(RemoteObject())
    reqid = c.call_tree(BOT, 'print', [b'tuple', ref],
                        [b'dictionary', [[b'unicode', b'message'], form]])
    kind, f = c.wait_answer(reqid)
    assert kind == 'error' and f.type == ftype and fvalue in f.value, (kind, f)
    c.wait_refs_released([ref])
    assert c.decrefs.count(ref.luid) == 1
    session.wait_log(off, rf'call {reqid} refused: {re.escape(ftype)}')
    _up(session, c)


def test_hostile_answers_to_our_calls(session, link):
    """The master answers the worker's update with a refused jelly form and its complete with
    an error: the command still ends, its reference is given back once, the link stays up."""
    c = link

    class Odd(RemoteCommand):
        def handle(self, reqid, method, args, kwargs):
            res = super().handle(reqid, method, args, kwargs)
            if method == 'update':
                return ('answer', Tree([b'class', b'os.system']))
            if method == 'complete':
                return ('error', ('builtins.RuntimeError', 'no thanks'))
            return res

    off = session.worker.log_size()
    cmd = c.run_command('b1', 'shell', dict(SH, command='echo odd'), cmd=Odd())
    assert cmd.text() == 'odd\n' and cmd.rc == 0
    c.wait_refs_released([cmd.luid])
    assert c.decrefs.count(cmd.luid) == 1
    session.wait_log(off, r'error answer to our complete: builtins.RuntimeError: no thanks')
    _up(session, c)
    _echo(c)


# ---------------------------------------------------------------------------------------------
# startCommand with bad arguments: an error answer, references back, next command works


def _upload(c, **kw):
    args = {'workdir': '.', 'workersrc': 'src.bin', 'writer': c.export(FileWriter()),
            'maxsize': None, 'blocksize': 16384}
    args.update(kw)
    return args


START_ERRORS = {
    'args_a_list': (lambda c: ['workdir', 'build'], 'builtins.ValueError',
                    'command arguments must be a dictionary'),
    'args_none': (lambda c: None, 'builtins.ValueError', 'must be a dictionary'),
    'args_int': (lambda c: 5, 'builtins.ValueError', 'must be a dictionary'),
    'command_int': (lambda c: dict(SH, command=5), 'builtins.ValueError',
                    "argument 'command' must be a string or a list of strings"),
    'command_dict': (lambda c: dict(SH, command={'a': 'b'}), 'builtins.ValueError',
                     "argument 'command'"),
    'command_missing': (lambda c: {'workdir': 'build'}, 'builtins.ValueError',
                        'missing args: command'),
    'workdir_int': (lambda c: dict(SH, workdir=3), 'builtins.ValueError', "'workdir'"),
    'env_a_list': (lambda c: dict(SH, env=['A=1']), 'builtins.ValueError', "'env'"),
    'timeout_nan': (lambda c: dict(SH, timeout=math.nan), 'builtins.ValueError',
                    "argument 'timeout' must be a non-negative number"),
    'timeout_inf': (lambda c: dict(SH, timeout=math.inf), 'builtins.ValueError',
                    "argument 'timeout' must be a non-negative number"),
    'maxTime_minus_inf': (lambda c: dict(SH, maxTime=-math.inf), 'builtins.ValueError',
                          "argument 'maxTime' must be a non-negative number"),
    'timeout_negative': (lambda c: dict(SH, timeout=-5), 'builtins.ValueError',
                         "argument 'timeout' must be a non-negative number"),
    'blocksize_0': (lambda c: _upload(c, blocksize=0), 'builtins.ValueError',
                    "argument 'blocksize' must be a positive integer"),
    'blocksize_negative': (lambda c: _upload(c, blocksize=-16384), 'builtins.ValueError',
                           "argument 'blocksize' must be a positive integer"),
    'blocksize_text': (lambda c: _upload(c, blocksize='big'), 'builtins.ValueError',
                       "argument 'blocksize' must be a positive integer"),
    'maxsize_negative': (lambda c: _upload(c, maxsize=-1), 'builtins.ValueError',
                         "argument 'maxsize' must be a non-negative integer"),
    'writer_missing': (lambda c: _upload(c, writer=None), 'builtins.ValueError',
                       "missing argument 'writer'"),
    'writer_not_a_reference': (lambda c: _upload(c, writer=7), 'builtins.ValueError',
                               "missing argument 'writer'"),
}


@pytest.mark.parametrize('case', list(START_ERRORS))
def test_start_command_refused(session, link, case):
    make, ftype, fvalue = START_ERRORS[case]
    c = link
    name = 'uploadFile' if case.startswith(('blocksize', 'maxsize', 'writer')) else 'shell'
    off = session.worker.log_size()
    reqid, cmd = c.start_command('b1', name, make(c))
    kind, f = c.wait_answer(reqid)
    assert kind == 'error' and f.type == ftype and fvalue in f.value, (kind, f)
    session.wait_log(off, r'refused: ' + re.escape(f.value))
    c.wait(lambda: not c.held_refs(), 5, 'the references of the refused command given back')
    assert cmd.updates == [] and cmd.completed is None
    _up(session, c)
    _echo(c)


START_CALL_ERRORS = {
    'unknown_command': ([b'tuple', None, [b'unicode', b'9'], [b'unicode', b'frob'],
                         [b'dictionary']],
                        'buildbot_worker.pb.UnknownCommand', "unrecognized WorkerCommand 'frob'"),
    'cmdref_not_a_reference': ([b'tuple', 5, [b'unicode', b'9'], [b'unicode', b'shell'],
                                [b'dictionary']], 'builtins.TypeError', 'startCommand takes'),
    'three_arguments': ([b'tuple', None, [b'unicode', b'9'], [b'unicode', b'shell']],
                        'builtins.TypeError', 'startCommand takes'),
    'empty_command_id': ([b'tuple', None, [b'unicode', b''], [b'unicode', b'shell'],
                          [b'dictionary']], 'builtins.TypeError', 'startCommand takes'),
    'command_id_int': ([b'tuple', None, 9, [b'unicode', b'shell'], [b'dictionary']],
                       'builtins.TypeError', 'startCommand takes'),
}


@pytest.mark.parametrize('case', list(START_CALL_ERRORS))
def test_start_command_bad_call(session, link, case):
    """startCommand's own arguments wrong (the None slot gets a fresh RemoteCommand)."""
    tree, ftype, fvalue = START_CALL_ERRORS[case]
    c = link
    cmd = RemoteCommand()
    tree = [c.export(cmd) if x is None else x for x in tree]
    reqid = c.call_tree(c.builders['b1'], 'startCommand', tree)
    kind, f = c.wait_answer(reqid)
    assert kind == 'error' and f.type == ftype and fvalue in f.value, (kind, f)
    assert cmd.updates == [] and cmd.completed is None
    _up(session, c)
    _echo(c)


# ---------------------------------------------------------------------------------------------
# Numbers out of range


@pytest.mark.parametrize('key,value', [
    ('timeout', 2 ** 70),       # LONGINT beyond 64 bits
    ('timeout', -2 ** 70),      # LONGNEG beyond 64 bits
    ('maxTime', 2 ** 64),
    ('sigtermTime', 2 ** 70),
    ('timeout', 1e6),
])
def test_big_numbers_accepted(session, link, key, value):
    """A number beyond 64 bits where the worker needs one: refused with an error answer, or
    the command runs normally to its end (never a crash, never an immediate timeout)."""
    c = link
    reqid, cmd = c.start_command('b1', 'shell', dict(SH, command='sleep 0.3; echo done',
                                                     **{key: value}))
    kind, f = c.wait_answer(reqid)
    if kind == 'error':
        assert f.type == 'builtins.ValueError', f
    else:
        c.wait_complete(cmd)
        assert (cmd.rc, cmd.text()) == (0, 'done\n'), cmd.text('header')
    _up(session, c)


@pytest.mark.parametrize('key,value', [('timeout', 2 ** 62), ('timeout', 1e300),
                                       ('maxTime', 1e300)])
def test_huge_timeout_does_not_kill_at_once(session, link, key, value):
    """A timeout far in the future (an INT that fits 64 bits, or a finite float) must not end
    the command early: either an error answer or the command runs to its end."""
    c = link
    reqid, cmd = c.start_command('b1', 'shell', dict(SH, command='sleep 0.3; echo done',
                                                     **{key: value}))
    kind, f = c.wait_answer(reqid)
    if kind == 'answer':
        c.wait_complete(cmd)
        assert (cmd.rc, cmd.text()) == (0, 'done\n'), cmd.text('header')[-300:]
    else:
        assert f.type == 'builtins.ValueError', f


# ---------------------------------------------------------------------------------------------
# Transfers: block sizes and the master's answers


def _src(session, size, name='src.bin'):
    data = os.urandom(size)
    with open(os.path.join(session.worker.basedir, 'b1', name), 'wb') as f:
        f.write(data)
    return data


def test_blocksize_above_the_banana_limit(session, link):
    """blocksize 1 MiB (and 2**70, beyond 64 bits): every write and every read asks for at
    most 655,360 bytes, both transfers succeed and the data is intact."""
    c = link
    data = _src(session, 1_500_000)
    for bs in (1 << 20, 2 ** 70):
        wr = FileWriter()
        up = c.run_command('b1', 'uploadFile', _upload(c, writer=c.export(wr), blocksize=bs))
        assert up.rc == 0 and wr.data == data
        assert max(len(x) for x in wr.chunks) <= pbfake.SIZE_LIMIT
    rd = FileReader(data=data)
    down = c.run_command('b1', 'downloadFile', {'workdir': '.', 'workerdest': 'big.bin',
                                                'reader': c.export(rd), 'maxsize': None,
                                                'blocksize': 1 << 20, 'mode': None})
    assert down.rc == 0 and max(rd.reads) <= pbfake.SIZE_LIMIT
    with open(os.path.join(session.worker.basedir, 'b1', 'big.bin'), 'rb') as f:
        assert f.read() == data
    _up(session, c)


READ_ANSWERS = {
    'longer_than_asked': (lambda n, r: b'x' * (n + 100), 1, 'more data than asked for'),
    'unicode_data': (lambda n, r: '' if r.reads[1:] else 'abc', 0, None),
    'none': (lambda n, r: None, 1, 'download failed'),
    'an_int': (lambda n, r: 5, 1, 'not data'),
    'a_dict': (lambda n, r: {'a': b'b'}, 1, 'not data'),
    'refused_jelly': (lambda n, r: Tree([b'class', b'os.system']), 1, 'not allowed'),
}


@pytest.mark.parametrize('case', list(READ_ANSWERS))
def test_file_reader_answers(session, link, case):
    """downloadFile whose FileReader.read answers oddly: the command fails with a message on
    stderr and writes nothing (or, for unicode text, takes it as data); its references are
    given back once; the link stays up."""
    fn, rc, text = READ_ANSWERS[case]
    c = link
    dest = os.path.join(session.worker.basedir, 'b1', f'dl-{case}')
    rd = FileReader(answer=fn)
    cmd = c.run_command('b1', 'downloadFile', {'workdir': '.', 'workerdest': f'dl-{case}',
                                               'reader': c.export(rd), 'maxsize': None,
                                               'blocksize': 100, 'mode': None})
    assert cmd.rc == rc, cmd.updates
    if rc:
        assert text in cmd.text('stderr')
        assert not os.path.exists(dest)
    else:
        with open(dest, 'rb') as f:
            assert f.read() == b'abc'
    c.wait_refs_released([cmd.luid, rd.luid])
    assert c.decrefs.count(rd.luid) == 1
    _up(session, c)


@pytest.mark.parametrize('answer', [None, 5])
def test_file_reader_error_names_the_pb_call(session, link, answer):
    c = link
    rd = FileReader(answer=lambda n, r: answer)
    cmd = c.run_command('b1', 'downloadFile', {'workdir': '.', 'workerdest': 'dl-wording',
                                               'reader': c.export(rd), 'maxsize': None,
                                               'blocksize': 100, 'mode': None})
    err = cmd.text('stderr')
    assert cmd.rc == 1 and 'download failed' in err
    assert 'update_read_file' not in err and 'msgpack' not in err, err


def test_file_reader_error_answer(session, link):
    c = link
    rd = FileReader()
    rd.handle = lambda reqid, method, args, kwargs: (
        ('error', ('builtins.OSError', 'cannot read the source')) if method == 'read'
        else ('answer', None))
    cmd = c.run_command('b1', 'downloadFile', {'workdir': '.', 'workerdest': 'dl-error',
                                               'reader': c.export(rd), 'maxsize': None,
                                               'blocksize': 100, 'mode': None})
    assert cmd.rc == 1 and 'cannot read the source' in cmd.text('stderr')
    assert not os.path.exists(os.path.join(session.worker.basedir, 'b1', 'dl-error'))
    c.wait_refs_released([cmd.luid, rd.luid])
    _up(session, c)


def test_file_writer_error_answer(session, link):
    """FileWriter.write answered with an error: the upload fails (rc 1, the master's text on
    stderr), no further write, references given back once, the link stays up."""
    c = link
    _src(session, 100_000)
    wr = FileWriter(fail_write=2)
    cmd = c.run_command('b1', 'uploadFile', _upload(c, writer=c.export(wr)))
    assert cmd.rc == 1 and 'No space left on device' in cmd.text('stderr')
    assert wr.calls.count('write') == 2
    c.wait_refs_released([cmd.luid, wr.luid])
    assert c.decrefs.count(wr.luid) == 1 and c.decrefs.count(cmd.luid) == 1
    _up(session, c)
    _echo(c)


# ---------------------------------------------------------------------------------------------
# Builders


def test_start_command_on_a_busy_builder(session, link, proc_marker):
    """The builder's running command is interrupted (rc -1, complete) and the new one runs;
    both references come back; no process of the first survives."""
    c = link
    env = {'CW_MARKER': proc_marker}
    r1, first = c.start_command('b1', 'shell', dict(SH, command=f'sleep 60 # {proc_marker}',
                                                   env=env))
    assert c.wait_answer(r1) == ('answer', None)
    bbmaster.wait_for(lambda: bbmaster.find_processes(proc_marker), 5, 'the first command')
    off = session.worker.log_size()
    second = c.run_command('b1', 'shell', dict(SH, command='echo second'))
    c.wait_complete(first)
    assert first.rc == -1 and 'interrupted' in first.text('header')
    assert (second.rc, second.text()) == (0, 'second\n')
    session.wait_log(off, r'builder b1: leftover command \S+, dropping it')
    bbmaster.wait_no_process(proc_marker, 5)
    c.wait_refs_released([first.luid, second.luid])
    _up(session, c)


@pytest.mark.parametrize('args', [('nosuch', 'why'), (), (5, None)])
def test_interrupt_idle_builder(session, link, args):
    c = link
    off = session.worker.log_size()
    assert c.wait_answer(c.call(c.builders['b2'], 'interruptCommand', *args)) == ('answer', None)
    session.wait_log(off, r'\.\. but none was running')
    _up(session, c)


BUILDER_LISTS = {
    'duplicate_names': ([('b1', 'b1'), ('b1', 'elsewhere'), ('b2', 'b2')], {'b1', 'b2'},
                        r"builder 'b1' listed twice; the first entry counts"),
    'dotdot_builddir': ([('b1', 'b1'), ('b2', 'b2'), ('up', '../pbhostile-up')],
                        {'b1', 'b2', 'up'}, r'3 builder\(s\): ready'),
    'absolute_builddir': ([('b1', 'b1'), ('b2', 'b2'), ('abs', '@ABS@')], {'b1', 'b2', 'abs'},
                          r'3 builder\(s\): ready'),
    'info_builddir': ([('b1', 'b1'), ('b2', 'b2'), ('inf', 'info')], {'b1', 'b2', 'inf'},
                      r'3 builder\(s\): ready'),
    'empty_builddir': ([('b1', 'b1'), ('b2', 'b2'), ('here', '')], {'b1', 'b2', 'here'},
                       r'3 builder\(s\): ready'),
    'malformed_entries': ([('b1', 'b1'), ['b2'], 5, ('', 'x'), ('b2', 'b2')], {'b1', 'b2'},
                          r'an entry that is not \(name, builddir\) ignored'),
}


@pytest.mark.parametrize('case', list(BUILDER_LISTS))
def test_set_builder_list_hostile(session, link, case, tmp_path):
    """setBuilderList answers a dictionary with one reference per distinct valid name (old
    builders keep their luid), and the builders work afterwards."""
    blist, names, note = BUILDER_LISTS[case]
    c = link
    blist = [tuple(str(tmp_path / 'abs') if x == '@ABS@' else x for x in e)
             if isinstance(e, tuple) else e for e in blist]
    before = dict(c.builders)
    off = session.worker.log_size()
    res = c.set_builder_list(blist)
    assert set(res) == names
    assert all(c.builders[k] == v for k, v in before.items() if k in names)
    session.wait_log(off, note)
    for name in sorted(names):
        _echo(c, builder=name, text=f'on {name}')
    kind, info = c.wait_answer(c.call(BOT, 'getWorkerInfo'))
    assert kind == 'answer' and isinstance(info, dict)
    c.set_builder_list(session.fake.builders)
    assert c.builders == before
    _up(session, c)


def test_set_builder_list_not_a_list(session, link):
    c = link
    for args in (('notalist',), (), ([('b1', 'b1')], 'extra')):
        kind, f = c.wait_answer(c.call(BOT, 'setBuilderList', *args))
        assert kind == 'error' and f.type == 'builtins.TypeError', (args, f)
    _up(session, c)
    _echo(c)


# ---------------------------------------------------------------------------------------------
# References: floods, each given back exactly once


def test_reference_flood_in_command_args(session, link):
    """startCommand whose args carry 3,000 distinct references, and one reference 3,000
    times: the command runs, every copy is decref'd exactly once, memory stays bounded."""
    c = link
    refs = [c.export(RemoteObject()) for _ in range(3000)]
    cmd = c.run_command('b1', 'shell', dict(SH, junk=refs))
    assert cmd.rc == 0
    c.wait_refs_released(refs + [Remote(cmd.luid)])
    assert all(c.decrefs.count(r.luid) == 1 for r in refs[:50] + refs[-50:])
    one = c.export(RemoteObject())
    cmd = c.run_command('b1', 'shell', dict(SH, junk=[one] * 3000, more={'k': one}))
    assert cmd.rc == 0
    c.wait_refs_released([one, Remote(cmd.luid)])
    assert c.decrefs.count(one.luid) == 3001
    _up(session, c)
    if not session.sanitized:
        assert session.rss_kib() < RSS_LIMIT_KIB


def test_reference_flood_in_calls(session, link):
    """2,000 calls, each carrying a new reference (print's kwargs, an unknown method, a
    refused argument): all given back exactly once; memory stays bounded."""
    c = link
    refs = []
    for i in range(2000):
        ref = c.export(RemoteObject())
        refs.append(ref)
        if i % 3 == 0:
            c.call(BOT, 'print', message='x', junk=ref)
        elif i % 3 == 1:
            c.call(BOT, 'nosuch', ref)
        else:
            c.call_tree(BOT, 'print', [b'tuple', ref, [b'class', b'x']])
    c.wait_refs_released(refs, 20)
    assert sorted(c.decrefs[-2000:]) == sorted(r.luid for r in refs)
    _up(session, c)
    if not session.sanitized:
        assert session.rss_kib() < RSS_LIMIT_KIB


# ---------------------------------------------------------------------------------------------
# Flow: a master that never answers, a master that stops reading


def _yes(c, marker, cmd=None):
    reqid, cmd = c.start_command('b1', 'shell', dict(SH, command=f'yes # {marker}',
                                                     env={'CW_MARKER': marker}), cmd=cmd)
    assert c.wait_answer(reqid) == ('answer', None)
    return cmd


def _interrupt(c, cmd, marker):
    kind, _ = c.wait_answer(c.call(c.builders['b1'], 'interruptCommand', cmd.cmd_id, 'stop'),
                            20)
    assert kind == 'answer'
    c.wait_complete(cmd, 20)
    assert cmd.rc == -1
    bbmaster.wait_no_process(marker, 5)
    c.wait_refs_released([cmd.luid])


def test_updates_never_answered(session, link, proc_marker):
    """`yes` while the master answers no update: at most 8 updates wait for an answer, the
    command is held back (memory bounded); once answered, output flows again."""
    c = link
    cmd = _yes(c, proc_marker, RemoteCommand(answer_updates=False))
    c.wait(lambda: cmd.update_calls >= 1, 5, 'a first update')
    peak = 0
    for _ in range(8):
        time.sleep(0.25)
        assert len(cmd.held) <= 8, cmd.update_calls
        if not session.sanitized:
            peak = max(peak, session.rss_kib())
    assert cmd.update_calls <= 8
    assert peak < RSS_LIMIT_KIB
    n = cmd.update_calls
    cmd.release_updates()
    c.wait(lambda: cmd.update_calls > n + 8, 10, 'more updates once answered')
    _interrupt(c, cmd, proc_marker)
    _up(session, c)


def test_master_stops_reading(session, link, proc_marker):
    """`yes` while the master reads nothing for 20 s: the worker's VmRSS stays below 64 MiB;
    when the master reads again, the link works and the command can be interrupted."""
    c = link
    cmd = _yes(c, proc_marker)
    c.wait(lambda: cmd.update_calls >= 3, 5, 'output')
    c.reading.clear()
    time.sleep(0.2)
    rx = c.rx_bytes
    peak, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 20:
        assert session.worker.running()
        peak = max(peak, session.rss_kib())
        time.sleep(0.25)
    assert c.rx_bytes - rx <= 1 << 18, 'the fake went on reading'
    c.reading.set()
    if not session.sanitized:
        assert peak < RSS_LIMIT_KIB, f'VmRSS peak {peak} KiB'
    _interrupt(c, cmd, proc_marker)
    assert not c.closed
    _up(session, c)


# ---------------------------------------------------------------------------------------------
# The module's worker survived everything


def test_shared_worker_survived(session, link):
    """After every case above: the same worker process, alive, no violation on any
    connection it made, and it still runs commands; SIGTERM then stops it with status 0 and
    no sanitizer report (LeakSanitizer runs at exit)."""
    c = link
    assert session.worker.running()
    assert all(x.violations == [] for x in session.fake.all_conns), \
        [(i, x.violations) for i, x in enumerate(session.fake.all_conns) if x.violations]
    _echo(c)
    _up(session, c)
    rc = session.worker.stop()
    rep = pbfake.sanitizer_report(session.worker.log_text())
    assert rep is None, f'sanitizer report in the worker log: {rep}'
    assert rc == 0, f'the worker exited with {rc} on SIGTERM'


# ---------------------------------------------------------------------------------------------
# Shutdown (its own worker: it exits)


def test_shutdown_while_a_command_runs(cworker_bin, tmp_path, proc_marker):
    """Bot.shutdown() while `sleep` runs (with a background child in its process group):
    answered None, the processes killed, the command completed, the worker exits 0 and does
    not connect again."""
    fake = pbfake.FakeMaster()
    w = pbfake.PBWorker(str(tmp_path / 'worker'), fake, binary=cworker_bin)
    try:
        w.start()
        c = fake.wait_conn(10)
        c.login()
        reqid, cmd = c.start_command('b1', 'shell', dict(
            SH, command=f'sleep 60 & sleep 60; wait # {proc_marker}',
            env={'CW_MARKER': proc_marker}))
        assert c.wait_answer(reqid) == ('answer', None)
        bbmaster.wait_for(lambda: len(bbmaster.find_processes(proc_marker)) >= 3, 5,
                          'the command and its children')
        t0 = time.monotonic()
        assert c.wait_answer(c.call(BOT, 'shutdown')) == ('answer', None)
        assert w.proc.wait(15) == 0
        stopped = time.monotonic() - t0
        bbmaster.wait_no_process(proc_marker, 5)
        assert cmd.completed is not None and cmd.rc == -1
        assert c.wait_closed(5)
        assert fake.no_conn(2), 'the worker connected again after shutdown'
        log = w.log_text()
        assert 'worker shutting down on command from master' in log
        assert pbfake.sanitizer_report(log) is None, pbfake.sanitizer_report(log)
        assert c.violations == []
        assert stopped < 10
    finally:
        w.stop()
        fake.stop()
