import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def legacy_seed():
    """The seed's legacy module (loaded by path: tests are not a package)."""
    spec = importlib.util.spec_from_file_location("legacy_seed", Path(__file__).with_name("legacy_seed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
