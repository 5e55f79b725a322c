"""inference: see the package docstring of pyro_vae."""
