"""Imported once by procpool's forkserver, before any worker is forked from it: mlx, numpy and
moequant's conversion modules, with mlx-lm's package present but its `__init__` not run (it
imports transformers and torch, which no worker needs). Never imported by the main process."""

from .procpool import install_bare_mlx_lm

install_bare_mlx_lm()

from . import convert, fpquant, procpool  # noqa: E402,F401  (imported for the forked workers)
