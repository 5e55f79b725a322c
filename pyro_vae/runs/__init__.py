"""Run directories and what each CLI subcommand does, callable from Python.

- :mod:`.train`: ``train_run`` / ``resume_run`` (data -> model -> fit -> run directory);
- :mod:`.evaluate`: ``evaluate_run``; :mod:`.export`: ``encode_run``, ``sample_run``;
- :mod:`.inspect`: posterior inspection of chosen rows; :mod:`.checkpoint`: config,
  weights and training state on disk; :mod:`.figures`: a run's figures;
  :mod:`.outputs`: checks on output paths.
"""
