"""pytest fixtures for integration tests against the real Debian Buildbot 3.7 master.

Run with Debian's interpreter (it has buildbot, buildbot-worker and pytest):

    /usr/bin/python3 -m pytest tests/integration -v

Fixtures: repo_root, cworker_bin, master_factory (module scope), worker_factory,
worker_kind (parametrised), proc_marker. See README.md in this directory.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bbmaster  # noqa: E402

ALL_WORKER_KINDS = ('cworker', 'stock')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'both_workers: run the test with the C worker and with the stock Python '
        'worker (the test takes the `worker_kind` fixture)')
    config.addinivalue_line(
        'markers', 'worker_kinds(*kinds): run the test with these worker kinds '
        '("cworker", "stock"); without a marker `worker_kind` is "cworker"')
    config.addinivalue_line(
        'markers', 'slow: long measurements (throughput); CI runs -m "not slow"')
    config.addinivalue_line(
        'markers', 'static: needs scripts/build-static; scripts/check runs them in a stage '
        'of their own')
    config.addinivalue_line(
        'markers', 'only_protocol(name): the test is about one protocol ("msgpack" or "pb"): '
        'it runs in that protocol\'s pass of the suite only (CW_PROTOCOL, see bbmaster.PROTOCOL)')
    config.addinivalue_line(
        'markers', 'heavy: volume and repetition (100 MiB, 1 GiB, 100 restarts): run in the '
        'plain pass only; the sanitizer pass covers the same code with smaller tests')


def _selected_kinds():
    """CW_WORKER_KINDS=stock (or 'cworker', 'cworker,stock') restricts the kinds that run."""
    env = os.environ.get('CW_WORKER_KINDS')
    if not env:
        return set(ALL_WORKER_KINDS)
    return {k.strip() for k in env.split(',') if k.strip()}


def pytest_generate_tests(metafunc):
    if 'worker_kind' not in metafunc.fixturenames:
        return
    kinds = ['cworker']
    m = metafunc.definition.get_closest_marker('worker_kinds')
    if m is not None:
        kinds = list(m.args)
    if metafunc.definition.get_closest_marker('both_workers') is not None:
        kinds = list(ALL_WORKER_KINDS)
    for k in kinds:
        if k not in ALL_WORKER_KINDS:
            raise ValueError(f'{metafunc.definition.nodeid}: unknown worker kind {k!r}')
    selected = _selected_kinds()
    params = [pytest.param(k, id=k, marks=() if k in selected else
                           pytest.mark.skip(reason=f'CW_WORKER_KINDS excludes {k}'))
              for k in kinds]
    metafunc.parametrize('worker_kind', params)


def pytest_collection_modifyitems(config, items):
    """Tests marked only_protocol(P) run in P's pass only: the other pass deselects them
    (pytest prints the count).  Then, under the sanitizers (CW_SANITIZED=1, set by scripts/check for its ASan+UBSan pass)
    left out: the tests with the stock Python worker (they exercise little or none of our C
    code: the plain pass runs them) and the `heavy` ones (volume and repetition, several
    times slower under ASan; smaller tests take the same code paths).  This keeps
    scripts/check well inside CI's 30 minutes."""
    other = [i for i in items if (m := i.get_closest_marker('only_protocol')) is not None
             and bbmaster.PROTOCOL not in m.args]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [i for i in items if i not in other]
    if not os.environ.get('CW_SANITIZED'):
        return
    keep, drop = [], []
    for item in items:
        kind = getattr(item, 'callspec', None) and item.callspec.params.get('worker_kind')
        stock = item.module.__name__.endswith('test_harness_stock') or kind == 'stock'
        heavy = item.get_closest_marker('heavy') is not None
        (drop if stock or heavy else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # remember each phase's outcome on the item, so fixtures can dump logs on failure
    outcome = yield
    rep = outcome.get_result()
    setattr(item, 'rep_' + rep.when, rep)


def _failed(request):
    node = request.node
    return any(getattr(node, 'rep_' + w, None) is not None and getattr(node, 'rep_' + w).failed
               for w in ('setup', 'call'))


@pytest.fixture(scope='session')
def repo_root():
    return bbmaster.REPO_ROOT


@pytest.fixture(scope='session')
def cworker_bin():
    """Path of the cworker binary ($CWORKER_BIN or <repo>/build/src/worker/cworker); the test
    errors out with a clear message if it has not been built."""
    path = bbmaster.default_cworker_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f'cworker binary not found at {path}: build it first '
                    f'(meson setup build && ninja -C build) or set CWORKER_BIN', pytrace=False)
    return path


@pytest.fixture(scope='module')
def master_factory(tmp_path_factory, request):
    """master_factory(builders, workers=(('w1','pass1'),), extra_cfg='', **Master kwargs) -> Master.

    Starts a master the first time it is called with a given configuration and returns
    the same running master for later calls with the same arguments during the module
    (start ~1.2 s, stop ~0.5 s). A master a test stopped or killed is started again.
    All masters of the module are stopped at module teardown.
    """
    masters = {}
    modname = request.module.__name__.rsplit('.', 1)[-1]

    def factory(builders, workers=(('w1', 'pass1'),), extra_cfg='', **kw):
        key = repr((sorted(builders.items()), [tuple(w) for w in workers], extra_cfg,
                    sorted(kw.items())))
        m = masters.get(key)
        if m is None:
            base = tmp_path_factory.mktemp(f'master-{modname}')
            m = bbmaster.Master(str(base), builders, workers, extra_cfg, **kw)
            masters[key] = m
        if not m.running():
            m.start()
        return m

    yield factory
    for m in masters.values():
        m.stop()


@pytest.fixture
def worker_factory(tmp_path, request):
    """worker_factory(master, name='w1', password=None, kind=None, start=True, **kw) -> worker.

    kind: 'stock' or 'cworker'; default = the test's `worker_kind` parameter if it has one,
    else 'cworker'. The password defaults to the one configured on the master. The worker
    is started and waited for (connected on the master) unless start=False. At teardown
    every worker is stopped and the master is given time to notice, so the next test can
    log in with the same name. On test failure the worker and master logs are printed.
    """
    started = []

    def factory(master, name='w1', password=None, kind=None, start=True, **kw):
        if kind is None:
            kind = request.getfixturevalue('worker_kind') if 'worker_kind' in request.fixturenames \
                else 'cworker'
        if password is None:
            password = dict(master.worker_creds).get(name)
            if password is None:
                raise ValueError(f'worker {name!r} is not configured on {master!r}')
        if kind == 'cworker' and 'binary' not in kw:
            kw['binary'] = request.getfixturevalue('cworker_bin')
        basedir = tmp_path / f'{kind}-{name}-{len(started)}'
        basedir.mkdir()
        w = bbmaster.make_worker(kind, str(basedir), master, name, password, **kw)
        started.append(w)
        if start:
            w.start()
        return w

    yield factory

    if _failed(request):
        for w in started:
            print(f'\n===== {w.name} {w.worker_name} log ({w.logfile}) =====\n{w.log_text()[-6000:]}')
        for m in {id(w.master): w.master for w in started}.values():
            print(f'\n===== master log ({m.twistd_log}) =====\n{m.log_tail(6000)}')
    for w in started:
        w.stop()
    for w in started:
        m = w.master
        if m.running():
            try:
                m.wait_worker_disconnected(w.worker_name, timeout=15)
            except bbmaster.HarnessError:
                pass


@pytest.fixture
def proc_marker():
    """A unique marker string for tagging test processes (command line or step env);
    any tagged process still alive at teardown is SIGKILLed (clean-up, not an assertion)."""
    marker = bbmaster.unique_marker()
    yield marker
    bbmaster.kill_processes(marker)
