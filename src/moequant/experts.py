"""Expert layouts -> the stacked [E, out, in] layout mlx-lm's SwitchLinear holds, one layer at a time.

Every expert is accounted for: a missing expert or a shape that differs from its siblings is an
error naming the layer and the expert, never a silent skip.
"""

from __future__ import annotations

import re
from typing import Callable
import mlx.core as mx

from .errors import LayoutError
from .families import Family


# How a fused gate_up_proj [E, 2I, H] splits into (gate, up) along its rows; a Family row names one.
FUSED_SPLITTERS: dict[str, Callable[[mx.array], tuple[mx.array, mx.array]]] = {
    "halves": lambda t: (t[:, : t.shape[1] // 2], t[:, t.shape[1] // 2 :]),  # Qwen3.5/3.6: gate rows, then up
    "interleaved": lambda t: (t[:, 0::2], t[:, 1::2]),  # gpt-oss: even rows gate, odd rows up
}


def _fused_pattern(family: Family) -> re.Pattern:
    return re.compile(rf"^(?P<layer>.+)\.{re.escape(family.experts)}\.(?P<proj>gate_up_proj|down_proj)(?:\.weight)?$")


def _per_expert_pattern(family: Family) -> re.Pattern:
    projections = "|".join(map(re.escape, family.projections))
    return re.compile(
        rf"^(?P<layer>.+)\.{re.escape(family.experts)}\.(?P<e>\d+)\.(?P<proj>{projections})\.(?P<suffix>\w+)$"
    )


def num_experts(family: Family, config: dict) -> int:
    for key in family.num_experts_keys:
        if isinstance(config.get(key), int):
            return config[key]
    raise LayoutError(f"config.json: none of {', '.join(family.num_experts_keys)} is set; expected the expert count")


def to_stacked(family: Family, weights: dict[str, mx.array], n_experts: int) -> dict[str, mx.array]:
    """Per-expert tensors of one layer stacked into `<layer>.<family.stacked>.<proj>.<suffix>`."""
    pattern, fused = _per_expert_pattern(family), _fused_pattern(family)
    stacks: dict[tuple[str, str, str], dict[int, mx.array]] = {}
    out: dict[str, mx.array] = {}
    for key, value in weights.items():
        if f := fused.match(key):
            out.update(_unfuse(family, key, f["layer"], f["proj"], value, n_experts))
            continue
        m = pattern.match(key)
        if m is None:
            out[key] = value
            continue
        stacks.setdefault((m["layer"], m["proj"], m["suffix"]), {})[int(m["e"])] = value
    for (layer, proj, suffix), by_expert in sorted(stacks.items()):
        where = f"{layer}.{family.experts}"
        missing = sorted(set(range(n_experts)) - set(by_expert))
        extra = sorted(set(by_expert) - set(range(n_experts)))
        if missing or extra:
            found = f"missing expert(s) {_ids(missing)}" if missing else f"unexpected expert(s) {_ids(extra)}"
            raise LayoutError(
                f"{where}: {found} for {proj}.{suffix}; expected {n_experts} experts (num_experts), "
                f"found {len(by_expert)}"
            )
        shape0 = by_expert[0].shape
        for e in range(n_experts):
            if by_expert[e].shape != shape0:
                raise LayoutError(
                    f"{where}.{e}.{proj}.{suffix}: shape {tuple(by_expert[e].shape)}; "
                    f"expected {tuple(shape0)} like expert 0"
                )
        out[f"{layer}.{family.stacked}.{family.projections[proj]}.{suffix}"] = mx.stack(
            [by_expert[e] for e in range(n_experts)]
        )
    return out


def _unfuse(family: Family, key: str, layer: str, proj: str, value: mx.array, n_experts: int) -> dict[str, mx.array]:
    if value.ndim != 3 or value.shape[0] != n_experts:
        raise LayoutError(f"{key}: shape {tuple(value.shape)}; expected [E={n_experts}, out, in]")
    stacked = f"{layer}.{family.stacked}"
    if proj == "down_proj":
        return {f"{stacked}.down_proj.weight": value}
    if value.shape[1] % 2:
        raise LayoutError(f"{key}: {value.shape[1]} rows; expected an even count (2·I: gate and up rows)")
    gate, up = FUSED_SPLITTERS[family.fused](value)
    return {f"{stacked}.gate_proj.weight": gate, f"{stacked}.up_proj.weight": up}


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:8])) + (" …" if len(ids) > 8 else "")
