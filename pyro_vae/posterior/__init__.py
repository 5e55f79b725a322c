"""The posterior of each input: q(z|x) beside p(z|x), as ArviZ data.

:mod:`.schema` builds ArviZ's groups (the one place ArviZ is imported),
:mod:`.samplers` draws from the guide, NUTS and importance resampling, :mod:`.compare`
sets them side by side, :mod:`.plots` and :mod:`.clouds` draw them. Importing this
package imports ArviZ (a second or two); ``import pyro_vae`` does not.
"""

from .compare import compare_posteriors, gaussian_kl
from .samplers import (
    ImportanceSamplingWarning,
    exact_posterior,
    guide_posterior,
    importance_posterior,
)
from .schema import to_arviz, write_netcdf

__all__ = [
    "guide_posterior",
    "exact_posterior",
    "importance_posterior",
    "ImportanceSamplingWarning",
    "compare_posteriors",
    "gaussian_kl",
    "to_arviz",
    "write_netcdf",
]
