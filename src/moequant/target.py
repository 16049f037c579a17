"""The target: the mlx-lm model class a checkpoint converts into, built lazily from its config.

moequant does not re-implement architectures. It resolves config aliases so mlx-lm's ModelArgs
sees the names it expects, and builds the model without evaluating any weight (mlx is lazy), so
the module tree can be planned before a byte of tensor data is read.
"""

from __future__ import annotations

import copy
import inspect
import logging

import mlx.nn as nn

from .errors import CheckpointError
from .families import CONFIG_ALIASES, PLAIN_ROPE_TYPES

log = logging.getLogger(__name__)

_MISSING = object()


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def model_classes(config: dict):
    """(Model, ModelArgs) from mlx-lm for config["model_type"], or a one-line error."""
    from mlx_lm.utils import _get_classes

    try:
        return _get_classes(config)
    except ValueError:
        import mlx_lm

        raise CheckpointError(
            f"config.json: model_type {config['model_type']!r} is not supported by mlx-lm "
            f"{mlx_lm.__version__}; expected a model_type with a module in mlx_lm.models"
        ) from None


def resolve_config(config: dict) -> tuple[dict, list[str]]:
    """The config with aliased keys filled in for the target ModelArgs, and one note per fill."""
    resolved = copy.deepcopy(config)
    _, args_class = model_classes(config)
    takes = inspect.signature(args_class).parameters
    notes = []
    for alias in CONFIG_ALIASES:
        if alias.key in resolved or alias.key not in takes:
            continue
        for source in alias.sources:
            value = _lookup(resolved, source)
            if value is not _MISSING:
                resolved[alias.key] = value
                notes.append(f"{alias.key} = {value!r} (from {source}, {alias.note})")
                break
    rope = resolved.get("rope_parameters")
    if isinstance(rope, dict) and "rope_scaling" in takes and not resolved.get("rope_scaling"):
        if rope.get("rope_type", rope.get("type")) not in PLAIN_ROPE_TYPES:
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            scaling.setdefault("type", scaling.get("rope_type"))
            resolved["rope_scaling"] = scaling
            notes.append(f"rope_scaling = {scaling!r} (from rope_parameters, transformers 5)")
    for note in notes:
        log.info("config: %s", note)
    return resolved, notes


def build_model(config: dict) -> nn.Module:
    """The mlx-lm model for an already resolved config; its weights stay lazy (never evaluated)."""
    model_class, args_class = model_classes(config)
    try:
        return model_class(args_class.from_dict(config))
    except TypeError as e:
        raise CheckpointError(f"config.json: mlx-lm's {args_class.__module__}.ModelArgs rejects it ({e})") from None
