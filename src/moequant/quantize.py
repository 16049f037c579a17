"""Quantize one group of tensors through the mlx-lm module that holds them, as the plan says.

The weights go into the target model's own modules and `mlx.nn.quantize` runs with a class
predicate that reads the plan, so the output is exactly what mlx-lm's loader rebuilds.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import LayoutError
from .names import module_path
from .plan import DTYPES, Plan


def _module_at(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


class Quantizer:
    """Holds the lazily built target model; `run` loads, quantizes and returns one group."""

    def __init__(self, model: nn.Module, plan: Plan):
        self.model = model
        self.plan = plan
        self.expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
        self.seen: set[str] = set()
        self.keep_dtype = getattr(model, "cast_predicate", lambda key: True)

    def check(self, weights: dict[str, mx.array]) -> None:
        for key, value in weights.items():
            if key not in self.expected:
                raise LayoutError(
                    f"{key}: {tuple(value.shape)} {value.dtype} matches no parameter of mlx-lm's "
                    f"{self.plan.model_type} model and no known layout or aux name; expected e.g. "
                    f"{_nearest(key, self.expected)}"
                )
            if tuple(value.shape) != self.expected[key]:
                raise LayoutError(
                    f"{key}: shape {tuple(value.shape)}; expected {self.expected[key]} from config.json"
                )
            if key in self.seen:
                raise LayoutError(f"{key}: given twice in SRC (after layout conversion); expected once")

    def run(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Quantized output tensors (lazy) for one group of source-ordered, stacked float weights."""
        self.check(weights)
        dtype = DTYPES[self.plan.options.dtype]
        weights = {
            k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and self.keep_dtype(k) else v
            for k, v in weights.items()
        }
        self.seen.update(weights)
        self.model.load_weights(list(weights.items()), strict=False)
        paths = sorted({module_path(k) for k in weights})
        todo = {p for p in paths if p in self.plan.by_path and self.plan.by_path[p].quant is not None}

        def predicate(path, module):
            return self.plan.by_path[path].quant.to_dict() if path in todo else False

        if todo:
            nn.quantize(self.model, class_predicate=predicate)
        out = {}
        for path in paths:
            module = _module_at(self.model, path)
            arrays = {k: v for k, v in module.items() if isinstance(v, mx.array) and not k.startswith("_")}
            out.update((f"{path}.{k}", v) for k, v in arrays.items())
            module.update({k: mx.array([]) for k in arrays})  # release: the writer holds them now
        return out

    def missing(self) -> list[str]:
        return sorted(set(self.expected) - self.seen)


def _nearest(key: str, keys) -> str:
    import difflib

    return next(iter(difflib.get_close_matches(key, list(keys), n=1, cutoff=0)), "(none)")
