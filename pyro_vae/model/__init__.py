"""The generative model and the amortized guide, as modules: no file I/O, no printing.

- :mod:`.nn`: networks (x -> features, z -> features), the scale transform;
- :mod:`.priors`: p(z); :mod:`.guides`: q(z|x) heads; :mod:`.likelihoods`: p(x|z) heads;
- :mod:`.vae`: the VAE, whose ``model`` and ``guide`` are its Pyro programs;
- :mod:`.build`: the one ``{name: class}`` table per component, and ``build_vae``.
"""
