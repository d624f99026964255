"""Shared test setup: Triton's interpreter when there is no GPU (set before anything imports
triton), the record of its launches for tests/test_triton_sm90.py (which runs last), fixed seeds,
and the `gpu` mark for tests that need a CUDA device."""
import os
import random
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Generated inputs are the same on every run, so a failure (on CI too) repeats; `pytest
# --hypothesis-seed=k` or PYAUDIOK_TEST_SEED=k draws other sets (pytest_configure). No example
# database: nothing is written into the checkout. Loaded before the test modules are imported, whose
# @settings inherit it.
hypothesis_settings.register_profile("pyaudiok", derandomize=True, database=None, deadline=None)
hypothesis_settings.register_profile("pyaudiok-seeded", derandomize=False, database=None, deadline=None)
hypothesis_settings.load_profile("pyaudiok")

from . import triton_launches  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    triton_launches.install()

from .harness import threads  # noqa: E402  (after the launch record is installed)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    # Derandomised runs ignore --hypothesis-seed; a seed asked for turns derandomisation off (a
    # PYAUDIOK_TEST_SEED without --hypothesis-seed then draws afresh, and a failure prints its seed).
    if config.getoption("hypothesis_seed", None) is not None or int(os.environ.get("PYAUDIOK_TEST_SEED", "0")):
        hypothesis_settings.load_profile("pyaudiok-seeded")


def pytest_collection_modifyitems(config, items):
    # The GPU-compile check of the recorded Triton launches needs every other test to have run.
    items.sort(key=lambda item: item.module.__name__.endswith("test_triton_sm90"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    # A different seed per test, reproducible across runs (Python's str hash is salted per process,
    # so it is not used): a failure repeats. PYAUDIOK_TEST_SEED=k draws a fresh set of inputs.
    seed = (zlib.crc32(request.node.nodeid.encode()) ^ int(os.environ.get("PYAUDIOK_TEST_SEED", "0"))) % 2**31
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def one_thread():
    """Run on one thread: small models only pay synchronisation cost for more (a lot of it on a
    busy machine). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with threads(1):
        yield
