"""Training: :mod:`.loop` (``fit``, the one loop), :mod:`.parallel` (single process or a
DDP replica) and :mod:`.distributed` (the process group of a ``torchrun`` job)."""
