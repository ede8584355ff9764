import os

import pytest
import torch

# 2-core CI machine: keep intra-op threads small and results repeatable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO_ROOT
