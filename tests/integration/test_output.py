"""Output handling of cworker as stored by the real 3.7 master: long lines, invalid UTF-8,
`logfiles` (plain and `follow`), and a 100 MiB stdout log compared byte for byte."""

import re
import time

import pytest

import bbmaster

from cwhelpers import (WORKER_CREDS, WorkerPool, dump_worker_logs, elapsed_header,  # noqa: F401
                       per_kind, proc_cpu_seconds, proc_peak_rss_kib)

MAX_STORED_LINE = 4096  # the master cuts stored lines at this many characters

# 20,000 characters without a newline, written in three bursts 0.3 s apart (so the worker
# sees partial lines across timer ticks), then '\n' and a short line.
LONG_LINE = ''.join('%09d|' % i for i in range(2000))
LONG_LINE_CMD = ("awk 'BEGIN{for(i=0;i<2000;i++){printf \"%09d|\", i; "
                 "if(i%700==699){fflush(); system(\"sleep 0.3\")}} printf \"\\n\"}'; echo after")

# Invalid UTF-8 and valid multibyte characters split across writes (dash printf, octal).
#   \377\376          two invalid bytes                -> 2 x U+FFFD
#   \342\202 | \254   EURO SIGN split over two writes  -> intact
#   \360\237 | \230 | \200  U+1F600 over three writes  -> intact
#   \342\202z         truncated sequence mid-line      -> one U+FFFD (maximal subpart), then 'z'
BADUTF8_CMD = (r"printf 'a\377\376b\n'; printf 'x\342\202'; sleep 0.2; printf '\254y\n'; "
               r"printf '\360\237'; sleep 0.2; printf '\230'; sleep 0.2; printf '\200!\n'; "
               r"printf 'mid\342\202z\n'; printf 'e\377rr\n' >&2; printf 'ok \303\251\n' >&2")
BADUTF8_STDOUT = 'a\ufffd\ufffdb\nx\u20acy\n\U0001F600!\nmid\ufffdz\n'
BADUTF8_STDERR = 'e\ufffdrr\nok \u00e9\n'

# A truncated sequence as the very last bytes of the output (no newline after it): one U+FFFD.
# (The stock 3.7 worker drops these bytes: it never flushes its incremental decoder.)
EOF_UTF8_CMD = r"printf 'ok\n'; printf 'err\342\202' >&2; printf 'tail\303'"

LOGFILES_PREP = ("rm -f out.log; printf 'old 1\\nold 2\\n' > old.log; printf 'chg old\\n' > chg.log; "
                 "printf 'fol old 1\\nfol old 2\\n' > fol.log")
# fol.log is 'followed': content present when the worker first sees the file change is
# skipped. The first change ('sync') comes 2.5 s before the real lines, so the worker (which
# polls every second) has seen it by then; a worker that seeks to the size the file had at
# command start instead would also send 'sync' -- both are accepted.
LOGFILES_CMD = ("echo sync >> fol.log; sleep 2.5; "
                "for i in 1 2 3 4 5 6; do echo \"out line $i\" >> out.log; "
                "echo \"fol new $i\" >> fol.log; sleep 0.5; done; "
                "echo 'chg new' >> chg.log; printf 'out partial no newline' >> out.log; echo done")
LOGFILES = {'out': 'out.log', 'old': 'old.log', 'chg': 'chg.log',
            'fol': {'filename': 'fol.log', 'follow': True}}

BIG_B64_INPUT = 75 * 1024 * 1024            # bytes of random input
BIG_SIZE = BIG_B64_INPUT // 3 * 4 // 100 * 101  # base64 -w 100: 100 chars + '\n' per line

BUILDERS_BOTH = {
    'badutf8': f"[steps.ShellCommand(command={BADUTF8_CMD!r})]",
}

# Prints one line, then stays silent for a long time: the line must reach the master while
# the command still runs (the stock worker batches output for up to 5 s).
FIRST_LINE_CMD = "date +%s.%N; sleep 12; echo end"

BUILDERS_CW = {
    'firstline': f"[steps.ShellCommand(name='first', command={FIRST_LINE_CMD!r})]",
    'eofutf8': f"[steps.ShellCommand(command={EOF_UTF8_CMD!r})]",
    'longline': f"[steps.ShellCommand(command={LONG_LINE_CMD!r})]",
    'logfiles': f"[steps.ShellCommand(name='prep', command={LOGFILES_PREP!r}), "
                f"steps.ShellCommand(name='main', command={LOGFILES_CMD!r}, logfiles={LOGFILES!r})]",
    'big': f"[steps.ShellCommand(name='gen', command='head -c {BIG_B64_INPUT} /dev/urandom | "
           "base64 -w 100 > big.txt; sha256sum big.txt; stat -c %s big.txt'), "
           "steps.ShellCommand(name='cat', command=['cat', 'big.txt']), "
           "steps.ShellCommand(name='rm', command=['rm', '-f', 'big.txt'], alwaysRun=True)]",
}


@pytest.fixture(scope='module')
def master(master_factory):
    builders = per_kind(BUILDERS_BOTH, ('cworker', 'stock'))
    builders.update(per_kind(BUILDERS_CW))
    return master_factory(builders, workers=WORKER_CREDS, quarantine_timeout=1)


@pytest.fixture(scope='module')
def pool(master, tmp_path_factory, cworker_bin):
    p = WorkerPool(master, tmp_path_factory.mktemp, cworker_bin)
    yield p
    p.stop()


def _ok(b):
    assert b.result == 'SUCCESS', b.describe()


def test_20000_char_line_nothing_lost(pool):
    b = pool.run('cworker', 'longline')
    _ok(b)
    out = b.log('shell').stdout
    pieces = out.split('\n')
    assert pieces[-1] == '' and pieces[-2] == 'after', repr(out[-200:])
    long_pieces = pieces[:-2]
    assert all(len(p) <= MAX_STORED_LINE for p in long_pieces), [len(p) for p in long_pieces]
    joined = ''.join(long_pieces)
    assert len(joined) == len(LONG_LINE), ([len(p) for p in long_pieces], len(joined))
    assert joined == LONG_LINE


@pytest.mark.both_workers
def test_invalid_utf8_replaced_split_multibyte_intact(pool, worker_kind):
    b = pool.run(worker_kind, 'badutf8')
    _ok(b)
    lg = b.log('shell')
    assert lg.stdout == BADUTF8_STDOUT
    assert lg.stderr == BADUTF8_STDERR


def test_truncated_utf8_at_end_of_output(pool):
    b = pool.run('cworker', 'eofutf8')
    _ok(b)
    lg = b.log('shell')
    assert lg.stdout == 'ok\ntail\ufffd\n'
    assert lg.stderr == 'err\ufffd\n'


def test_logfiles(pool):
    b = pool.run('cworker', 'logfiles', timeout=90)
    _ok(b)
    step = b.step('main')
    assert step.log('stdio').stdout == 'done\n'
    header = step.log('stdio').header
    assert 'watching logfiles' in header and 'out.log' in header, header
    # written during the step, over ~3 s; the last line has no newline (completed at the end)
    assert step.log('out').stdout == ''.join(f'out line {i}\n' for i in range(1, 7)) + \
        'out partial no newline\n'
    # existed before the step and never touched: nothing sent
    assert step.log('old').text('o') == ''
    # existed before the step and then appended to: sent from the beginning
    assert step.log('chg').stdout == 'chg old\nchg new\n'
    # followed: the old content is skipped, every line written later arrives
    fol = step.log('fol').stdout
    new = ''.join(f'fol new {i}\n' for i in range(1, 7))
    assert 'fol old' not in fol, fol
    assert fol in (new, 'sync\n' + new), fol


@pytest.mark.heavy
def test_100mib_stdout_byte_identical(pool):
    w = pool.worker('cworker')
    cpu0 = proc_cpu_seconds(w.pid)
    t0 = time.monotonic()
    b = pool.run('cworker', 'big', timeout=600)
    wall = time.monotonic() - t0
    cpu1 = proc_cpu_seconds(w.pid)
    hwm = proc_peak_rss_kib(w.pid)
    _ok(b)
    gen = b.log('gen').stdout
    m = re.fullmatch(r'([0-9a-f]{64})  big\.txt\n(\d+)\n', gen)
    assert m, gen
    want_sha, want_size = m.group(1), int(m.group(2))
    assert want_size == BIG_SIZE
    cat = b.log('cat')
    t1 = time.monotonic()
    got_sha, got_size = cat.digest('o')
    readback = time.monotonic() - t1
    assert got_size == want_size
    assert got_sha == want_sha
    assert cat.stderr == ''
    step = b.step('cat').data
    print(f'\n  100 MiB stdout ({want_size} bytes): build wall {wall:.1f} s; '
          f'cat step elapsedTime (worker) {elapsed_header(cat.header):.1f} s, '
          f'master started->complete {step["complete_at"] - step["started_at"]} s; '
          f'cworker CPU during the build {cpu1 - cpu0:.2f} s; cworker peak RSS (VmHWM) '
          f'{hwm / 1024:.1f} MiB; DB read-back sha256 {readback:.1f} s')


def test_first_line_reaches_the_master_while_the_command_runs(pool, master):
    """Output is streamed, not held back for buffer_timeout: the first line is stored by the
    master long before the command ends.  The latency is printed; the bound asserted is a
    generous behavioural one (well under the stock worker's 5 s batching), not a speed."""
    brid = pool.force('cworker', 'firstline')
    build = master.wait_build_started(brid, timeout=60)
    lg = master.wait_log_contains(build['buildid'], 'first', '\no', timeout=30)
    arrived = time.time()
    text = master.log_contents_rest(lg['logid'])
    printed = float(re.search(r'^o(\d+\.\d+)$', text, re.M).group(1))
    latency = arrived - printed
    print(f'first line stored by the master {1000 * latency:.0f} ms after it was printed '
          '(includes REST polling every 100 ms)')
    assert latency < 3.0, f'first line took {latency:.2f} s to reach the master'
    _ok(bbmaster.Build(master, master.wait_build(brid, 60)))
