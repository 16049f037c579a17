"""Architecture knowledge as data: one row per model_type, and config-key aliases.

Adding a family means adding a row here and a layout in `tiny.py`; the pipeline has no
`if model_type == …`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    experts: str  # per-expert container inside a decoder layer (source layout)
    stacked: str  # what the mlx-lm class loads: [E, out, in] per projection
    projections: dict[str, str]  # source projection name -> stacked projection name
    num_experts_keys: tuple[str, ...] = ("num_experts",)  # config keys naming E, first found wins
    fused: str = "halves"  # how `<experts>.gate_up_proj` splits: a key of experts.FUSED_SPLITTERS


_GLU = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}

FAMILIES: dict[str, Family] = {
    # Qwen/Qwen3-30B-A3B: model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight
    "qwen3_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts", "num_local_experts")),
    # Qwen/Qwen1.5-MoE-A2.7B: as qwen3_moe, plus mlp.shared_expert.* and mlp.shared_expert_gate
    "qwen2_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts", "num_local_experts")),
    # mistralai/Mixtral-8x7B-v0.1: block_sparse_moe.experts.{e}.w1 (gate) / w3 (up) / w2 (down)
    "mixtral": Family(
        "block_sparse_moe.experts",
        "block_sparse_moe.switch_mlp",
        {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"},
        ("num_local_experts", "num_experts"),
    ),
    # deepseek-ai/DeepSeek-V3: mlp.experts.{e}.*, mlp.shared_experts.*, mlp.gate.e_score_correction_bias
    "deepseek_v3": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
}


@dataclass(frozen=True)
class Alias:
    """`key` is what mlx-lm's ModelArgs reads; `sources` are other spellings, tried in order.

    A dotted source (`rope_parameters.rope_theta`) reads a nested key. An alias only fills a key
    that the config lacks, and only when the target ModelArgs takes that key.
    """

    key: str
    sources: tuple[str, ...]
    note: str = field(default="", compare=False)


CONFIG_ALIASES: tuple[Alias, ...] = (
    # transformers 5 moved rope_theta under rope_parameters; mlx-lm's mixtral and qwen2_moe
    # default rope_theta to 1e6, so a missed alias loads silently and computes wrong logits.
    Alias("rope_theta", ("rope_parameters.rope_theta",), "transformers 5"),
    # transformers 5 writes num_local_experts for the Qwen MoE families; mlx-lm reads num_experts
    Alias("num_experts", ("num_local_experts", "n_routed_experts"), "transformers 5"),
    Alias("num_local_experts", ("num_experts",), "older Mixtral-style exports"),
    # VLM-era configs may spell the dtype either way
    Alias("torch_dtype", ("dtype",), "transformers 5"),
)

# rope_parameters.rope_type values that mean "no scaling" (anything else becomes rope_scaling)
PLAIN_ROPE_TYPES = ("default", None)
