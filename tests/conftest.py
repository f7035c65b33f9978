from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on 2 shared cores it is several times faster than two threads fighting, and
    it matches the single-threaded training subprocesses that some tests compare against."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
