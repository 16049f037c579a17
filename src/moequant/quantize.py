"""Quantize one group of tensors through the mlx-lm module that holds them, as the plan says.

The weights go into the target model's own modules and `mlx.nn.quantize` runs with a class
predicate that reads the plan, so the output is exactly what mlx-lm's loader rebuilds.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .checkpoint import Stacked
from .errors import LayoutError
from .formats import DTYPES, FP_MODES, Mode, Quant, Rounding
from .names import layer_of, module_path
from .plan import Plan
from .rounding import quantize_searched
from .surgery import module_at

# fpquant, gptq and calibrate (numpy) are imported by the packers and steps that use them: the main
# process of a conversion builds only lazy outputs here (a dry run), and only the workers that pack
# fp modes or round with GPTQ import them (_workerboot)


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


Packed = dict[str, mx.array]  # a quantized module's arrays: weight, scales, and biases or global_scale


def _named(arrays, last: str = "biases") -> Packed:
    """(packed, scales[, biases or global scale]) by the names the quantized module holds them under."""
    return {name: a for name, a in zip(("weight", "scales", last), arrays) if a is not None}


def _plain(w: mx.array, q: Quant, h: mx.array | None) -> Packed:
    """What the module's to_quantized makes: mx.quantize, and for a global scale mlx-lm's
    _quantize_experts (each expert its own tensor scale). The fp modes by fpquant, bit-identical to
    mx.quantize: mlx 0.32 has no CPU kernel for them, so mx.quantize runs ~30x slower and needs
    20-40x the input in temporary memory. Affine lazily; fp modes now."""
    if q.mode == Mode.AFFINE:
        return _named(mx.quantize(w, q.group_size, q.bits))
    from .fpquant import quantize_fp, quantize_fp_experts

    if q.global_scale:
        return _named(quantize_fp_experts(w), "global_scale")
    return _named(quantize_fp(w, q.mode.value))


def _searched(w: mx.array, q: Quant, h: mx.array | None) -> Packed:
    """Per group, the clipped range with the least reconstruction error (rounding.py); an nvfp4
    expert stack keeps mlx-lm's per-expert global scale, max |w[e]|."""
    if not q.global_scale:
        return _named(quantize_searched(w, q))
    global_scale = mx.max(mx.abs(w), axis=(-2, -1)).astype(mx.float32)  # as mlx-lm's _quantize_experts
    parts = [quantize_searched(w[e], q, global_scale[e]) for e in range(w.shape[0])]
    return {"weight": mx.stack([p[0] for p in parts]), "scales": mx.stack([p[1] for p in parts]),
            "global_scale": global_scale}


def _gptq(w: mx.array, q: Quant, h: mx.array | None) -> Packed:
    """GPTQ on the inputs' second moment `h` (gptq.py); plainly where none was measured (embeddings)."""
    from .gptq import Parts, quantize_gptq

    if h is None:
        return _plain(w.stacked() if isinstance(w, Parts) else w, q, h)
    return _named(quantize_gptq(w, h, q))


# mode x rounding -> packer: (float weight [..., out, in], its Quant, E[x xᵀ] of its inputs or None)
# -> the quantized module's arrays, the same for a whole expert stack as for its experts one at a time
PACKERS: dict[tuple[Mode, Rounding], Callable[[mx.array, Quant, mx.array | None], Packed]] = {
    **{(mode, Rounding.PLAIN): _plain for mode in Mode},
    **{(mode, Rounding.MSE): _searched for mode in Mode},
    (Mode.AFFINE, Rounding.GPTQ): _gptq,
    **{(mode, Rounding.GPTQ): _plain for mode in FP_MODES},  # GPTQ is affine only
}


def _quantize_modules(model: nn.Module, paths: set[str], predicate) -> None:
    """nn.quantize(model, class_predicate=predicate) for modules at `paths` (the predicate is False
    elsewhere), walking only the decoder layers that hold them (and the model, for paths outside
    the layers): a walk of the whole model for each group made a dry run's time grow with the
    square of the layers (the benchmarks' 9-layer layout: 10 walks of 167 modules, 0.10 of its
    manifest's 0.29 s profiled)."""
    roots: dict[str, set[str]] = {}
    for path in paths:
        where = layer_of(f"{path}.")
        roots.setdefault(f"{where[0]}.{where[1]}" if where else "", set()).add(path)
    for root in sorted(roots):
        if not root:
            nn.quantize(model, class_predicate=lambda path, m: path in roots[""] and predicate(path, m))
            continue
        nn.quantize(module_at(model, root), class_predicate=lambda path, m, r=root: predicate(f"{r}.{path}", m))


class Quantizer:
    """Holds the lazily built target model; `run` loads, quantizes and returns one group."""

    def __init__(self, model: nn.Module, plan: Plan, compute: bool = True, moments: dict[str, mx.array] | None = None):
        """`compute=False` (a dry run) leaves every output lazy: shapes and dtypes, no data read.
        `moments`: E[x xᵀ] of the inputs per module path, for --rounding gptq."""
        self.model = model
        self.plan = plan
        self.compute = compute
        self.moments = moments or {}
        self.rounding = Rounding(plan.options.rounding)
        self.keep_dtype = getattr(model, "cast_predicate", lambda key: True)

    def run(self, weights: dict[str, mx.array | Stacked], experts: range | None = None,
            rest: bool = True) -> dict[str, mx.array | Stacked]:
        """Quantized output tensors (lazy) for one group of checked, stacked float weights, each
        module packed by PACKERS for its mode and the rounding.

        An expert stack given as its parts (Stacked) is, with plain rounding, quantized expert by
        expert — `mx.quantize` packs each row on its own and a global scale is per expert, so the
        bytes are the same — and comes out as Stacked tensors: the stack is never built. Its entry
        in `weights` (the caller's dict) is replaced by a lazy stand-in of the same shape, so that
        nothing holds the parts once each is quantized (affine: when the writer evaluates it; fp
        modes: here, one expert at a time). Other roundings stack the parts first.

        `experts` (a worker's share of the layer, see procpool.units): of each Stacked expert stack
        only these experts are quantized (and read), GPTQ's on their own moments; the stack comes
        out Stacked, its other parts lazy stand-ins that are never evaluated (the writer writes
        only `experts`). `rest=False`: the group's other modules are left as to_quantized packs
        them, lazily, for another share to compute."""
        dtype, rows = DTYPES[self.plan.options.dtype], self.plan.by_path

        def cast(key, value):  # float tensors to the output dtype, except packed modules copied as stored
            row = rows.get(module_path(key))
            if row is not None and row.as_stored or not mx.issubdtype(value.dtype, mx.floating):
                return value
            return value.astype(dtype) if self.keep_dtype(key) else value

        def quantized(key: str) -> bool:
            row = rows.get(module_path(key))
            return (self.compute and key.endswith(".weight") and row is not None and row.quant is not None
                    and not row.as_stored)

        stacks = [k for k, v in weights.items() if isinstance(v, Stacked)]
        mine = None  # of `experts`, those the stacks have
        if stacks and experts is not None:
            mine = range(len(weights[stacks[0]].parts))[experts.start:experts.stop]
        parts = {k: list(weights[k].parts) for k in stacks if quantized(k) and self.rounding == Rounding.PLAIN}
        # a share of the other roundings' stacks (the stand-in below takes its place in the model): GPTQ's
        # as its parts (gptq.Parts: a few experts stacked at a time), the others stacked now
        partial = {k: share([cast(k, p) for p in weights[k].parts[mine.start:mine.stop]]) for k in stacks
                   if mine and k not in parts and quantized(k)
                   for share in [_gptq_parts if self.rounding == Rounding.GPTQ and rows[module_path(k)].quant.mode
                                 == Mode.AFFINE else mx.stack]}
        split = {module_path(k) for k in stacks if quantized(k)} if mine is not None else set()  # shared stacks
        given = set(weights)
        # in place, the caller's dict being this one: a stand-in of the same shape (never evaluated), or the stack
        weights.update({k: mx.zeros(weights[k].shape, weights[k].dtype) if k in parts or module_path(k) in split
                        else mx.stack(weights[k].parts) for k in stacks})
        weights = {k: cast(k, v) for k, v in weights.items()}
        self.model.load_weights(list(weights.items()), strict=False)
        paths = sorted({module_path(k) for k in weights})
        todo = {p for p in paths if p in rows and rows[p].quant is not None and not rows[p].as_stored}
        mine_packed: dict[str, dict[str, list]] = {}  # a shared stack's path -> name -> the parts of `mine`

        def predicate(path, module):
            return rows[path].quant.to_dict() if path in todo else False

        if todo:
            _quantize_modules(self.model, todo, predicate)  # the quantized modules, packed by to_quantized
            computed = {p for p in todo if f"{p}.weight" in partial or rest and p not in split and
                        f"{p}.weight" not in parts}
            together = self._gptq_together(computed, weights, partial, mine) if self.compute else {}
            for path in sorted(computed) if self.compute else ():  # a dry run keeps to_quantized's lazy packing
                quant, key = rows[path].quant, f"{path}.weight"
                h = _experts_of(self.moments.get(path), mine) if key in partial else self.moments.get(path)
                packed = together.pop(path, None) or PACKERS[quant.mode, self.rounding](
                    partial.pop(key) if key in partial else weights.pop(key), quant, h)
                if path in split:
                    mine_packed[path] = {name: [v[i] for i in range(len(mine))] for name, v in packed.items()}
                    continue
                module = module_at(self.model, path)
                for name, value in packed.items():
                    setattr(module, name, value)
        out = {}
        for path in paths:
            module = module_at(self.model, path)
            if isinstance(module, mx.array):  # a parameter of the model itself (mlx-vlm's image_newline): its own key
                out[path] = module
                continue
            arrays = {k: v for k, v in module.items() if isinstance(v, mx.array) and not k.startswith("_")}
            out.update((f"{path}.{k}", v) for k, v in arrays.items())
            module.update({k: mx.array([]) for k in arrays})  # release: the writer holds them now
        for key in sorted(parts):
            path, quant = module_path(key), rows[module_path(key)].quant
            pack, by_expert, packed = PACKERS[quant.mode, self.rounding], parts.pop(key), []
            for e in mine if mine is not None else range(len(by_expert)):
                part, by_expert[e] = by_expert[e], None  # fp modes compute now: free each expert after
                packed.append({k: v[0] for k, v in pack(cast(key, part)[None], quant, None).items()})
                del part
            if mine is None:
                out.update((f"{path}.{name}", Stacked([p[name] for p in packed])) for name in packed[0])
            elif packed:
                mine_packed[path] = {name: [p[name] for p in packed] for name in packed[0]}
        for path in split:  # each quantized array of a shared stack: `mine` computed, the other parts stand-ins
            for name in [k.rpartition(".")[2] for k in out if module_path(k) == path]:
                key = f"{path}.{name}"
                if name == "weight" or key not in given:  # not a float parameter the module keeps (a bias)
                    out[key] = _stacked(mine_packed.get(path, {}).get(name), mine, out[key])
        return out

    def _gptq_together(self, todo: set[str], weights: dict[str, mx.array], partial: dict[str, mx.array],
                       mine: range | None) -> dict[str, Packed]:
        """GPTQ of the affine modules whose inputs are the same (an expert stack's gate and up: one
        RoutedMoments record; q/k/v: one Symmetric), their weights taken from `partial` (a share's
        experts, `mine`) or `weights`: H and its feedback formed once for all of them
        (gptq.quantize_gptq_together), not once each."""
        if self.rounding != Rounding.GPTQ:
            return {}
        from .calibrate import RoutedMoments, Symmetric
        from .gptq import quantize_gptq_together

        by_input: dict[RoutedMoments | Symmetric, list[str]] = {}
        for path in sorted(todo):
            h = self.moments.get(path)
            if isinstance(h, (RoutedMoments, Symmetric)) and self.plan.by_path[path].quant.mode == Mode.AFFINE:
                by_input.setdefault(h, []).append(path)
        out = {}
        for h, paths in by_input.items():
            if len(paths) > 1:
                keys = [f"{p}.weight" for p in paths]
                if all(k in partial for k in keys):
                    h, taken = h.part(mine), [partial.pop(k) for k in keys]
                elif any(k in partial for k in keys):
                    continue  # not all of them shared: each on its own
                else:
                    taken = [weights.pop(k) for k in keys]
                packed = quantize_gptq_together([(w, self.plan.by_path[p].quant) for p, w in zip(paths, taken)], h)
                out.update((p, _named(arrays)) for p, arrays in zip(paths, packed))
        return out


def _gptq_parts(parts: list[mx.array]):
    """A share of an expert stack as gptq.Parts (a few experts stacked at a time)."""
    from .gptq import Parts

    return Parts(parts)


def _experts_of(h, experts: range):
    """Of E[x xᵀ] per expert ([E, in, in]: calibrate's RoutedMoments or Symmetric, or an array), those of
    `experts`; a shared one ([in, in]) or none as it is."""
    if h is None or len(h.shape) != 3:
        return h
    return h.part(experts) if hasattr(h, "part") else h[experts.start:experts.stop]


def _stacked(parts: list[mx.array] | None, experts: range, whole: mx.array) -> Stacked:
    """An output stack shaped as `whole` (lazy, never evaluated) as a Stacked: `parts` for
    `experts`, stand-ins of the same shape for the others (never evaluated either)."""
    stand_in = mx.zeros(whole.shape[1:], whole.dtype)
    return Stacked([parts[e - experts.start] if parts and e in experts else stand_in for e in range(whole.shape[0])])


def _nearest(key: str, keys) -> str:
    import difflib

    return next(iter(difflib.get_close_matches(key, list(keys), n=1, cutoff=0)), "(none)")
