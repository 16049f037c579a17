"""What transformers' config says, in the names mlx-lm's ModelArgs reads: one table of renames.

transformers 5 renamed keys that mlx-lm's models were written against (the published releases'
names), moved some under `rope_parameters`, and derives others in code (`head_dim` =
`hidden_size // num_attention_heads` when the config has none). After target.fill_defaults has
filled every key config.json left out with transformers' own defaults, each Rename below fills
one ModelArgs key from transformers' value, so that a value the source states (or transformers
reads as its default) reaches ModelArgs instead of ModelArgs' own default.

A Rename only fills a key the config lacks and the target ModelArgs takes; `convert` names a
function of CONVERTERS that turns transformers' value (and the config) into mlx-lm's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MISSING = object()


@dataclass(frozen=True)
class Rename:
    key: str  # what mlx-lm's ModelArgs reads
    source: str  # transformers' key (dotted for nested: rope_parameters.rope_theta); "" = the whole config
    convert: str = ""  # a key of CONVERTERS, "" = the value as it is


CONVERTERS: dict[str, Callable[[Any, dict], Any]] = {}


def converter(name: str):
    def register(fn):
        CONVERTERS[name] = fn
        return fn
    return register


@converter("head_dim")
def _head_dim(config: dict, _: dict) -> int | None:
    """transformers' attention modules: getattr(config, "head_dim", hidden_size // num_attention_heads)."""
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return config["hidden_size"] // config["num_attention_heads"]
    return None


# Renames every model_type gets (tried in order; the first source found wins).
COMMON: tuple[Rename, ...] = (
    Rename("head_dim", "", "head_dim"),
)

# model_type (mlx-lm's) -> its renames, in alphabetical order of model_type.
RENAMES: dict[str, tuple[Rename, ...]] = {
}


def lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def apply_renames(resolved: dict, takes, model_type: str, where: str = "") -> list[str]:
    """Fills (in place) the keys a ModelArgs taking `takes` lacks from their transformers
    spelling; one note per key filled."""
    notes = []
    for rename in RENAMES.get(model_type, ()) + COMMON:
        if rename.key in resolved or rename.key not in takes:
            continue
        value = resolved if rename.source == "" else lookup(resolved, rename.source)
        if value is MISSING:
            continue
        if rename.convert:
            value = CONVERTERS[rename.convert](value, resolved)
            if value is None:
                continue
        resolved[rename.key] = value
        notes.append(f"{where}{rename.key} = {value!r} (from {where}{rename.source or rename.convert})")
    return notes
