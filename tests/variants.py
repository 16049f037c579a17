"""Variants of a transformers-written checkpoint, by deterministic transformation of its files.

tests/producer.py's `write_produced` writes a tiny checkpoint with transformers' own
`save_pretrained`; each function here reads such a folder and writes the same model as another
kind of release stores it: FP8 block-scaled, a transformers-4 config, the other expert layout,
bf16, MLX-quantized by mlx-lm itself, ModelOpt NVFP4. Each returns the float32 values the variant
stores, under the source's tensor names (what a reader that gets the format right must recover),
so a test can compare against transformers' forward of exactly those weights (`float_copy`).
"""

from __future__ import annotations

import copy
import re
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np

from moequant.checkpoint import DTYPE_TAGS, INDEX_FILE
from moequant.experts import FUSED_SPLITTERS
from moequant.registry import FAMILIES, MODEL_TYPES
from moequant.tiny import _to_fp8, _to_layout, _to_modelopt_nvfp4, save_safetensors

Tensors = dict[str, mx.array]


def read(src: Path) -> tuple[dict, Tensors]:
    """config.json and every tensor (float32 as written by write_produced, or whatever it is)."""
    src = Path(src)
    tensors: Tensors = {}
    for file in sorted(src.glob("*.safetensors")):
        tensors.update(mx.load(str(file)))
    return json.loads((src / "config.json").read_text()), tensors


def _write(src: Path, dst: Path, config: dict, tagged: dict[str, tuple[str, mx.array]]) -> None:
    """dst: src's other files (generation config, tokenizer if any), config.json, one shard."""
    dst = Path(dst)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", INDEX_FILE, "config.json"))
    save_safetensors(dst / "model.safetensors", tagged)
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _tag(tensors: Tensors) -> dict[str, tuple[str, mx.array]]:
    return {k: (DTYPE_TAGS[v.dtype], v) for k, v in tensors.items()}


def float_copy(src: Path, dst: Path, tensors: Tensors) -> Path:
    """src with its tensors replaced by `tensors` (float32): what transformers' reference runs."""
    config, _ = read(src)
    _write(src, dst, config, _tag({k: v.astype(mx.float32) for k, v in tensors.items()}))
    return Path(dst)


def family_of(config: dict):
    return FAMILIES[MODEL_TYPES.get(config["model_type"], config["model_type"])]


# ---- (a) FP8 e4m3 with weight_scale_inv block scales (DeepSeek-V3, Qwen3-*-FP8) -------------

def to_fp8(src: Path, dst: Path, block: tuple[int, int] = (128, 128)) -> Tensors:
    """2-D linear weights as F8_E4M3 with float32 inverse block scales [ceil(out/b0), ceil(in/b1)]
    (partial edge blocks where a dim is not a multiple of the block), `quantization_config:
    {quant_method: fp8, fmt: e4m3, weight_block_size}`; router gates, norms, embeddings and lm_head
    stay float as the releases keep them (tiny._to_fp8). Returns the values the FP8 file holds."""
    config, tensors = read(src)
    tagged = _to_fp8(tensors, block)
    b0, b1 = block
    stored = {}
    for key, (tag, value) in tagged.items():
        if key.endswith(".weight_scale_inv"):
            continue
        if tag == "F8_E4M3":
            scale = tagged[key[: -len("weight")] + "weight_scale_inv"][1]
            n_out, n_in = value.shape
            full = mx.repeat(mx.repeat(scale, b0, axis=0), b1, axis=1)[:n_out, :n_in]
            stored[key] = mx.from_fp8(value, dtype=mx.float32) * full
        else:
            stored[key] = value
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    _write(src, dst, config, tagged)
    return stored


# ---- (b) a transformers-4 config: the keys as the older releases wrote them -----------------

# model_type -> (transformers 5 key, the name older releases wrote), per the releases' config.json
LEGACY_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen3_moe": (("num_local_experts", "num_experts"),),  # Qwen/Qwen3-30B-A3B: "num_experts": 128
}


def to_legacy_config(src: Path, dst: Path) -> Tensors:
    """config.json fully written (every key transformers' config class has, as transformers 4's
    save_pretrained of a release's config did), RoPE as top-level `rope_theta` (+ `rope_scaling`
    for a non-default type) instead of `rope_parameters`, and the expert count under the name the
    older releases used (LEGACY_KEYS). Weights unchanged."""
    import transformers

    config, tensors = read(src)
    full = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(copy.deepcopy(config)).to_dict()
    legacy = {k: v for k, v in full.items() if not k.startswith("_") and k not in ("transformers_version", "dtype")}
    legacy["torch_dtype"] = config.get("dtype", "float32")
    if legacy.get("num_attention_heads"):  # transformers' attention derives it when the class has none
        legacy.setdefault("head_dim", legacy["hidden_size"] // legacy["num_attention_heads"])
    rope = legacy.pop("rope_parameters", None) or {}
    legacy["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        legacy["rope_scaling"] = {"type": rope["rope_type"], **{k: v for k, v in rope.items() if k != "rope_theta"}}
    for new, old in LEGACY_KEYS.get(config["model_type"], ()):
        legacy[old] = legacy.pop(new)
    legacy["transformers_version"] = "4.51.0"
    _write(src, dst, legacy, _tag(tensors))
    return tensors


# ---- (c) per-expert <-> fused --------------------------------------------------------------

def to_fused(src: Path, dst: Path) -> Tensors:
    """Per-expert experts written fused as the family's row says (`experts.gate_up_proj` [E, 2I, H],
    gate rows first, + `experts.down_proj`, or the row's orientation: tiny._to_layout)."""
    config, tensors = read(src)
    _write(src, dst, config, _tag(_to_layout(tensors, family_of(config), "fused")))
    return tensors


def to_per_expert(src: Path, dst: Path) -> tuple[Tensors, dict[str, str]]:
    """Fused experts (the family's fused_names) written per expert, `<experts>.{e}.<proj>.weight`
    [out, in] under the family's per-expert projection names. Returns the tensors and, for each
    per-expert key, the fused key it came from."""
    config, tensors = read(src)
    family = family_of(config)
    splitter = FUSED_SPLITTERS[family.fused]
    names = {stacked: source for source, stacked in family.projections.items()}
    gate_up, down = family.fused_names
    out, origin = {}, {}
    for key, value in tensors.items():
        layer, sep, rest = key.partition(f".{family.experts}.")
        if not sep or rest not in (gate_up, down):
            out[key] = value
            continue
        parts = dict(zip(("gate_proj", "up_proj"), splitter.split(value))) if rest == gate_up \
            else {"down_proj": splitter.down(value)}
        for proj, stack in parts.items():
            for e in range(stack.shape[0]):
                name = f"{layer}.{family.experts}.{e}.{names[proj]}.weight"
                out[name], origin[name] = stack[e], key
    _write(src, dst, config, _tag(out))
    return out, origin


# ---- (d) bf16 ------------------------------------------------------------------------------

def to_bf16(src: Path, dst: Path) -> Tensors:
    """Every float tensor in bfloat16 and `dtype: bfloat16`, as most releases ship. Returns the
    bf16 values (as float32)."""
    config, tensors = read(src)
    bf16 = {k: v.astype(mx.bfloat16) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in tensors.items()}
    config["dtype"] = "bfloat16"
    _write(src, dst, config, _tag(bf16))
    return {k: v.astype(mx.float32) for k, v in bf16.items()}


# ---- (e) MLX-quantized by mlx-lm itself, router gates 8-bit per path ------------------------

GATE_SUFFIXES = (".mlp.gate", ".block_sparse_moe.gate", ".shared_expert_gate", ".mlp.router")


def to_mlx_quantized(src: Path, dst: Path, bits: int = 4, group_size: int = 64) -> Path:
    """The producer of MLX checkpoints is mlx-lm: its own load_model (on the transformers-4 config,
    whose keys mlx-lm's ModelArgs read), quantize_model with a quant_predicate giving router gates
    affine 8-bit / group 64 (per-path entries, as mlx-lm's own MoE predicates do), save_model and
    save_config. mlx_lm.convert.convert would do the same but needs a tokenizer. Returns dst."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    legacy = Path(dst).with_name(Path(dst).name + "-legacy")
    to_legacy_config(src, legacy)
    model, config = load_model(legacy)
    gate = {"group_size": 64, "bits": 8}
    model, config = quantize_model(model, config, group_size, bits,
                                   quant_predicate=lambda p, m: gate if p.endswith(GATE_SUFFIXES) else True)
    shutil.rmtree(dst, ignore_errors=True)
    save_model(dst, model)
    save_config(config, Path(dst) / "config.json")
    shutil.rmtree(legacy)
    return Path(dst)


def mlx_dequantized(dst: Path, src: Path) -> Tensors | None:
    """The float32 values an MLX checkpoint holds, as mlx-lm loads and dequantizes them
    (mlx_lm.utils.load_model + dequantize_model), under src's tensor names: each expert stack
    `<stacked>.<proj>.weight` [E, out, in] unstacked to `<experts>.{e}.<source proj>.weight`. None
    when mlx-lm's sanitize changed more than the expert layout (the names then differ from src's)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model, load_model

    config, source = read(src)
    family = family_of(config)
    names = {stacked: name for name, stacked in family.projections.items()}
    model, _ = load_model(Path(dst))
    out = {}
    for key, value in tree_flatten(dequantize_model(model).parameters()):
        layer, sep, rest = key.partition(f".{family.stacked}.")
        if sep and rest.endswith(".weight") and rest[: -len(".weight")] in names:
            for e in range(value.shape[0]):
                out[f"{layer}.{family.experts}.{e}.{names[rest[: -len('.weight')]]}.weight"] = value[e]
        else:
            out[key] = value
    return out if out.keys() == source.keys() else None


# ---- (f) NVIDIA ModelOpt NVFP4 -------------------------------------------------------------

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def _modelopt_value(packed: np.ndarray, scale: np.ndarray, scale_2: float) -> np.ndarray:
    """ModelOpt's published NVFP4 decoding, written from the layout (not from mlx): two e2m1 codes
    per byte, low nibble first; value = e2m1 · e4m3 block scale (16 values) · weight_scale_2."""
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    return E2M1[codes] * np.repeat(scale, 16, axis=-1) * np.float32(scale_2)


def to_modelopt_nvfp4(src: Path, dst: Path) -> Tensors:
    """2-D linear weights as NVIDIA ModelOpt's NVFP4 export lays them out (FORMATS.md; the layout
    of ModelOpt's published HF exports, hand-written here since ModelOpt needs CUDA): `weight`
    uint8 [out, in/2] (two e2m1, low nibble first), `weight_scale` F8_E4M3 [out, in/16],
    `weight_scale_2` float32 scalar (amax / (6·448)), `input_scale`; router gates, norms,
    embeddings and lm_head excluded (float), listed in hf_quant_config.json's exclude_modules.
    Returns the values the file holds, decoded by `_modelopt_value`."""
    config, tensors = read(src)
    tagged = _to_modelopt_nvfp4(tensors)
    stored = {}
    for key, (tag, value) in tagged.items():
        if key.endswith((".weight_scale", ".weight_scale_2", ".input_scale")):
            continue
        if tag == "U8" and key.endswith(".weight"):
            base = key[: -len("weight")]
            scale = np.array(mx.from_fp8(tagged[base + "weight_scale"][1], dtype=mx.float32))
            stored[key] = mx.array(_modelopt_value(np.array(value), scale, float(tagged[base + "weight_scale_2"][1])))
        else:
            stored[key] = value
    _write(src, dst, config, tagged)
    excluded = sorted({k[: -len(".weight")] for k, (tag, v) in tagged.items()
                       if k.endswith(".weight") and tag != "U8" and v.ndim == 2})
    (Path(dst) / "hf_quant_config.json").write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "0.29.0"},
        "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                         "exclude_modules": excluded}}, indent=2))
    return stored



# ---- (g) compressed-tensors pack-quantized int4 (moonshotai/Kimi-K2.5's routed experts) ------

_PER_EXPERT_WEIGHT = re.compile(r"\.experts\.\d+\.\w+\.weight$")


def to_compressed_tensors(src: Path, dst: Path, group_size: int = 32) -> Tensors:
    """Routed experts (per-expert 2-D weights) as compressed-tensors' pack-quantized format stores them
    (neuralmagic/compressed-tensors pack_quantized.py, the layout of moonshotai/Kimi-K2.5): symmetric int4
    per group of `group_size` inputs, q = clamp(round(w / s), -8, 7) with s = absmax / 7.5 (bfloat16),
    `weight_packed` int32 [out, in/8] holding q + 8 eight to a word (value j of a row at bits 4·(j mod 8)
    of word j // 8), `weight_scale` [out, in/group], `weight_shape` [2]; everything else float, as the
    release keeps it. Returns the values the file holds, q·s."""
    config, tensors = read(src)
    tagged, stored = {}, {}
    for key, value in tensors.items():
        if not _PER_EXPERT_WEIGHT.search(key):
            tagged[key], stored[key] = (DTYPE_TAGS[value.dtype], value), value
            continue
        w = np.array(value.astype(mx.float32))
        n_out, n_in = w.shape
        groups = w.reshape(n_out, n_in // group_size, group_size)
        scale = mx.array(np.abs(groups).max(-1) / 7.5).astype(mx.bfloat16)
        s = np.array(scale.astype(mx.float32))[..., None]
        q = np.clip(np.round(groups / s), -8, 7)
        unsigned = (q.reshape(n_out, n_in) + 8).astype(np.uint32)
        packed = np.zeros((n_out, n_in // 8), dtype=np.uint32)
        for i in range(8):
            packed |= unsigned[:, i::8] << (4 * i)
        base = key[: -len("weight")]
        tagged[base + "weight_packed"] = ("I32", mx.array(packed.view(np.int32)))
        tagged[base + "weight_scale"] = ("BF16", scale)
        tagged[base + "weight_shape"] = ("I32", mx.array([n_out, n_in], dtype=mx.int32))
        stored[key] = mx.array((q * s).reshape(n_out, n_in).astype(np.float32))
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["re:.*mlp\\.experts.*"], "input_activations": None,
                                      "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                  "strategy": "group", "group_size": group_size}}},
        "ignore": ["lm_head"]}
    _write(src, dst, config, tagged)
    return stored
