"""Imported once by procpool's forkserver, before any worker is forked from it: mlx, numpy and
moequant's conversion modules, with mlx-lm's package present but its `__init__` not run (it
imports transformers and torch, which no worker needs: target.lazy_mlx_lm). Never imported by the
main process."""

import sys

from . import convert, fpquant, procpool  # noqa: F401  (imported for the forked workers; convert imports target)


def _silent(kind, value, traceback) -> None:
    """A worker that fails before its task starts (forked while the run is being interrupted, its
    parent's queues already gone) dies quietly: the parent says what happened, in one line
    (interrupted, or procpool's "worker exited with … before finishing its group")."""


sys.excepthook = _silent  # the forkserver reports a failed fork through it; every worker inherits it
