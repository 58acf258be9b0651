"""A fake Buildbot master speaking Perspective Broker, for hostile-master tests (test-only).

Plain Python (standard library only), no pytest.  It listens on 127.0.0.1 (ephemeral port),
accepts a worker, and lets a test script what the "master" sends, from a normal login and
attach to raw hostile bytes at any point.  Wire format: /work/shared/reference/
perspective-broker.md (banana §2, jelly §3, broker §4, login §5, methods §7).

* Codec: `enc(tree)` writes a banana tree (list -> LIST, int -> INT/NEG/LONGINT/LONGNEG,
  float -> FLOAT, bytes -> STRING or VOCAB, `Raw` -> its bytes as they are); `jelly(value)`
  turns Python values into jelly trees (None, bool, int, float, bytes, str -> unicode, list,
  tuple, dict, `Remote`, and `Tree` for a hand-made form).  `Decoder` is an incremental
  banana decoder, `unjelly()` the jelly subset a worker sends.
* `FakeMaster(password)`: the listener.  `wait_conn()` gives the next `Conn`.
* `Conn`: one TCP connection.  A reader thread decodes what the worker sends, answers its
  calls on our objects (`RemoteCommand`, `FileWriter`, `FileReader`, the perspective),
  resolves the answers to our calls, counts decrefs, and records every breach of what a
  3.7 master tolerates (reference §11.4) in `violations`.  The test thread calls `login()`,
  `call()`, `wait_answer()`, `start_command()`, `send_raw()` and so on.
* Reference accounting: every ("remote" N) we send counts one copy of our object N; every
  ("decref" N) from the worker takes one back.  A decref of a copy the worker does not hold
  is a violation (the real master drops the link), `held_refs()` lists what the worker still
  holds.
* `worker_argv()` is the one place that builds the worker's command line.
"""

import contextlib
import hashlib
import os
import queue
import socket
import struct
import threading
import time

import bbmaster

SIZE_LIMIT = 640 * 1024
PREFIX_LIMIT = 64

LIST, INT, STRING, NEG, FLOAT, LONGINT, LONGNEG, VOCAB = 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, \
    0x86, 0x87

VOCAB_WORDS = [None, b'None', b'class', b'dereference', b'reference', b'dictionary', b'function',
               b'instance', b'list', b'module', b'persistent', b'tuple', b'unpersistable', b'copy',
               b'cache', b'cached', b'remote', b'local', b'lcache', b'version', b'login',
               b'password', b'challenge', b'logged_in', b'not_logged_in', b'cachemessage',
               b'message', b'answer', b'error', b'decref', b'decache', b'uncache']
VOCAB_INDEX = {w: i for i, w in enumerate(VOCAB_WORDS) if w is not None}

BOT = 1  # the worker's Bot (the "mind" of its login)


def worker_argv(binary, port, name, basedir, password_file, extra=()):
    """The C worker's command line against a PB master on 127.0.0.1:port."""
    return [binary, '--master', f'127.0.0.1:{port}', '--protocol', 'pb', '--name', name,
            '--basedir', basedir, '--password-file', password_file, '--backoff-max', '1',
            '--verbose'] + list(extra)


class PBWorker(bbmaster.CWorker):
    """cworker started by bbmaster's process helpers (own session, PDEATHSIG, stopped by PID),
    with the command line of worker_argv()."""

    def __init__(self, basedir, fake, name='w1', binary=None, extra_args=(), env=None):
        super().__init__(basedir, fake, name, fake.password, binary=binary,
                         extra_args=extra_args, env=env, protocol='pb')
        self.fake = fake

    def argv(self):
        return worker_argv(self.binary, self.fake.port, self.worker_name, self.basedir,
                           self.password_file, self.extra_args)

    def start(self, wait=False, timeout=30):
        return super().start(wait=False)

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.logfile, 'rb') as f:
            f.seek(offset)
            return f.read().decode('utf-8', 'replace')


SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
                   'SUMMARY: UndefinedBehaviorSanitizer', 'Sanitizer:DEADLYSIGNAL')


def sanitizer_report(text):
    """The first line of a sanitizer report in `text`, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKS):
            return line
    return None


# ---------------------------------------------------------------------------------------------
# Banana and jelly


class Raw(bytes):
    """Bytes put on the wire as they are (inside a tree or alone)."""


class Remote:
    """("remote" luid): one of our objects (when we send it) or one of the worker's."""

    def __init__(self, luid):
        self.luid = luid

    def __eq__(self, other):
        return isinstance(other, Remote) and other.luid == self.luid

    def __hash__(self):
        return hash(('remote', self.luid))

    def __repr__(self):
        return f'Remote({self.luid})'


class Tree:
    """A banana tree given to jelly() as it is (a hand-made jelly form)."""

    def __init__(self, tree):
        self.tree = tree


class Failure:
    """A CopyableFailure the worker sent: .type, .value, .state."""

    def __init__(self, state):
        self.state = state if isinstance(state, dict) else {}
        t = self.state.get('type', b'')
        self.type = t.decode('utf-8', 'replace') if isinstance(t, bytes) else str(t)
        v = self.state.get('value', '')
        self.value = v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)

    def __repr__(self):
        return f'Failure({self.type}: {self.value})'


def b128(n):
    """The base-128 prefix of n >= 0, least significant digit first, at least one digit."""
    out = bytearray()
    while True:
        out.append(n & 0x7f)
        n >>= 7
        if n == 0:
            return bytes(out)


def enc_int(n):
    if 0 <= n <= 0x7fffffff:
        return b128(n) + bytes([INT])
    if n > 0:
        return b128(n) + bytes([LONGINT])
    if n >= -0x80000000:
        return b128(-n) + bytes([NEG])
    return b128(-n) + bytes([LONGNEG])


def enc(tree, vocab=True, on_remote=None):
    """Banana bytes of a tree."""
    out = []

    def walk(x):
        if isinstance(x, Raw):
            out.append(bytes(x))
        elif isinstance(x, Remote):
            if on_remote:
                on_remote(x.luid)
            walk([b'remote', x.luid])
        elif isinstance(x, (list, tuple)):
            out.append(b128(len(x)) + bytes([LIST]))
            for i in x:
                walk(i)
        elif isinstance(x, bool):
            raise TypeError('bool in a banana tree (jelly it)')
        elif isinstance(x, int):
            out.append(enc_int(x))
        elif isinstance(x, float):
            out.append(bytes([FLOAT]) + struct.pack('>d', x))
        elif isinstance(x, (bytes, bytearray, str)):
            b = x.encode() if isinstance(x, str) else bytes(x)
            if vocab and b in VOCAB_INDEX:
                out.append(b128(VOCAB_INDEX[b]) + bytes([VOCAB]))
            else:
                out.append(b128(len(b)) + bytes([STRING]) + b)
        else:
            raise TypeError(f'cannot encode {type(x).__name__} in banana')

    walk(tree)
    return b''.join(out)


def jelly(v):
    """The jelly tree of a Python value."""
    if isinstance(v, (Raw, Remote)):
        return v
    if isinstance(v, Tree):
        return v.tree
    if v is None:
        return [b'None']
    if isinstance(v, bool):
        return [b'boolean', b'true' if v else b'false']
    if isinstance(v, (int, float, bytes)):
        return v
    if isinstance(v, str):
        return [b'unicode', v.encode('utf-8')]
    if isinstance(v, list):
        return [b'list'] + [jelly(i) for i in v]
    if isinstance(v, tuple):
        return [b'tuple'] + [jelly(i) for i in v]
    if isinstance(v, dict):
        return [b'dictionary'] + [[jelly(k), jelly(x)] for k, x in v.items()]
    raise TypeError(f'cannot jelly {type(v).__name__}')


class Incomplete(Exception):
    pass


class Violation(Exception):
    """The worker sent something a stock 3.7 master would drop the connection for."""


class Decoder:
    """Incremental banana decoder for what the worker sends, strict about the limits."""

    def __init__(self):
        self.buf = bytearray()
        self.vocab = False

    def feed(self, data):
        self.buf += data

    def next(self):
        """One top-level expression as a tree, or None when more bytes are needed."""
        try:
            tree, end = self._parse(0)
        except Incomplete:
            return None
        del self.buf[:end]
        return tree

    def _prefix(self, pos):
        buf = self.buf
        start = pos
        while pos < len(buf) and buf[pos] < 0x80:
            pos += 1
            if pos - start > PREFIX_LIMIT:
                raise Violation('prefix longer than 64 digits')
        if pos >= len(buf):
            raise Incomplete()
        n = 0
        for i in range(pos - 1, start - 1, -1):
            n = (n << 7) | buf[i]
        return n, buf[pos], pos + 1

    def _parse(self, pos):
        # an explicit stack: [list being filled, elements still expected]
        stack = []
        while True:
            n, t, pos = self._prefix(pos)
            if t == LIST:
                if n > SIZE_LIMIT:
                    raise Violation(f'LIST of {n} elements')
                if n > 0:
                    stack.append(([], n))
                    continue
                val = []
            elif t in (INT, LONGINT):
                val = n
            elif t in (NEG, LONGNEG):
                val = -n
            elif t == STRING:
                if n > SIZE_LIMIT:
                    raise Violation(f'STRING of {n} bytes')
                if pos + n > len(self.buf):
                    raise Incomplete()
                val = bytes(self.buf[pos:pos + n])
                pos += n
            elif t == FLOAT:
                if pos + 8 > len(self.buf):
                    raise Incomplete()
                val = struct.unpack('>d', self.buf[pos:pos + 8])[0]
                pos += 8
            elif t == VOCAB:
                if not self.vocab:
                    raise Violation('VOCAB before the dialect choice')
                if not 1 <= n < len(VOCAB_WORDS):
                    raise Violation(f'VOCAB index {n}')
                val = VOCAB_WORDS[n]
            else:
                raise Violation(f'unknown type byte {t:#x}')
            while True:
                if not stack:
                    return val, pos
                items, left = stack[-1]
                items.append(val)
                left -= 1
                if left:
                    stack[-1] = (items, left)
                    break
                stack.pop()
                val = items


def unjelly(t):
    """The Python value of a jelly tree the worker sent (the forms of reference §3.1)."""
    if isinstance(t, (int, float, bytes)):
        return t
    if not isinstance(t, list) or not t or not isinstance(t[0], bytes):
        raise Violation(f'not a jelly form: {t!r:.80}')
    head, rest = t[0], t[1:]
    if head == b'None' and not rest:
        return None
    if head == b'unicode' and len(rest) == 1 and isinstance(rest[0], bytes):
        try:
            return rest[0].decode('utf-8')
        except UnicodeDecodeError as e:
            raise Violation(f'invalid UTF-8 in unicode: {e}') from None
    if head == b'boolean' and len(rest) == 1 and rest[0] in (b'true', b'false'):
        return rest[0] == b'true'
    if head == b'list':
        return [unjelly(i) for i in rest]
    if head == b'tuple':
        return tuple(unjelly(i) for i in rest)
    if head == b'dictionary':
        d = {}
        for pair in rest:
            if not isinstance(pair, list) or len(pair) != 2:
                raise Violation(f'dictionary entry {pair!r:.80}')
            k = unjelly(pair[0])
            d[k if isinstance(k, (str, bytes, int, float, tuple)) else repr(k)] = unjelly(pair[1])
        return d
    if head == b'remote' and len(rest) == 1 and isinstance(rest[0], int):
        return Remote(rest[0])
    if head == b'twisted.spread.pb.CopyableFailure' and len(rest) == 1:
        return Failure(unjelly(rest[0]))
    raise Violation(f'jelly form {head!r} from the worker')


def md5(b):
    return hashlib.md5(b).digest()


def copyable_failure(type_, value):
    """A CopyableFailure tree as the master sends one (reference §3.2)."""
    return Tree(jelly({'type': type_.encode(), 'value': value,
                       'traceback': 'Traceback unavailable\n',
                       'parents': [type_, 'builtins.Exception', 'builtins.BaseException',
                                   'builtins.object'],
                       'frames': [], 'stack': [], 'tb': None, 'count': 1, 'captureVars': False,
                       'unsafeTracebacks': True}))


def failure_tree(type_, value):
    return [b'twisted.spread.pb.CopyableFailure', copyable_failure(type_, value).tree]


# ---------------------------------------------------------------------------------------------
# Our objects (what the worker may call)


class RemoteObject:
    """A master-side object the worker calls.  handle() returns ('answer', value),
    ('error', (type, value)), or None (no answer now: the object answers later itself)."""

    conn = None
    luid = None

    def handle(self, reqid, method, args, kwargs):
        return ('error', ('twisted.spread.flavors.NoSuchMethod',
                          f'No such method: remote_{method}'))


class Perspective(RemoteObject):
    def __init__(self):
        self.keepalives = 0
        self.shutdowns = 0

    def handle(self, reqid, method, args, kwargs):
        if method == 'keepalive':
            self.keepalives += 1
            return ('answer', None)
        if method == 'shutdown':
            self.shutdowns += 1
            return ('answer', None)
        return super().handle(reqid, method, args, kwargs)


class RemoteCommand(RemoteObject):
    """What the master's RemoteCommand keeps: updates, rc, complete.  answer_updates=False
    leaves every update unanswered until release_updates()."""

    def __init__(self, answer_updates=True):
        self.answer_updates = answer_updates
        self.updates = []      # every (key, value), in order
        self.update_calls = 0
        self.held = []         # reqids of updates not answered
        self.completed = None  # ('ok', None) or ('failure', value) once complete() came
        self.after_complete = []  # calls after complete
        self.lock = threading.Lock()

    def handle(self, reqid, method, args, kwargs):
        if method == 'update':
            with self.lock:
                if self.completed is not None:
                    self.after_complete.append(method)
                self.update_calls += 1
                top = 0
                for pair in (args[0] if args else []):
                    entry, n = pair
                    top = max(top, n)
                    for k, v in entry.items():
                        self.updates.append((k, v))
                if not self.answer_updates:
                    self.held.append(reqid)
                    return None
            return ('answer', top)
        if method == 'complete':
            with self.lock:
                if self.completed is not None:
                    self.after_complete.append(method)
                f = args[0] if args else None
                self.completed = ('ok', None) if f is None else ('failure', f)
            return ('answer', None)
        return super().handle(reqid, method, args, kwargs)

    def release_updates(self):
        with self.lock:
            held, self.held = self.held, []
            self.answer_updates = True
        for r in held:
            self.conn.answer(r, 0)

    def text(self, key='stdout'):
        with self.lock:
            return ''.join(v for k, v in self.updates if k == key and isinstance(v, str))

    def values(self, key):
        with self.lock:
            return [v for k, v in self.updates if k == key]

    @property
    def rc(self):
        v = self.values('rc')
        return v[-1] if v else None


class FileWriter(RemoteObject):
    """The master's FileWriter/DirectoryWriter: write/close/utime/unpack.  fail_write: answer
    the n-th write (1-based) with an error."""

    def __init__(self, fail_write=None):
        self.chunks = []
        self.calls = []
        self.fail_write = fail_write

    def handle(self, reqid, method, args, kwargs):
        self.calls.append(method)
        if method == 'write':
            data = args[0] if args else b''
            self.chunks.append(data if isinstance(data, bytes) else str(data).encode())
            if self.fail_write is not None and len(self.chunks) >= self.fail_write:
                return ('error', ('builtins.OSError', '[Errno 28] No space left on device'))
            return ('answer', None)
        if method in ('close', 'utime', 'unpack'):
            return ('answer', None)
        return super().handle(reqid, method, args, kwargs)

    @property
    def data(self):
        return b''.join(self.chunks)


class FileReader(RemoteObject):
    """The master's FileReader: read(n) answered from `data`, or by answer(n, reader) when
    given (returns the jelly value to answer, or a Tree)."""

    def __init__(self, data=b'', answer=None):
        self.data = data
        self.pos = 0
        self.reads = []
        self.answer_fn = answer

    def handle(self, reqid, method, args, kwargs):
        if method == 'read':
            n = args[0] if args else 0
            self.reads.append(n)
            if self.answer_fn:
                return ('answer', self.answer_fn(n, self))
            chunk = self.data[self.pos:self.pos + n]
            self.pos += len(chunk)
            return ('answer', chunk)
        if method == 'close':
            return ('answer', None)
        return super().handle(reqid, method, args, kwargs)


# ---------------------------------------------------------------------------------------------
# The connection


class Conn:
    """One worker connection.  The reader thread handles what arrives; the test thread
    scripts what we send."""

    def __init__(self, fake, sock, addr):
        self.fake = fake
        self.sock = sock
        self.addr = addr
        self.dec = Decoder()
        self.cv = threading.Condition()
        self.send_lock = threading.Lock()
        self.inbox = []          # messages for the test thread (login, respond, version, ...)
        self.answers = {}        # our reqid -> ('answer', value) | ('error', value)
        self.pending = set()     # our reqids waiting for an answer
        self.next_reqid = 1
        self.objects = {}        # our luid -> RemoteObject (or a name for challenger)
        self.refs = {}           # our luid -> copies the worker holds
        self.next_luid = 1
        self.decrefs = []        # luids the worker decref'd, in order
        self.violations = []
        self.worker_calls = []   # (luid, method) of every call the worker made
        self.dialect = None
        self.version = None
        self.closed = False      # EOF or error from the worker
        self.closed_at = None
        self.reading = threading.Event()
        self.reading.set()
        self.rx_bytes = 0
        self.builders = {}       # name -> the worker's luid
        self.perspective = None
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    # ---- sending

    def send_raw(self, data, ignore_errors=True):
        """Bytes as they are.  Returns False when the worker has closed the connection."""
        try:
            with self.send_lock:
                self.sock.sendall(data)
            return True
        except OSError:
            if not ignore_errors:
                raise
            return False

    def send(self, tree, vocab=True):
        """One banana tree; ("remote" N) forms in it count a copy of our object N."""
        counted = []
        data = enc(tree, vocab=vocab, on_remote=counted.append)
        with self.cv:
            for luid in counted:
                self.refs[luid] = self.refs.get(luid, 0) + 1
        return self.send_raw(data)

    def export(self, obj):
        """Give a RemoteObject a luid (counted when sent as Remote(luid))."""
        with self.cv:
            luid = self.next_luid
            self.next_luid += 1
            obj.conn = self
            obj.luid = luid
            self.objects[luid] = obj
        return Remote(luid)

    def new_reqid(self):
        with self.cv:
            r = self.next_reqid
            self.next_reqid += 1
            self.pending.add(r)
            return r

    def call(self, target, method, *args, answer=True, **kwargs):
        """target.method(*args, **kwargs) on the worker; returns the request id.
        `args`/`kwargs` are jellied (Tree/Raw for hand-made forms)."""
        reqid = self.new_reqid() if answer else 0
        self.send([b'message', reqid, target, method.encode(), 1 if answer else 0,
                   jelly(tuple(args)), jelly(kwargs)])
        return reqid

    def call_tree(self, target, method, args_tree, kwargs_tree=None, reqid=None):
        """A call whose arguments are given as trees (hostile forms)."""
        reqid = self.new_reqid() if reqid is None else reqid
        self.send([b'message', reqid, target, method.encode(), 1, args_tree,
                   kwargs_tree if kwargs_tree is not None else [b'dictionary']])
        return reqid

    def answer(self, reqid, value):
        self.send([b'answer', reqid, jelly(value)])

    def error(self, reqid, type_, value):
        self.send([b'error', reqid, failure_tree(type_, value)])

    # ---- receiving

    def _reader(self):
        self.sock.settimeout(None)
        try:
            while True:
                self.reading.wait()
                try:
                    data = self.sock.recv(1 << 18)
                except OSError:
                    data = b''
                if not data:
                    break
                with self.cv:
                    self.rx_bytes += len(data)
                self.dec.feed(data)
                while True:
                    try:
                        tree = self.dec.next()
                    except Violation as e:
                        self._violation(f'banana: {e}')
                        return
                    if tree is None:
                        break
                    try:
                        self._handle(tree)
                    except Exception as e:  # a bug of the fake: make it visible
                        self._violation(f'fake master error: {e!r}')
        finally:
            with self.cv:
                self.closed = True
                self.closed_at = time.monotonic()
                self.cv.notify_all()

    def _violation(self, text):
        with self.cv:
            self.violations.append(text)
            self.cv.notify_all()

    def _handle(self, t):
        if self.dialect is None:
            if not isinstance(t, bytes):
                return self._violation(f'dialect choice is not a string: {t!r:.80}')
            self.dialect = t
            self.dec.vocab = t == b'pb'
            with self.cv:
                self.cv.notify_all()
            return
        if not isinstance(t, list) or not t or not isinstance(t[0], bytes):
            return self._violation(f'non-list or unnamed expression: {t!r:.80}')
        word = t[0]
        try:
            if word == b'version':
                if t != [b'version', 6]:
                    self._violation(f'version message {t!r}')
                with self.cv:
                    self.version = t[1] if len(t) > 1 else None
                    self.cv.notify_all()
            elif word == b'message':
                self._on_message(t)
            elif word in (b'answer', b'error'):
                self._on_answer(t)
            elif word == b'decref':
                self._on_decref(t)
            else:
                self._violation(f'unknown word {word!r} (a 3.7 master drops the link)')
        except Violation as e:
            self._violation(str(e))

    def _on_message(self, t):
        if len(t) != 7:
            raise Violation(f'message of {len(t)} fields')
        _, reqid, target, method, answer, args, kwargs = t
        if not isinstance(method, bytes):
            raise Violation(f'method name {method!r}')
        method = method.decode('utf-8', 'replace')
        args = unjelly(args)
        kwargs = unjelly(kwargs)
        with self.cv:
            self.worker_calls.append((target, method))
            if not isinstance(target, (int, bytes)):
                raise Violation(f'call on {target!r}')
            if target == b'root' or self.objects.get(target) == 'challenger':
                self.inbox.append(('call', reqid, target, method, args, kwargs))
                self.cv.notify_all()
                return
            obj = self.objects.get(target)
            live = self.refs.get(target, 0) > 0 or target == self.perspective
        if obj is None or not live:
            self._violation(f'call {method} on our object {target!r}, which the worker does not '
                            f'hold (Invalid Object ID)')
            if answer:
                self.error(reqid, 'twisted.spread.pb.Error', 'Invalid Object ID')
            return
        res = obj.handle(reqid, method, args, kwargs)
        if res is None or not answer:
            return
        if res[0] == 'answer':
            self.answer(reqid, res[1])
        else:
            self.error(reqid, *res[1])

    def _on_answer(self, t):
        if len(t) != 3:
            raise Violation(f'{t[0]!r} of {len(t)} fields')
        reqid = t[1]
        with self.cv:
            if reqid not in self.pending:
                self.violations.append(f'{t[0].decode()} for request {reqid!r}, not outstanding')
                self.cv.notify_all()
                return
            self.pending.discard(reqid)
        val = unjelly(t[2])
        with self.cv:
            self.answers[reqid] = (t[0].decode(), val)
            self.cv.notify_all()

    def _on_decref(self, t):
        if len(t) != 2:
            raise Violation(f'decref of {len(t)} fields')
        luid = t[1]
        with self.cv:
            if self.refs.get(luid, 0) <= 0:
                self.violations.append(f'decref of {luid!r}, which the worker does not hold')
            else:
                self.refs[luid] -= 1
            self.decrefs.append(luid)
            self.cv.notify_all()

    # ---- waiting

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f'timed out after {timeout} s waiting for {what}')
                self.cv.wait(min(left, 0.1))

    def wait_answer(self, reqid, timeout=10):
        """('answer', value) or ('error', Failure) of our call."""
        return self.wait(lambda: self.answers.get(reqid), timeout, f'the answer to {reqid}')

    def wait_inbox(self, timeout, what):
        def got():
            if self.inbox:
                return self.inbox.pop(0)
            if self.closed:
                raise ConnectionError(f'the worker closed the connection (waiting for {what})')
            return None
        return self.wait(got, timeout, what)

    def wait_closed(self, timeout=10):
        """True once the worker has closed the connection (EOF or reset)."""
        try:
            self.wait(lambda: self.closed, timeout, 'the worker to close the connection')
            return True
        except TimeoutError:
            return False

    def held_refs(self, exclude_perspective=True):
        """{luid: copies} of our objects the worker still holds."""
        with self.cv:
            return {k: v for k, v in self.refs.items()
                    if v > 0 and not (exclude_perspective and k == self.perspective)}

    def wait_refs_released(self, luids, timeout=10):
        luids = [x.luid if isinstance(x, Remote) else x for x in luids]
        self.wait(lambda: all(self.refs.get(x, 0) == 0 for x in luids), timeout,
                  f'decrefs of {luids[:10]}')

    # ---- the scripted master

    def handshake(self, offer=(b'pb', b'none'), version=6, timeout=10):
        """Dialect offer, the worker's choice and version, then our version."""
        self.send(list(offer), vocab=False)
        self.wait(lambda: self.dialect is not None or self.closed, timeout, 'the dialect choice')
        if self.dialect != b'pb':
            raise ConnectionError(f'dialect choice {self.dialect!r}')
        self.wait(lambda: self.version is not None or self.closed, timeout, "the worker's version")
        if version is not None:
            self.send([b'version', version])

    def login(self, timeout=10, attach=True, builders=None):
        """login -> challenge -> respond (checked) -> attach calls -> the perspective."""
        self.handshake(timeout=timeout)
        _, reqid, target, method, args, kwargs = self.wait_inbox(timeout, 'login')
        if (target, method) != (b'root', 'login'):
            raise ConnectionError(f'expected login on root, got {method} on {target!r}')
        self.username = args[0]
        challenge = os.urandom(16)
        with self.cv:
            self.objects[self.next_luid] = 'challenger'
            challenger = self.next_luid
            self.next_luid += 1
        self.send([b'answer', reqid, [b'tuple', challenge, Remote(challenger)]])
        _, rreq, target, method, args, kwargs = self.wait_inbox(timeout, 'respond')
        if (target, method) != (challenger, 'respond'):
            raise ConnectionError(f'expected respond, got {method} on {target!r}')
        response, mind = args[0], args[1]
        if response != md5(md5(self.fake.password.encode()) + challenge):
            self.error(rreq, 'twisted.cred.error.UnauthorizedLogin', '')
            raise ConnectionError('wrong response to the challenge')
        if mind != Remote(BOT):
            raise ConnectionError(f'mind {mind!r}')
        self.wait_refs_released([challenger], timeout)
        if attach:
            self.attach(builders, timeout)
        with self.cv:
            self.perspective = self.next_luid
            self.next_luid += 1
            self.objects[self.perspective] = self.perspective_obj = Perspective()
            self.perspective_obj.conn = self
        self.send([b'answer', rreq, Remote(self.perspective)])
        return self

    def attach(self, builders=None, timeout=10):
        """print("attached"), getWorkerInfo(), setBuilderList(), print per builder."""
        builders = builders if builders is not None else self.fake.builders
        kind, _ = self.wait_answer(self.call(BOT, 'print', message='attached'), timeout)
        assert kind == 'answer'
        kind, info = self.wait_answer(self.call(BOT, 'getWorkerInfo'), timeout)
        if kind != 'answer' or not isinstance(info, dict):
            raise ConnectionError(f'getWorkerInfo: {kind} {info!r}')
        self.info = info
        self.set_builder_list(builders, timeout)
        for _ in builders:
            self.call(BOT, 'print', message='attached')

    def set_builder_list(self, builders, timeout=10):
        kind, res = self.wait_answer(self.call(BOT, 'setBuilderList', list(builders)), timeout)
        if kind != 'answer' or not isinstance(res, dict):
            raise ConnectionError(f'setBuilderList: {kind} {res!r}')
        self.builders = {k: v.luid for k, v in res.items()}
        return res

    def ping(self, timeout=10):
        """print("ping") on the Bot answered: the link is up."""
        kind, _ = self.wait_answer(self.call(BOT, 'print', message='ping'), timeout)
        return kind == 'answer'

    def start_command(self, builder, name, args, cmd_id=None, cmd=None):
        """startCommand(cmdref, id, name, args) on a builder (name or luid); returns (reqid,
        RemoteCommand).  `args` is jellied (values may be Remote/Tree)."""
        cmd = cmd or RemoteCommand()
        ref = self.export(cmd)
        cmd_id = cmd_id if cmd_id is not None else str(ref.luid)
        cmd.cmd_id = cmd_id
        luid = self.builders[builder] if isinstance(builder, str) else builder
        reqid = self.call_tree(luid, 'startCommand',
                               [b'tuple', ref, jelly(cmd_id), jelly(name), jelly(args)])
        return reqid, cmd

    def run_command(self, builder, name, args, timeout=20, cmd=None):
        """startCommand answered None, then complete: the RemoteCommand."""
        reqid, cmd = self.start_command(builder, name, args, cmd=cmd)
        kind, val = self.wait_answer(reqid, timeout)
        if kind != 'answer':
            raise AssertionError(f'startCommand {name}: {kind} {val!r}')
        self.wait_complete(cmd, timeout)
        return cmd

    def wait_complete(self, cmd, timeout=20):
        self.wait(lambda: cmd.completed is not None or self.closed, timeout, 'complete()')
        if cmd.completed is None:
            raise ConnectionError('the worker closed the connection before complete()')
        return cmd.completed

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class FakeMaster:
    """A PB listener on 127.0.0.1 (ephemeral port); every accepted connection is a Conn."""

    def __init__(self, password='pass1', builders=(('b1', 'b1'), ('b2', 'b2'))):
        self.password = password
        self.builders = [tuple(b) for b in builders]
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns = queue.Queue()
        self.all_conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    # bbmaster.CWorker asks its master for the port of a protocol
    def worker_port(self, protocol=None):
        return self.port

    def _accept(self):
        while not self.stopped:
            try:
                s, addr = self.lsock.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(self, s, addr)
            self.all_conns.append(c)
            self.conns.put(c)

    def wait_conn(self, timeout=10):
        """The next connection from the worker (TimeoutError when none comes)."""
        try:
            return self.conns.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f'no connection from the worker within {timeout} s') from None

    def no_conn(self, timeout):
        """True when no new connection arrives within timeout."""
        try:
            c = self.conns.get(timeout=timeout)
        except queue.Empty:
            return True
        self.conns.put(c)
        return False

    def stop(self):
        self.stopped = True
        with contextlib.suppress(OSError):
            self.lsock.close()
        for c in self.all_conns:
            c.close()
