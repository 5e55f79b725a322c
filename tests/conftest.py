"""Shared test set-up: seeded, validated, and no global Pyro state left behind."""

from __future__ import annotations

import os

# The models in the tests are tiny: one thread is faster than two fighting over a busy
# 2-core machine, and subprocesses (examples, CLI, torchrun) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pyro_vae  # noqa: F401, E402  (sets module_local_params)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded_and_clean():
    """Seed every test, enable Pyro's validation, and check the param store stays empty.

    The library keeps parameters inside modules (``module_local_params``); a test
    that leaves something in Pyro's global param store has found a leak.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    leaked = list(pyro.get_param_store().keys())
    pyro.clear_param_store()
    assert not leaked, f"parameters leaked into Pyro's global param store: {leaked}"


@pytest.fixture
def float64():
    """Run a test in float64 where precision matters."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def tiny_binary() -> torch.Tensor:
    """64 binary rows of 6 features with structure (two prototypes plus noise)."""
    g = torch.Generator().manual_seed(1)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    which = torch.randint(0, 2, (64,), generator=g)
    flip = torch.rand(64, 6, generator=g) < 0.1
    return (protos[which] + flip.float()) % 2
