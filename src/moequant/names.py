"""Tensor-name knowledge: aux-tensor spellings and how keys group into decoder layers. Pure str -> str."""

from __future__ import annotations

import re

# Other spellings of the aux tensors a quantized weight carries, renamed to the MLX sibling
# plural convention that mlx-lm loads. One row per convention; first match wins and rows are
# disjoint (a test checks that).
AUX_RENAMES: tuple[tuple[str, str], ...] = (
    (".weight.scale", ".scales"),  # dot-child singular (Ollama-created blobs)
    (".weight.bias", ".biases"),  # dot-child singular (Ollama-created blobs)
)

# decoder layers: `….layers.N.`, and DBRX's `transformer.blocks.N.` (at the top only: vision towers'
# `….blocks.N.` are not decoder layers)
_LAYER = re.compile(r"^(?P<prefix>(?:.+\.)?layers|transformer\.blocks)\.(?P<index>\d+)\.")


def aux_spellings(name: str) -> tuple[str, ...]:
    """Every spelling of the canonical aux suffix `name` (".scales"): itself, then AUX_RENAMES'."""
    return (name, *(suffix for suffix, replacement in AUX_RENAMES if replacement == name))


def canonical_name(key: str) -> str:
    """The name moequant uses for `key` (aux tensors renamed to `P.scales` / `P.biases`)."""
    for suffix, replacement in AUX_RENAMES:
        if key.endswith(suffix):
            return key[: -len(suffix)] + replacement
    return key


def renamed(key: str, rows: tuple[tuple[str, str], ...], targets: set[str] | frozenset[str]) -> str:
    """`key` under the first (regex, replacement) row whose result is in `targets` while `key` is
    not (a registry row's tensor_renames); else `key` itself."""
    if key in targets:
        return key
    for pattern, replacement in rows:
        new = re.sub(pattern, replacement, key)
        if new != key and new in targets:
            return new
    return key


def layer_of(key: str) -> tuple[str, int] | None:
    """(`model.layers`, 3) for `model.layers.3.mlp.gate.weight` (`transformer.blocks`, 3 for DBRX's
    `transformer.blocks.3.…`); None outside decoder layers."""
    m = _LAYER.match(key)
    return (m["prefix"], int(m["index"])) if m else None


def module_path(key: str) -> str:
    """`model.layers.3.mlp.gate` for the tensor key `model.layers.3.mlp.gate.weight`."""
    return key.rsplit(".", 1)[0]
