import os

import pytest
import torch

# One intra-op thread by default: the tests' tensors are small, and with two threads on a 2-core
# machine that is busy with anything else, OpenMP barriers make steps 5-10x slower. Override with
# MMC2F_TEST_THREADS. Subprocesses (the end-to-end tool runs) choose their own.
torch.set_num_threads(int(os.environ.get('MMC2F_TEST_THREADS', '1')))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO_ROOT
