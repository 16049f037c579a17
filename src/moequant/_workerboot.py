"""Imported once by procpool's forkserver, before any worker is forked from it: mlx and
moequant's conversion modules, with mlx-lm's package present but its `__init__` not run (it
imports transformers and torch, which no worker needs: target.lazy_mlx_lm). Never imported by the
main process."""

import sys

# convert imports target and quantize; not numpy (fpquant, gptq, calibrate): the workers that need it import it
# (procpool._setup, quantize's packers), and the forkserver, whose imports every first fork waits for, is the
# sooner up (0.08-0.12 s of CPU on the 2-core VM)
from . import convert, procpool  # noqa: F401


def _silent(kind, value, traceback) -> None:
    """A worker that fails before its task starts (forked while the run is being interrupted, its
    parent's queues already gone) dies quietly: the parent says what happened, in one line
    (interrupted, or procpool's "worker exited with … before finishing its group")."""


sys.excepthook = _silent  # the forkserver reports a failed fork through it; every worker inherits it
