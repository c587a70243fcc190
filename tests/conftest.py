"""Shared fixtures: the real-data path (skips when absent)."""

from __future__ import annotations

import pytest
from _bars import require_real_data


@pytest.fixture
def real_data_path():
    return require_real_data()


def pytest_sessionstart(session):
    # torch's first multi-threaded float64 exp in a process sometimes runs one chunk through a less
    # accurate path (3.3e-9 relative; seen with torch 2.13 on 2 threads, later calls exact). Tests compare
    # our kernels with float64 references built on torch.exp, so that first call happens here.
    import torch

    torch.exp(torch.randn(1 << 20, dtype=torch.float64))
