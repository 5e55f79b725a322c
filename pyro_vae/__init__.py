"""pyro_vae: variational autoencoders as Pyro probabilistic programs.

A :class:`VAE` is a ``PyroModule`` whose ``model`` is the prior over z and the decoder
likelihood, and whose ``guide`` is the encoder's amortized Normal(mu(x), sigma(x)).
``encode(x)`` returns mu(x) and sigma(x): one pair per input, the parameters of that
input's approximate posterior q(z|x).

Importing the package changes no Pyro setting and no other global state. Pyro's own
``SVI(vae.model, vae.guide, pyro.optim.Adam(...), Trace_ELBO())`` trains a VAE, and
:func:`fit` is the fast path beside it.

The package is layered; each layer imports only the ones above it in this list:

- ``errors``, ``config``, ``files``, ``plotting``, ``seeding``: the ground floor;
- ``data``: file formats, data sets and splits, per-minibatch transforms;
- ``model``: networks, priors, guides, likelihoods, the VAE (no file I/O);
- ``inference``: the one log-weight path, objectives, evaluation, inference gaps;
- ``training``: the training loop and its data-parallel strategy;
- ``posterior``: q(z|x) beside p(z|x) as ArviZ data (imports ArviZ; loaded on use);
- ``runs``: run directories, checkpoints, figures, what each CLI subcommand does;
- ``cli``: argparse, then a call into ``runs``.

The components also have short namespaces: ``pyro_vae.priors``, ``pyro_vae.guides``,
``pyro_vae.likelihoods``, ``pyro_vae.networks`` and ``pyro_vae.objectives``
(``from pyro_vae.priors import VampPrior`` works).
"""

from __future__ import annotations

import importlib
import sys

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data.datasets import Dataset, load_dataset
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    TrainingDivergedError,
)
from .inference import objectives
from .inference.bounds import (
    elbo_per_datum,
    iwae_per_datum,
    log_weight_terms,
    log_weights,
)
from .inference.evaluation import Evaluation, evaluate, evaluate_elbo
from .inference.gaps import (
    InferenceGaps,
    LogMarginal,
    PerPointFit,
    fit_local_gaussians,
    inference_gaps,
    log_marginal,
    refine_per_point,
)
from .inference.objectives import (
    IWAE,
    OBJECTIVES,
    Objective,
    TraceELBO,
    TraceMeanFieldELBO,
)
from .model import guides, likelihoods, priors
from .model import nn as networks
from .model.build import GUIDES, LIKELIHOODS, PRIORS, build_vae
from .model.guides import (
    DiagonalNormalGuide,
    FlowGuide,
    FullCovarianceGuide,
    Guide,
    LowRankGuide,
)
from .model.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from .model.nn import MLP
from .model.priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
)
from .model.vae import VAE
from .runs.checkpoint import load, load_run
from .runs.evaluate import evaluate_run
from .runs.train import RunResult, resume_run, train_run
from .training import distributed  # the process group of a torchrun job
from .training.loop import EpochRecord, fit

__version__ = "0.1.0"

# The short namespaces are importable modules too: ``from pyro_vae.priors import ...``.
for _alias, _module in {
    "priors": priors,
    "guides": guides,
    "likelihoods": likelihoods,
    "networks": networks,
    "objectives": objectives,
    "distributed": distributed,
}.items():
    sys.modules[f"{__name__}.{_alias}"] = _module
del _alias, _module

__all__ = [
    # the model and its parts
    "VAE",
    "MLP",
    "Prior",
    "StandardNormalPrior",
    "LearnedNormalPrior",
    "MixturePrior",
    "VampPrior",
    "FlowPrior",
    "Guide",
    "DiagonalNormalGuide",
    "FullCovarianceGuide",
    "LowRankGuide",
    "FlowGuide",
    "Likelihood",
    "BernoulliLikelihood",
    "NormalLikelihood",
    "ContinuousBernoulliLikelihood",
    "PoissonLikelihood",
    "NegativeBinomialLikelihood",
    "PRIORS",
    "GUIDES",
    "LIKELIHOODS",
    "build_vae",
    # objectives, bounds, evaluation, gaps
    "Objective",
    "TraceELBO",
    "TraceMeanFieldELBO",
    "IWAE",
    "OBJECTIVES",
    "log_weights",
    "log_weight_terms",
    "elbo_per_datum",
    "iwae_per_datum",
    "evaluate",
    "evaluate_elbo",
    "Evaluation",
    "InferenceGaps",
    "LogMarginal",
    "PerPointFit",
    "fit_local_gaussians",
    "inference_gaps",
    "log_marginal",
    "refine_per_point",
    # training, data, runs
    "fit",
    "EpochRecord",
    "distributed",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "Dataset",
    "load_dataset",
    "load",
    "load_run",
    "train_run",
    "resume_run",
    "evaluate_run",
    "RunResult",
    # errors
    "PyroVAEError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "TrainingDivergedError",
    # namespaces
    "priors",
    "guides",
    "likelihoods",
    "networks",
    "objectives",
    "__version__",
]

# ArviZ takes a second or two to import, which every CLI call would pay: the posterior
# tools (pyro_vae.posterior, the one subpackage that imports it) load on first use.
_LAZY = {
    "guide_posterior": "posterior.samplers",
    "exact_posterior": "posterior.samplers",
    "importance_posterior": "posterior.samplers",
    "ImportanceSamplingWarning": "posterior.samplers",
    "compare_posteriors": "posterior.compare",
    "gaussian_kl": "posterior.compare",
    "write_netcdf": "posterior.schema",
    "Inspection": "runs.inspect",
    "inspect_points": "runs.inspect",
}
__all__ += list(_LAZY)


def __getattr__(name: str):  # noqa: ANN202 - module __getattr__ (PEP 562)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
