"""Quantize one group of tensors through the mlx-lm module that holds them, as the plan says.

The weights go into the target model's own modules and `mlx.nn.quantize` runs with a class
predicate that reads the plan, so the output is exactly what mlx-lm's loader rebuilds.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .checkpoint import Stacked
from .errors import LayoutError
from .names import module_path
from .plan import DTYPES, Plan
from .fpquant import MODES as FP_MODES
from .fpquant import quantize_fp, quantize_fp_experts
from .gptq import quantize_gptq
from .rounding import quantize_searched
from .surgery import module_at


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def check_weights(weights: dict[str, mx.array], expected: dict[str, tuple[int, ...]], seen: set[str],
                  model_type: str) -> None:
    """Every (normalized) source tensor is a parameter of the target model, with its shape, once."""
    for key, value in weights.items():
        if key not in expected:
            raise LayoutError(
                f"{key}: {tuple(value.shape)} {value.dtype} matches no parameter of mlx-lm's {model_type} "
                f"model and no known layout or aux name; expected e.g. {_nearest(key, expected)}"
            )
        if tuple(value.shape) != expected[key]:
            raise LayoutError(f"{key}: shape {tuple(value.shape)}; expected {expected[key]} from config.json")
        if key in seen:
            raise LayoutError(f"{key}: given twice in SRC (after layout conversion); expected once")
    seen.update(weights)


def check_complete(expected: dict[str, tuple[int, ...]], seen: set[str], model_type: str) -> None:
    if missing := sorted(set(expected) - seen):
        raise LayoutError(
            f"{missing[0]}: mlx-lm's {model_type} model needs this tensor; SRC has none "
            f"({len(missing)} missing in all)"
        )


class Quantizer:
    """Holds the lazily built target model; `run` loads, quantizes and returns one group."""

    def __init__(self, model: nn.Module, plan: Plan, compute: bool = True, moments: dict[str, mx.array] | None = None):
        """`compute=False` (a dry run) leaves every output lazy: shapes and dtypes, no data read.
        `moments`: E[x xᵀ] of the inputs per module path, for --rounding gptq."""
        self.model = model
        self.plan = plan
        self.compute = compute
        self.moments = moments or {}
        self.keep_dtype = getattr(model, "cast_predicate", lambda key: True)

    def run(self, weights: dict[str, mx.array], parts: dict[str, list[mx.array]] | None = None
            ) -> dict[str, mx.array | Stacked]:
        """Quantized output tensors (lazy) for one group of checked, stacked float weights.

        `parts`: for some stacked weights, the per-expert tensors they were stacked from. With plain
        rounding such an expert stack is quantized expert by expert — `mx.quantize` packs each row
        on its own, so the bytes are the same — and comes out as Stacked tensors: the stack is
        never built. Its entry in `weights` (the caller's dict) is replaced by a lazy stand-in of
        the same shape, so nothing holds the parts once each is quantized (affine: when the writer
        evaluates it; fp modes: here, one expert at a time)."""
        dtype, rows = DTYPES[self.plan.options.dtype], self.plan.by_path

        def cast(key, value):  # float tensors to the output dtype, except packed modules copied as stored
            row = rows.get(module_path(key))
            if row is not None and row.as_stored or not mx.issubdtype(value.dtype, mx.floating):
                return value
            return value.astype(dtype) if self.keep_dtype(key) else value

        parts = parts if parts is not None else {}
        for key in list(parts):  # in place: the caller's dicts are these
            row = rows.get(module_path(key))
            if (self.compute and self.plan.options.rounding == "plain" and key.endswith(".weight") and key in weights
                    and row is not None and row.quant is not None and not row.as_stored):
                weights[key] = mx.zeros(weights[key].shape, weights[key].dtype)  # never evaluated
            else:
                del parts[key]
        weights = {k: cast(k, v) for k, v in weights.items()}
        self.model.load_weights(list(weights.items()), strict=False)
        paths = sorted({module_path(k) for k in weights})
        todo = {p for p in paths if p in rows and rows[p].quant is not None and not rows[p].as_stored}

        def predicate(path, module):
            return rows[path].quant.to_dict() if path in todo else False

        if todo:
            nn.quantize(self.model, class_predicate=predicate)
            for path in sorted(todo):
                module, quant = module_at(self.model, path), rows[path].quant
                if f"{path}.weight" in parts:
                    continue  # expert by expert, below
                if self.plan.options.rounding == "mse":
                    _search_rounding(module, weights[f"{path}.weight"], quant)
                elif self.compute and quant.mode.value == "affine" and path in self.moments:  # --rounding gptq
                    module.weight, module.scales, module.biases = quantize_gptq(
                        weights[f"{path}.weight"], self.moments[path], quant)
                elif self.compute and quant.mode.value in FP_MODES:
                    # mlx 0.32 has no CPU kernel for the fp modes: mx.quantize runs ~30x slower and
                    # needs 20-40x the input in temporary memory; fpquant is bit-identical to it
                    weight = weights.pop(f"{path}.weight")
                    if quant.global_scale:  # mlx-lm's _quantize_experts: one scale per expert
                        module.weight, module.scales, module.global_scale = quantize_fp_experts(weight)
                    else:
                        module.weight, module.scales = quantize_fp(weight, quant.mode.value)
        out = {}
        for path in paths:
            module = module_at(self.model, path)
            arrays = {k: v for k, v in module.items() if isinstance(v, mx.array) and not k.startswith("_")}
            out.update((f"{path}.{k}", v) for k, v in arrays.items())
            module.update({k: mx.array([]) for k in arrays})  # release: the writer holds them now
        for key in sorted(parts):
            path, quant = module_path(key), rows[module_path(key)].quant
            by_expert = parts.pop(key)
            names = ("weight", "scales", "biases" if quant.mode.value == "affine" else "global_scale")
            packed = []
            for e in range(len(by_expert)):
                part, by_expert[e] = by_expert[e], None  # fp modes compute now: free each expert after
                packed.append(_quantize_one(cast(key, part), quant))
                del part
            for i, name in enumerate(names[:len(packed[0])]):
                out[f"{path}.{name}"] = Stacked([p[i] for p in packed])
        return out


def _quantize_one(w: mx.array, quant) -> tuple[mx.array, ...]:
    """One expert's (packed, scales[, biases or global scale]) as its module's to_quantized makes
    them: affine lazily by mx.quantize, fp modes now by fpquant (bit-identical to mx.quantize)."""
    if quant.mode.value == "affine":
        return tuple(mx.quantize(w, quant.group_size, quant.bits))
    if quant.global_scale:  # mlx-lm's _quantize_experts: each expert its own tensor scale
        packed, scales, gs = quantize_fp_experts(w[None])
        return packed[0], scales[0], gs[0]
    return quantize_fp(w, quant.mode.value)


def _search_rounding(module: nn.Module, weight: mx.array, quant) -> None:
    """Replace a freshly quantized module's packing with the error-minimizing one (same format)."""
    global_scale = module.get("global_scale")
    if global_scale is not None:  # nvfp4 expert stack: each expert with its own tensor scale
        parts = [quantize_searched(weight[e], quant, global_scale[e]) for e in range(weight.shape[0])]
        module.weight, module.scales = mx.stack([p[0] for p in parts]), mx.stack([p[1] for p in parts])
        return
    module.weight, module.scales, biases = quantize_searched(weight, quant)
    if biases is not None:
        module.biases = biases


def _nearest(key: str, keys) -> str:
    import difflib

    return next(iter(difflib.get_close_matches(key, list(keys), n=1, cutoff=0)), "(none)")
