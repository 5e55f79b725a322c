"""Shared test set-up: seeded, validated, and no global Pyro state left behind."""

from __future__ import annotations

import os

# The models in the tests are tiny: one thread is faster than two fighting over a busy
# 2-core machine, and subprocesses (examples, CLI, torchrun) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pyro_vae  # noqa: F401, E402  (imported before any test: it must change no setting)

torch.set_num_threads(1)

pyro.enable_validation(True)
#: Pyro's settings as every test starts: no test (and no library call) may change them.
_PYRO_SETTINGS = dict(pyro.settings.get())


@pytest.fixture(autouse=True)
def _seeded_and_clean(request):
    """Seed every test, enable Pyro's validation, and check no global state leaks.

    The library's own computations (``fit``, the bounds, evaluation, inspection) keep
    parameters inside the modules; a test that leaves something in Pyro's global param
    store has found a leak, unless it is marked ``uses_param_store`` (it runs Pyro's
    own tools, SVI or ``poutine.trace``, in Pyro's default mode, which registers
    parameters by design). Every test must leave Pyro's settings as it found them.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    leaked = list(pyro.get_param_store().keys())
    pyro.clear_param_store()
    settings = dict(pyro.settings.get())
    pyro.settings.set(**_PYRO_SETTINGS)
    assert settings == _PYRO_SETTINGS, f"Pyro settings changed: {settings} (were {_PYRO_SETTINGS})"
    if request.node.get_closest_marker("uses_param_store") is None:
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
