"""What an already MLX-quantized checkpoint stores per module, read from tensor shapes, and whether
its config.json says the same. Catches the per-path override mismatches that crash runtimes."""

from __future__ import annotations

from dataclasses import dataclass

import logging

from .checkpoint import FLOAT_DTYPES, Checkpoint
from .formats import Mode, Quant, infer_quant
from .names import aux_spellings
from .plan import Module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    path: str
    shape: tuple[int, ...]  # the float weight shape the model class expects
    stored: Quant | str  # Quant read from the tensors, or the float dtype
    config: Quant | None  # what config.json says (None: not quantized)
    listed: bool  # config.json has a per-path entry for it
    problem: str  # "" when config, tensors and the mlx-lm module agree
    mismatch: bool  # the problem is config vs tensors (else: a listed module without to_quantized)
    stale: bool = False  # a quantized entry for a module stored float that cannot be quantized: the tensors decide

    @property
    def quant(self) -> Quant | None:
        return self.stored if isinstance(self.stored, Quant) else None


def _aux(ckpt: Checkpoint, path: str, name: str):
    """`path`'s aux tensor `name` (".scales") under any of its spellings (names.AUX_RENAMES)."""
    return next((ckpt.tensors[f"{path}{s}"] for s in aux_spellings(name) if f"{path}{s}" in ckpt.tensors), None)


def _from_tensors(ckpt: Checkpoint, path: str, n_in: int) -> Quant | str:
    weight, scales = ckpt.tensors[f"{path}.weight"], _aux(ckpt, path, ".scales")
    if scales is None:
        return weight.dtype
    return infer_quant(weight.shape[-1], scales.shape[-1], scales.dtype == "U8", n_in,
                       _aux(ckpt, path, ".global_scale") is not None)


def _from_config(quantization: dict, path: str) -> Quant | None:
    entry = quantization.get(path, quantization)
    if entry is False:
        return None
    # a per-path object without "mode" means affine (what to_quantized defaults to), whatever the global
    mode = entry.get("mode", "affine") if path in quantization else quantization.get("mode", "affine")
    return Quant(Mode(mode), entry["bits"], entry["group_size"], bool(entry.get("global_scale", False)))


def read_stored(ckpt: Checkpoint, modules: list[Module], quantization: dict) -> list[Stored]:
    """One row per module SRC stores a weight for, from tensor shapes and config.json side by side."""
    rows = []
    for m in modules:
        if f"{m.path}.weight" not in ckpt.tensors:
            continue
        stored, problem = _from_tensors(ckpt, m.path, m.shape[-1]), ""
        # mlx-lm's loader applies listed paths, and infers unlisted ones from their scales
        said = _from_config(quantization, m.path) if m.path in quantization or isinstance(stored, Quant) else None
        mismatch = said != stored if isinstance(stored, Quant) else said is not None
        # a quantized entry for a module that cannot be quantized, stored float in its own shape
        # (nemotron_h's MoEGate): the entry is stale; the tensors say what the module is
        stale = mismatch and not m.quantizable and stored in FLOAT_DTYPES and \
            tuple(ckpt.tensors[f"{m.path}.weight"].shape) == tuple(m.shape)
        if stale:
            mismatch = False
            problem = (f"config.json says {said}, but it is stored {stored} and mlx-lm's module has no to_quantized "
                       "(a stale entry: the loader crashes on it)")
        elif mismatch:
            problem = f"config.json says {said or 'not quantized'}; its tensors say {stored}"
        elif not m.quantizable and isinstance(quantization.get(m.path), dict):
            problem = "config.json lists it, but mlx-lm's module has no to_quantized (the loader crashes)"
        rows.append(Stored(m.path, m.shape, stored, said, m.path in quantization, problem, mismatch, stale))
    return rows


def stale_notes(rows: list[Stored]) -> list[str]:
    """One plan note (and warning line) per stale per-path entry: read as the tensors store it."""
    notes = [f"config.json: quantization[{r.path!r}] is stale: it says {r.config}, but the module is stored "
             f"{r.stored} and mlx-lm's module has no to_quantized; read as stored ({r.stored}), entry not written"
             for r in rows if r.stale]
    for note in notes:
        log.warning("%s", note, extra={"notice": True})  # the CLI prints it after its summary line
    return notes
