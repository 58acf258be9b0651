"""tests/cross reuses the fixtures and hooks of tests/integration/conftest.py (master_factory,
worker_factory, cworker_bin, the failure-report hook), loaded under another module name."""

import importlib.util
import os
import sys

_INTEGRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'integration')
sys.path.insert(0, _INTEGRATION)
_spec = importlib.util.spec_from_file_location('cw_integration_conftest',
                                               os.path.join(_INTEGRATION, 'conftest.py'))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
globals().update({k: v for k, v in vars(_mod).items() if not k.startswith('__')})

_integration_configure = _mod.pytest_configure


def pytest_configure(config):
    _integration_configure(config)
    config.addinivalue_line(
        'markers', 'over4gib: a FileUpload past 4 GiB (about a minute under qemu); '
        'scripts/check-cross runs it for the 32-bit target only')
