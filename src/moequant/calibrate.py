"""Calibration statistics for `--target-bpw --calib FILE`: per module, the energy E[x_j²] of each
input channel on calibration text, measured on the float model with the real mlx-lm forward.

Expert stacks: every calibration token is sent through every expert (not only the ones its router
picked), so an expert the router rarely or never selects is measured all the same; each expert's
statistics are then weighted by half uniform, half its observed routing frequency.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .errors import CheckpointError
from .verify import _parent_and_key, expert_containers, reference_model

log = logging.getLogger(__name__)


def read_calibration(file: str | Path, length: int = 512, max_sequences: int = 32) -> mx.array:
    """Token batch [n, length] from a file: `.npy` of token ids, or any other file's bytes (the byte
    tokenizer of the trained tiny model: token id = byte value)."""
    path = Path(file)
    try:
        ids = np.load(path).reshape(-1) if path.suffix == ".npy" else np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as e:
        raise CheckpointError(f"--calib {file}: {e.strerror}; expected a text or .npy token file") from None
    n = min(len(ids) // length, max_sequences)
    if n == 0:
        raise CheckpointError(f"--calib {file}: {len(ids)} tokens; expected at least {length}")
    starts = np.linspace(0, len(ids) - length, n).astype(int)
    return mx.array(np.stack([ids[s:s + length] for s in starts]).astype(np.int32))


class _Inputs(nn.Module):
    """Stands in for a module for one forward pass and keeps what it was called with."""

    def __init__(self, inner: nn.Module, seen: list):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_seen", seen)

    def __call__(self, x, *args, **kwargs):
        self._seen.append((x, args[0] if args else kwargs.get("indices")))
        return self.inner(x, *args, **kwargs)


def _squares(x: mx.array) -> mx.array:
    x = x.reshape(-1, x.shape[-1]).astype(mx.float32)
    return (x * x).mean(0)


def channel_energy(src: str | Path, tokens: mx.array, paths: set[str]) -> dict[str, mx.array]:
    """Module path -> E[x_j²] per input channel ([in], or [E, in] for expert stacks), for the
    modules in `paths` that a forward pass reaches (others keep the data-free proxy)."""
    with reference_model(src) as (model, _):
        containers = expert_containers(model)
        watched = {}
        for path, module in model.named_modules():
            if path in paths and isinstance(module, nn.Linear) and not any(path.startswith(c + ".") for c in containers.values()):
                watched[path] = []
        for container in containers.values():
            watched[container] = []
        for path, seen in watched.items():
            parent, key = _parent_and_key(model, path)
            parent[key] = _Inputs(parent[key], seen)
        try:
            mx.eval(model(tokens))
        finally:
            for path in watched:
                parent, key = _parent_and_key(model, path)
                parent[key] = parent[key].inner
        out = {}
        for path, calls in watched.items():
            if not calls:
                continue
            if path not in containers.values():
                out[path] = sum(_squares(x) for x, _ in calls) / len(calls)
                continue
            out.update(_expert_energy(model, path, calls))
        return out


def _expert_energy(model: nn.Module, container: str, calls: list) -> dict[str, mx.array]:
    """Per expert: the projections' inputs on every token (the hidden states for the gate/up
    projections; for down_proj, each expert's own activation), weighted by routing frequency."""
    glu = _parent_and_key(model, container)[0][_parent_and_key(model, container)[1]]
    x = mx.concatenate([c[0].reshape(-1, c[0].shape[-1]) for c in calls]).astype(mx.float32)
    indices = mx.concatenate([c[1].reshape(-1) for c in calls]) if calls[0][1] is not None else None
    n_experts = glu.up_proj.weight.shape[0]
    freq = np.bincount(np.array(indices), minlength=n_experts) / max(indices.size, 1) if indices is not None \
        else np.full(n_experts, 1 / n_experts)
    weight = mx.array(0.5 + 0.5 * n_experts * freq, dtype=mx.float32)[:, None]  # mean 1
    hidden = _squares(x)
    out = {f"{container}.{name}": weight * hidden[None] for name in ("gate_proj", "up_proj")
           if hasattr(glu, name)}
    if hasattr(glu, "down_proj") and hasattr(glu, "up_proj") and hasattr(glu, "gate_proj"):
        act = []
        for e in range(n_experts):
            h = glu.activation(x @ glu.up_proj.weight[e].T, x @ glu.gate_proj.weight[e].T)
            act.append(_squares(h))
        out[f"{container}.down_proj"] = weight * mx.stack(act)
    return out
