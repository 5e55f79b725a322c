"""What is computed from a model and data: bounds, objectives, evaluation, gaps.

- :mod:`.bounds`: the one path from Pyro traces to per-point log-weights (masks and
  scales honoured), the ELBO and IWAE bounds, and the one chunking rule;
- :mod:`.objectives`: training objectives (``Trace_ELBO``, mean-field, IWAE) and their
  name table; :mod:`.traced`: the traced fast path of ``Trace_ELBO``;
- :mod:`.evaluation`: held-out ELBO, log p(x), KL, active units;
- :mod:`.gaps`: per-point Gaussians, log p(x) by importance sampling, inference gaps.
"""
