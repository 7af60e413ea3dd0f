"""The scorer's tests run torch on one thread: the tiny models gain nothing from more, and on a shared 2-core
machine several threads spin against each other (measured: 10x slower under load)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
