"""Expert layouts -> the stacked [E, out, in] layout mlx-lm's SwitchLinear holds, one layer at a time.

Every expert is accounted for: a missing expert or a shape that differs from its siblings is an
error naming the layer and the expert, never a silent skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import mlx.core as mx

from .errors import LayoutError
from .registry import Family, Handoff, num_experts_keys, registrar


@dataclass(frozen=True)
class FusedLayout:
    """How a release stores all experts of a layer in two tensors, gate_up (gate and up rows of
    every expert) and down; a Family row names one by its key in FUSED_SPLITTERS. `split`/`down`
    give mlx-lm's [E, out, in]; `join`/`store_down` are their inverses (tiny checkpoints are written
    with them). Packed weights, their scales and a fused bias [E, 2I] split along axis 1 (rows)."""

    interleaved: bool = False  # gate and up rows alternate (else: all gate rows, then all up rows)
    transposed: bool = False  # stored in x out: gate_up [E, H, 2I], down [E, I, H]
    # also stored out x in under the same names: transformers' loader takes either (it transposes a tensor only
    # where its shape is not the model's, core_model_loading.Transpose(check_dims=True)) and its save_pretrained
    # writes the model's out x in; each layer's pair of shapes tells which (see _oriented)
    either: bool = False

    def split_rows(self, t: mx.array) -> tuple[mx.array, mx.array]:
        if self.interleaved:
            return t[:, 0::2], t[:, 1::2]
        half = t.shape[1] // 2
        return t[:, :half], t[:, half:]

    def join_rows(self, gate: mx.array, up: mx.array) -> mx.array:
        if self.interleaved:
            return mx.stack([gate, up], axis=2).reshape(gate.shape[0], -1, *gate.shape[2:])
        return mx.concatenate([gate, up], axis=1)

    def split(self, gate_up: mx.array) -> tuple[mx.array, mx.array]:
        return self.split_rows(_swap(gate_up) if self.transposed else gate_up)

    def join(self, gate: mx.array, up: mx.array) -> mx.array:
        joined = self.join_rows(gate, up)
        return _swap(joined) if self.transposed else joined

    def down(self, down: mx.array) -> mx.array:
        return _swap(down) if self.transposed else down

    store_down = down  # a swap is its own inverse

    @property
    def rows_axis(self) -> int:
        return 2 if self.transposed else 1


def _swap(t: mx.array) -> mx.array:
    return mx.swapaxes(t, 1, 2)


# How fused expert tensors split. Orientation is data in these rows, never guessed from shapes.
FUSED_SPLITTERS: dict[str, FusedLayout] = {
    "halves": FusedLayout(),  # Qwen3.5/3.6, GraniteMoE input_linear: [E, 2I, H], gate rows then up rows
    "interleaved": FusedLayout(interleaved=True),  # gpt-oss MXFP4 _blocks: [E, 2I, H], even rows gate
    "halves_transposed": FusedLayout(transposed=True),  # Llama-4: [E, H, 2I], gate columns then up
    # Qwen3-VL-MoE: the release's [E, H, 2I] (gate columns then up), or transformers 5's save of it: [E, 2I, H]
    "halves_transposed_or_rows": FusedLayout(transposed=True, either=True),
    # gpt-oss in transformers' own layout (BF16 re-releases): [E, H, 2I], even columns gate
    "interleaved_transposed": FusedLayout(interleaved=True, transposed=True),
}


def _bare(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


@dataclass(frozen=True)
class _Fused:
    """One publication of a family's fused experts: the keys it matches, how they split, its down name."""

    pattern: re.Pattern
    layout: FusedLayout
    down: str  # the down tensor's name inside `experts`, bare
    gate_up: str = ""  # the gate_up tensor's name inside `experts`, bare


def _fused_pattern(family: Family, names: tuple[str, str], biases: tuple[str, ...]) -> re.Pattern:
    """Fused tensors inside `<layer>.<experts>`, named exactly as the row says, and fused biases.
    Names ending in `.weight` (GraniteMoE's input_linear.weight, gpt-oss's MXFP4 blocks once read)
    also take the packed siblings `.scales` / `.biases`; bare names (Qwen3.5's and Llama-4's float
    parameters) are taken bare only: a `down_proj.weight` beside them is mlx-lm's own stacked tensor
    (an MLX source). gpt-oss's bare gate_up_proj (transformers' in x out) is another publication
    (Family.fused_also), split its own way."""
    alternatives = "|".join(re.escape(_bare(n)) for n in names)
    suffix = r"(?P<suffix>\.weight|\.scales|\.biases)" if names[0].endswith(".weight") else ""
    bias = "|".join(re.escape(n) for n in biases) or "(?!)"
    experts = re.escape(family.experts)
    return re.compile(rf"^(?P<layer>.+)\.{experts}\.(?:(?P<proj>{alternatives}){suffix}|(?P<bias>{bias}))$")


def _fused_publications(family: Family) -> tuple[_Fused, ...]:
    """The row's fused names (with its fused biases), then each of Family.fused_also."""
    rows = [(family.fused_names, family.fused_bias_names, family.fused)]
    rows += [(also.names, (), also.fused) for also in family.fused_also]
    return tuple(_Fused(_fused_pattern(family, names, biases), FUSED_SPLITTERS[fused], _bare(names[1]), _bare(names[0]))
                 for names, biases, fused in rows)


def _match_fused(publications: tuple[_Fused, ...], key: str) -> tuple[re.Match, _Fused] | None:
    for fused in publications:
        if m := fused.pattern.match(key):
            return m, fused
    return None


def _per_expert_pattern(family: Family) -> re.Pattern:
    projections = "|".join(map(re.escape, family.projections))
    return re.compile(
        rf"^(?P<layer>.+)\.{re.escape(family.experts)}\.(?P<e>\d+)\.(?P<proj>{projections})\.(?P<suffix>\w+)$"
    )


def expert_sources(family: Family, keys) -> dict[str, tuple[str, str]]:
    """Target expert stack path -> (layout SRC publishes it in, one SRC key of it), for `inspect`."""
    out: dict[str, tuple[str, str]] = {}
    for key, layout, paths in _expert_weights(family, keys):
        for path in paths:
            out.setdefault(path, (layout, key))
    return out


def expert_keys(family: Family, keys) -> list[str]:
    """Those of `keys` that hold expert weights (each feeds a stack of expert_sources), in order."""
    return [key for key, _, _ in _expert_weights(family, keys)]


def _expert_weights(family: Family, keys) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(key, the layout SRC publishes it in, the target stack paths it feeds) for each of `keys` that
    holds expert weights; the family's patterns compiled once for all of them."""
    pattern, fused = _per_expert_pattern(family), _fused_publications(family)
    for key in keys:
        if (m := pattern.match(key)) and m["suffix"] == "weight":
            yield key, "per-expert", (f"{m['layer']}.{family.stacked}.{family.projections[m['proj']]}",)
        elif (found := _match_fused(fused, key)) and not found[0]["bias"]:
            f, publication = found
            projections = ("down_proj",) if f["proj"] == publication.down else ("gate_proj", "up_proj")
            yield key, "fused", tuple(f"{f['layer']}.{family.stacked}.{p}" for p in projections)


def num_experts(family: Family, config: dict) -> int | tuple[int, ...]:
    """The expert count, from the first of the family's keys set at the top of config.json or,
    for VLM-style configs (Llama-4), under text_config; a dotted key reads a nested one (DBRX's
    ffn_config.moe_num_experts). A list gives the counts of expert sets numbered one after another
    (ERNIE-4.5-VL's text experts, then its multimodal ones): see ExpertCounts."""
    for where in (config, config.get("text_config") or {}):
        for key in num_experts_keys(family):
            value = where
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, int):
                return value
            if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
                return tuple(value)
    raise LayoutError(f"config.json: none of {', '.join(num_experts_keys(family))} is set (nor under text_config); "
                      "expected the expert count")


@dataclass(frozen=True, eq=False)
class ExpertStack:
    """One stack to_stacked made: `stack`, the lazy mx.stack of `parts` that mlx-lm's sanitize is
    handed, and the per-expert `parts`. Where the target gets `stack` itself (neither sanitize nor
    dequantization replaced it), the conversion hands the quantizer the parts instead, so that the
    stack is never built."""

    stack: mx.array
    parts: list[mx.array]


@dataclass(frozen=True)
class ExpertCounts:
    """The expert count of the stack a tensor key belongs to: that of the first prefix in `at` the key starts
    with (Qwen3-Omni's talker.*), else `default`. A count may be a tuple: the sizes of expert sets numbered
    one after another (ERNIE-4.5-VL's text experts, then its multimodal ones), each set's experts shaped alike
    (a set's own intermediate size)."""

    default: int | tuple[int, ...]
    at: tuple[tuple[str, int | tuple[int, ...]], ...] = ()

    def sets(self, key: str) -> tuple[int, ...]:
        n = next((n for prefix, n in self.at if key.startswith(prefix)), self.default)
        return n if isinstance(n, tuple) else (n,)

    def __call__(self, key: str) -> int:
        return sum(self.sets(key))


def expert_counts(family: Family, config: dict) -> ExpertCounts:
    """The family's expert counts: num_experts', and each of num_experts_at's under its own config key."""
    return ExpertCounts(num_experts(family, config), tuple(
        (prefix, num_experts(replace(family, num_experts=key), config)) for prefix, key in family.num_experts_at))


def to_stacked(family: Family, weights: dict[str, mx.array], count: ExpertCounts
               ) -> tuple[dict[str, mx.array], list[ExpertStack]]:
    """Every expert of one layer checked, then handed over as the target's sanitize expects it:
    stacked into `<layer>.<family.stacked>.<proj>.<suffix>` [E, out, in], or — for a family whose
    sanitize stacks them itself and keys other conversions on seeing them (Handoff.PER_EXPERT)
    — per expert, in the published names (fused tensors split into them). Also returns each stack
    made here with its parts. Row blocks (Family.row_blocks) are checked and handed over as they are."""
    pattern, fused = _per_expert_pattern(family), _fused_publications(family)
    blocks = re.compile(rf"\.{re.escape(family.experts)}\.(?:{'|'.join(map(re.escape, family.row_blocks)) or '(?!)'})$")
    found: dict[tuple[str, str, str], dict[int, mx.array]] = {}
    out: dict[str, mx.array] = {}
    stacks: list[ExpertStack] = []
    for key, value in weights.items():
        n_experts = count(key)
        if blocks.search(key) and (value.ndim != 2 or value.shape[0] % n_experts):
            raise LayoutError(f"{key}: shape {tuple(value.shape)}; expected [E·rows, cols], rows a multiple of "
                              f"E={n_experts} (num_experts)")
        if publication := _match_fused(fused, key):
            m, found_in = publication
            found_in = replace(found_in, layout=_oriented(family, m, found_in, weights))
            out.update(_unfuse(family, key, m, found_in, value, n_experts))
            continue
        m = pattern.match(key)
        if m is None:
            out[key] = value
            continue
        found.setdefault((m["layer"], m["proj"], m["suffix"]), {})[int(m["e"])] = value
    for (layer, proj, suffix), by_expert in sorted(found.items()):
        where = f"{layer}.{family.experts}"
        n_experts, sets = count(where), count.sets(where)
        firsts = [sum(sets[:i]) for i in range(len(sets)) for _ in range(sets[i])]  # expert -> its set's first
        missing = sorted(set(range(n_experts)) - set(by_expert))
        extra = sorted(set(by_expert) - set(range(n_experts)))
        if missing or extra:
            found = f"missing expert(s) {_ids(missing)}" if missing else f"unexpected expert(s) {_ids(extra)}"
            raise LayoutError(
                f"{where}: {found} for {proj}.{suffix}; expected {n_experts} experts (num_experts), "
                f"found {len(by_expert)}"
            )
        for e in range(n_experts):
            if by_expert[e].shape != by_expert[firsts[e]].shape:
                raise LayoutError(
                    f"{where}.{e}.{proj}.{suffix}: shape {tuple(by_expert[e].shape)}; "
                    f"expected {tuple(by_expert[firsts[e]].shape)} like expert {firsts[e]}"
                )
        if family.handoff == Handoff.PER_EXPERT:
            out.update((f"{where}.{e}.{proj}.{suffix}", by_expert[e]) for e in range(n_experts))
        else:
            parts = [by_expert[e] for e in range(n_experts)]
            stacks.append(ExpertStack(mx.stack(parts), parts))
            out[f"{layer}.{family.stacked}.{family.projections[proj]}.{suffix}"] = stacks[-1].stack
    return out, stacks


def _oriented(family: Family, match: re.Match, publication: _Fused, weights: dict[str, mx.array]) -> FusedLayout:
    """The layout a fused tensor splits by: for one stored either way (FusedLayout.either), out x in where its
    layer's pair is gate_up [E, 2I, H] beside down [E, H, I] (gate_up's last dimension is down's rows, and its
    rows twice down's last); the in x out pair, [E, H, 2I] beside [E, I, H], never is (it would make I zero)."""
    layout = publication.layout
    suffix = match.groupdict().get("suffix") or ""
    where = f"{match['layer']}.{family.experts}."
    gate_up, down = weights.get(where + publication.gate_up + suffix), weights.get(where + publication.down + suffix)
    if not layout.either or gate_up is None or down is None or gate_up.ndim != 3 or down.ndim != 3:
        return layout
    rows = gate_up.shape[2] == down.shape[1] and gate_up.shape[1] == 2 * down.shape[2]
    return replace(layout, transposed=False, either=False) if rows else layout


def _unfuse(family: Family, key: str, match: re.Match, publication: _Fused, value: mx.array,
            n_experts: int) -> dict[str, mx.array]:
    """One fused tensor as the stacked (or per-expert) tensors of gate, up and down."""
    layout = publication.layout
    if match["bias"]:
        suffix, is_down = "bias", match["bias"] == family.fused_bias_names[1]
        if value.ndim != 2 or value.shape[0] != n_experts:
            raise LayoutError(f"{key}: shape {tuple(value.shape)}; expected [E={n_experts}, out]")
    else:
        suffix = (match.groupdict().get("suffix") or ".weight")[1:]
        is_down = match["proj"] == publication.down
        if value.ndim != 3 or value.shape[0] != n_experts:
            raise LayoutError(f"{key}: shape {tuple(value.shape)}; expected [E={n_experts}, out, in]")
    rows = 1 if suffix != "weight" else layout.rows_axis
    if is_down:
        parts = {"down_proj": layout.down(value) if suffix == "weight" else value}
    elif value.shape[rows] % 2:
        raise LayoutError(f"{key}: {value.shape[rows]} rows; expected an even count (2·I: gate and up rows)")
    else:
        gate, up = layout.split(value) if suffix == "weight" else layout.split_rows(value)
        parts = {"gate_proj": gate, "up_proj": up}
    if family.handoff == Handoff.PER_EXPERT:
        source = {target: name for name, target in family.projections.items()}
        return {f"{match['layer']}.{family.experts}.{e}.{source[p]}.{suffix}": t[e] for p, t in parts.items()
                for e in range(n_experts)}
    return {f"{match['layer']}.{family.stacked}.{p}.{suffix}": t for p, t in parts.items()}


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:8])) + (" …" if len(ids) > 8 else "")


# name -> function(weights, config) -> weights: a tensor SRC holds whole, split as the runner's model holds it
# (a registry row's `splits`, for a runner whose sanitize splits it only from another source format)
SPLITTERS: dict = {}
splitter = registrar(SPLITTERS)


@splitter("mla_kv_b")
def _mla_kv_b(weights: dict[str, mx.array], config: dict) -> dict[str, mx.array]:
    """MLA's float kv_b_proj [heads·(nope + v), kv_lora] as mlx's DeepSeek attentions hold it (mlx-vlm's
    deepseek_v32 sanitize): embed_q [heads, kv_lora, nope] and unembed_out [heads, v, kv_lora]."""
    heads, nope = config["num_attention_heads"], config["qk_nope_head_dim"]
    out = {}
    for key, value in weights.items():
        path = key.removesuffix(".kv_b_proj.weight")
        if path == key or f"{path}.kv_b_proj.scales" in weights:
            out[key] = value
            continue
        per_head = value.reshape(heads, -1, value.shape[-1])
        out[f"{path}.embed_q.weight"] = mx.contiguous(per_head[:, :nope].swapaxes(-1, -2))
        out[f"{path}.unembed_out.weight"] = mx.contiguous(per_head[:, nope:])
    return out
