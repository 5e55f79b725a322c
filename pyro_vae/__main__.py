"""``python -m pyro_vae`` runs the command line."""

from .cli import main

raise SystemExit(main())
