"""Shared fixtures: the real-data path (skips when absent)."""

from __future__ import annotations

import pytest
from _bars import require_real_data


@pytest.fixture
def real_data_path():
    return require_real_data()
