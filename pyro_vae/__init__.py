"""pyro_vae: variational autoencoders as Pyro probabilistic programs.

A :class:`VAE` is a ``PyroModule`` whose ``model`` is the prior over z and the decoder
likelihood, and whose ``guide`` is the encoder's amortized Normal(mu(x), sigma(x)).
``encode(x)`` returns mu(x) and sigma(x): one pair per input, the parameters of that
input's approximate posterior q(z|x).

Importing the package changes no Pyro setting and no other global state. Pyro's own
``SVI(vae.model, vae.guide, pyro.optim.Adam(...), Trace_ELBO())`` trains a VAE, and
:func:`fit` is the fast path beside it.
"""

from __future__ import annotations

from .inference.bounds import elbo_per_datum, iwae_per_datum, log_weight_terms, log_weights

from .inference.gaps import InferenceGaps, LogMarginal, PerPointFit, fit_local_gaussians, inference_gaps, log_marginal, refine_per_point
from .model.build import GUIDES, LIKELIHOODS, PRIORS, build_vae
from .runs.checkpoint import load, load_run
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data.datasets import Dataset, load_dataset
from .training import distributed  # data-parallel training under torchrun
from .inference.evaluation import Evaluation, evaluate, evaluate_elbo
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    TrainingDivergedError,
)
from .model.guides import DiagonalNormalGuide, FlowGuide, FullCovarianceGuide, Guide, LowRankGuide
from .model.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
)
from .model.nn import MLP
from .inference.objectives import IWAE, OBJECTIVES, Objective, TraceELBO, TraceMeanFieldELBO
from .model.priors import FlowPrior, LearnedNormalPrior, MixturePrior, Prior, StandardNormalPrior, VampPrior
from .runs.evaluate import evaluate_run
from .runs.train import RunResult, resume_run, train_run
from .training.loop import EpochRecord, fit
from .model.vae import VAE

__version__ = "0.1.0"

__all__ = [
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
    "Objective",
    "TraceELBO",
    "TraceMeanFieldELBO",
    "IWAE",
    "OBJECTIVES",
    "PerPointFit",
    "refine_per_point",
    "PRIORS",
    "GUIDES",
    "LIKELIHOODS",
    "build_vae",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "Dataset",
    "load_dataset",
    "fit",
    "distributed",
    "evaluate_elbo",
    "EpochRecord",
    "log_weights",
    "log_weight_terms",
    "evaluate",
    "Evaluation",
    "elbo_per_datum",
    "iwae_per_datum",
    "load",
    "load_run",
    "train_run",
    "resume_run",
    "evaluate_run",
    "RunResult",
    "PyroVAEError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "TrainingDivergedError",
    "InferenceGaps",
    "LogMarginal",
    "fit_local_gaussians",
    "inference_gaps",
    "log_marginal",
    "__version__",
]

# ArviZ takes a second or two to import, which every CLI call would pay: the posterior
# tools (pyro_vae.posterior.samplers, the one module that imports it) load on first use.
_LAZY = {
    "guide_posterior": "posterior.samplers",
    "exact_posterior": "posterior.samplers",
    "importance_posterior": "posterior.samplers",
    "compare_posteriors": "posterior.compare",
    "gaussian_kl": "posterior.compare",
    "Inspection": "runs.inspect",
    "inspect_points": "runs.inspect",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
