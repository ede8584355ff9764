import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One intra-op thread by default: the tests' tensors are small, and with two threads on a 2-core
# machine that is busy with anything else, OpenMP barriers make steps 5-10x slower. Override with
# MMC2F_TEST_THREADS. Subprocesses (the end-to-end tool runs) choose their own.
TEST_THREADS = int(os.environ.get('MMC2F_TEST_THREADS', '1'))


@pytest.fixture(autouse=True)
def _test_threads():
    """Every test starts with ``TEST_THREADS`` intra-op threads and leaves the setting as found."""
    n = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def repo_root():
    return REPO_ROOT
