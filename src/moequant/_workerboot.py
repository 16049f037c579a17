"""Imported once by procpool's forkserver, before any worker is forked from it: mlx, numpy and
moequant's conversion modules, with mlx-lm's package present but its `__init__` not run (it
imports transformers and torch, which no worker needs: target.lazy_mlx_lm). Never imported by the
main process."""

import sys

# what the workers use, imported once here (the main process imports gptq, calibrate and fpquant only
# when its options need them): convert imports target; quantize's packers import fpquant, gptq, calibrate
from . import calibrate, convert, fpquant, gptq, procpool  # noqa: F401


def _silent(kind, value, traceback) -> None:
    """A worker that fails before its task starts (forked while the run is being interrupted, its
    parent's queues already gone) dies quietly: the parent says what happened, in one line
    (interrupted, or procpool's "worker exited with … before finishing its group")."""


sys.excepthook = _silent  # the forkserver reports a failed fork through it; every worker inherits it
