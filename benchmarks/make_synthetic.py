#!/usr/bin/env python
"""Write a synthetic Qwen3-MoE checkpoint in the sharded Hugging Face layout, for benchmarks.

The checkpoint looks like a published Qwen3-MoE release: config.json (model_type qwen3_moe),
`model-0000i-of-0000n.safetensors` shards + `model.safetensors.index.json`, per-expert tensors
`model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight`, q/k/v/o projections with
q_norm/k_norm, layernorms, the router `mlp.gate.weight`, embed_tokens, norm and lm_head, plus a
byte-level tokenizer (tokenizer.json + tokenizer_config.json) so that `mlx_lm.convert` can load it.

Values are random (normal * 0.02 for matrices, 1 + small noise for norms), seeded per tensor name,
so the same tensor has the same values whatever the sharding. The model is written one shard at a
time: at most one shard (--shard-size, default 2GB) is held in memory.

    python benchmarks/make_synthetic.py /work/bench-data/qwen3moe-2.8gb --target-gb 2.8

`--target-gb` picks num_hidden_layers for the given dimensions (at least 1); `--layers` sets it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mlx.core as mx

from moequant.tiny import byte_tokenizer

DTYPES = {"bfloat16": (mx.bfloat16, 2), "float16": (mx.float16, 2), "float32": (mx.float32, 4)}
INDEX_FILE = "model.safetensors.index.json"


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1.5GiB', '123' (bytes) -> bytes (GB = 1e9, GiB = 2**30)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size like 2GB, 500MB or 1.5GiB")
    unit = (m[2] or "").upper().rstrip("B")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m[1]) * scale)


def layer_tensors(a: argparse.Namespace, l: int) -> list[tuple[str, tuple[int, ...]]]:
    """One decoder layer's tensors, in the order transformers' state dict has them."""
    p = f"model.layers.{l}"
    q_out, kv_out = a.heads * a.head_dim, a.kv_heads * a.head_dim
    t = [
        (f"{p}.self_attn.q_proj.weight", (q_out, a.hidden)),
        (f"{p}.self_attn.k_proj.weight", (kv_out, a.hidden)),
        (f"{p}.self_attn.v_proj.weight", (kv_out, a.hidden)),
        (f"{p}.self_attn.o_proj.weight", (a.hidden, q_out)),
        (f"{p}.self_attn.q_norm.weight", (a.head_dim,)),
        (f"{p}.self_attn.k_norm.weight", (a.head_dim,)),
        (f"{p}.mlp.gate.weight", (a.experts, a.hidden)),
    ]
    for e in range(a.experts):
        t += [
            (f"{p}.mlp.experts.{e}.gate_proj.weight", (a.moe_intermediate, a.hidden)),
            (f"{p}.mlp.experts.{e}.up_proj.weight", (a.moe_intermediate, a.hidden)),
            (f"{p}.mlp.experts.{e}.down_proj.weight", (a.hidden, a.moe_intermediate)),
        ]
    t += [(f"{p}.input_layernorm.weight", (a.hidden,)), (f"{p}.post_attention_layernorm.weight", (a.hidden,))]
    return t


def outer_tensors(a: argparse.Namespace) -> tuple[list, list]:
    """Tensors before the layers (embedding) and after them (final norm, lm_head)."""
    head = [("model.embed_tokens.weight", (a.vocab, a.hidden))]
    tail = [("model.norm.weight", (a.hidden,))]
    if not a.tie_word_embeddings:
        tail.append(("lm_head.weight", (a.vocab, a.hidden)))
    return head, tail


def nbytes(tensors, itemsize: int) -> int:
    return sum(math.prod(shape) * itemsize for _, shape in tensors)


def pick_layers(a: argparse.Namespace, itemsize: int) -> int:
    head, tail = outer_tensors(a)
    fixed = nbytes(head + tail, itemsize)
    per_layer = nbytes(layer_tensors(a, 0), itemsize)
    return max(1, round((a.target_gb * 1e9 - fixed) / per_layer))


def config_json(a: argparse.Namespace, layers: int) -> dict:
    """config.json with every key mlx-lm's qwen3_moe ModelArgs requires (and the usual extras)."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": a.hidden,
        "num_hidden_layers": layers,
        "intermediate_size": a.intermediate,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "num_experts": a.experts,
        "num_experts_per_tok": a.experts_per_tok,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": a.moe_intermediate,
        "norm_topk_prob": True,
        "rms_norm_eps": 1e-6,
        "vocab_size": a.vocab,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": a.tie_word_embeddings,
        "max_position_embeddings": 40960,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "use_sliding_window": False,
        "max_window_layers": layers,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": a.dtype,
        "transformers_version": "4.51.0",
    }


def make_tensor(name: str, shape: tuple[int, ...], dtype, seed: int) -> mx.array:
    """Matrices ~ N(0, 0.02²); 1-D norms ~ 1 + N(0, 0.02²); seeded by the tensor's name."""
    key = mx.random.key((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32))
    value = mx.random.normal(shape, dtype=mx.float32, key=key) * 0.02
    if len(shape) == 1:
        value = value + 1.0
    return value.astype(dtype)


def plan_shards(tensors, itemsize: int, shard_size: int) -> list[list]:
    """Greedy split in order: a new shard whenever the next tensor would pass shard_size."""
    shards, current, size = [], [], 0
    for name, shape in tensors:
        n = math.prod(shape) * itemsize
        if current and size + n > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    if current:
        shards.append(current)
    return shards


def write_shard(path: str, shard: list, dtype_name: str, seed: int) -> int:
    """One shard file; returns its tensor bytes. Runs in a worker process with --jobs > 1."""
    dtype = DTYPES[dtype_name][0]
    arrays = {name: make_tensor(name, tuple(shape), dtype, seed) for name, shape in shard}
    mx.eval(list(arrays.values()))
    mx.save_safetensors(path, arrays, metadata={"format": "pt"})
    written = sum(v.nbytes for v in arrays.values())
    del arrays
    mx.clear_cache()
    return written


class _Serial:
    """ProcessPoolExecutor's submit/result, run in this process one call at a time (lazily)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        class Later:
            def result(self):
                return fn(*args)
        return Later()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("dst", type=Path, help="output folder (must not exist unless --force)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--target-gb", type=float, default=6.0,
                      help="approximate total size in GB (1e9 bytes): picks num_hidden_layers (>= 1)")
    size.add_argument("--layers", type=int, help="num_hidden_layers (overrides --target-gb)")
    ap.add_argument("--experts", type=int, default=64, help="num_experts")
    ap.add_argument("--experts-per-tok", type=int, default=8, help="num_experts_per_tok")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden_size")
    ap.add_argument("--moe-intermediate", type=int, default=768, help="moe_intermediate_size (per expert)")
    ap.add_argument("--intermediate", type=int, default=6144,
                    help="intermediate_size (dense MLP; unused: every layer is MoE)")
    ap.add_argument("--heads", type=int, default=32, help="num_attention_heads")
    ap.add_argument("--kv-heads", type=int, default=4, help="num_key_value_heads")
    ap.add_argument("--head-dim", type=int, default=128, help="head_dim")
    ap.add_argument("--vocab", type=int, default=32768,
                    help="vocab_size (Qwen3's is 151936; smaller keeps the experts the bulk, as in real MoEs)")
    ap.add_argument("--tie-word-embeddings", action="store_true", help="no lm_head.weight")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--shard-size", type=parse_size, default=parse_size("2GB"),
                    help="largest shard (e.g. 2GB, 500MB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace DST if it exists")
    ap.add_argument("--jobs", type=int, default=1,
                    help="shards written at once, one process each (each holds one shard in memory); "
                         "the bytes are the same whatever the number")
    ap.add_argument("--dry-run", action="store_true", help="print the layout and size, write nothing")
    a = ap.parse_args(argv)

    dtype, itemsize = DTYPES[a.dtype]
    layers = a.layers if a.layers is not None else pick_layers(a, itemsize)
    head, tail = outer_tensors(a)
    tensors = head + [t for l in range(layers) for t in layer_tensors(a, l)] + tail
    total = nbytes(tensors, itemsize)
    shards = plan_shards(tensors, itemsize, a.shard_size)
    n = len(shards)
    files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    print(f"{a.dst}: qwen3_moe, {layers} layers x {a.experts} experts, hidden {a.hidden}, "
          f"expert intermediate {a.moe_intermediate}, vocab {a.vocab}, {a.dtype}: {len(tensors)} tensors, "
          f"{total / 1e9:.3f} GB ({total / 2**30:.3f} GiB) in {n} shard(s)", file=sys.stderr)
    if a.layers is None and abs(total / 1e9 - a.target_gb) > 0.25 * a.target_gb:
        print(f"warning: {total / 1e9:.3f} GB is far from --target-gb {a.target_gb}: one layer is "
              f"{nbytes(layer_tensors(a, 0), itemsize) / 1e9:.3f} GB with these dimensions", file=sys.stderr)
    if a.dry_run:
        return 0

    if a.dst.exists():
        if not a.force:
            print(f"error: {a.dst} exists (pass --force to replace it)", file=sys.stderr)
            return 1
        shutil.rmtree(a.dst)
    a.dst.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(a.dst.parent).free
    if free < total * 1.05:
        print(f"error: {a.dst.parent}: {free / 1e9:.1f} GB free; need {total / 1e9:.1f} GB", file=sys.stderr)
        return 1
    tmp = a.dst.parent / f".{a.dst.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    start = time.time()
    weight_map = {}
    with ProcessPoolExecutor(max(1, a.jobs)) if a.jobs > 1 else _Serial() as pool:
        futures = [pool.submit(write_shard, str(tmp / file), shard, a.dtype, a.seed) for shard, file in zip(shards, files)]
        for shard, file, future in zip(shards, files, futures):
            written = future.result()
            weight_map.update((name, file) for name, _ in shard)
            print(f"  {file}: {len(shard)} tensors, {written / 1e9:.3f} GB ({time.time() - start:.0f} s)",
                  file=sys.stderr)

    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(config_json(a, layers), indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"_from_model_config": True, "use_cache": True}))
    (tmp / "tokenizer.json").write_text(json.dumps(byte_tokenizer()))
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    tmp.rename(a.dst)
    print(f"{a.dst}: done in {time.time() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
