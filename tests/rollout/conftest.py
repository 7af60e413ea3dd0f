"""The rollout tests run tiny models: one torch thread is much faster than two on a shared 2-core box
(thread oversubscription made a 2-layer forward pass ~30x slower), so they use one and restore the rest."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
