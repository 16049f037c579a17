"""Every MoE model_type transformers writes, converted and held to transformers' own forward pass.

The checkpoints are written by the producer (tests/producer.py: transformers' config class with
tiny dimensions, from_config, weights re-drawn, save_pretrained), so moequant's reading of a layout
or a config key is checked against transformers' — not against mlx-lm's float model, which shares
moequant's config reading. A model_type `moequant archs` calls supported must:
- convert with --no-quantize to logits within 1e-4 of transformers' (float32), top-1 equal;
- convert at 4 and 8 bits to logits no further from transformers' float ones than a simulated
  round trip of the same weights (producer.simulated_logits) is, and run quantized in its runner
  (mlx-lm; mlx-vlm for a text model only mlx-vlm runs: registry.TEXT_BY_MLX_VLM).
A model_type it does not support must be refused in one line.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from moequant.convert import Conversion  # noqa: E402
from moequant.errors import MoequantError  # noqa: E402
from moequant.evaluate import compare_logits, load_float32, text_logits  # noqa: E402
from moequant.formats import Quant  # noqa: E402
from moequant.registry import ARCHITECTURES, MODEL_TYPES, TEXT_BY_MLX_VLM, Status  # noqa: E402

from producer import (E, PRODUCED, TOKENS, model_class, produced, redraw,  # noqa: E402,F401  (a fixture)
                      simulated_logits, tiny_config, write_produced)

STATUS = {a.model_type: a.status for a in ARCHITECTURES}


def _status(model_type: str) -> Status | None:
    return STATUS.get(model_type, STATUS.get(MODEL_TYPES.get(model_type)))


SUPPORTED = [m for m in PRODUCED if _status(m) == Status.SUPPORTED]
REFUSED = [m for m in PRODUCED if _status(m) != Status.SUPPORTED]

# Both sides compute in float32 from the same float32 weights: only summation order differs
# (measured max |difference| 2.5e-6 .. 4e-5 over the supported model_types).
MAX_ABS = 1e-4


def _logits(dst) -> np.ndarray:
    out = load_float32(dst)(mx.array(TOKENS.astype(np.int32)))
    mx.eval(out)
    return np.array(out)


def test_every_model_type_is_supported_or_refused():
    assert set(SUPPORTED) | set(REFUSED) == set(PRODUCED)
    assert len(SUPPORTED) >= len(PRODUCED) - 8, REFUSED


def _differs(conversion: Conversion) -> list[str]:
    """The plan's notes saying mlx-lm's model differs from transformers' (moequant.ignored)."""
    return [n for n in conversion.plan.notes if "differs from transformers" in n]


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_no_quantize_matches_transformers_or_says_why_not(tmp_path, produced, model_type):
    src, reference = produced(model_type)
    conversion = Conversion(src, None, dtype="float32")
    list(conversion.run(tmp_path / "dst"))
    closeness = compare_logits(mx.array(reference), mx.array(_logits(tmp_path / "dst")))
    if _differs(conversion):  # said, and true: never silently wrong, never a spurious warning
        assert closeness.max_abs > 100 * MAX_ABS, closeness
    else:
        assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("model_type", SUPPORTED)
def test_quantized_is_within_a_simulated_round_trip(tmp_path, produced, model_type, bits):
    src, reference = produced(model_type)
    conversion = Conversion(src, Quant.make("affine", bits, 64), dtype="float32")
    if _differs(conversion):
        pytest.skip("mlx-lm's model differs from transformers' (the float test checks the note)")
    list(conversion.run(tmp_path / "dst"))
    ours = compare_logits(mx.array(reference), mx.array(_logits(tmp_path / "dst")))
    # the simulation keeps float what the plan keeps where transformers has the same module path
    # (the model's own exclusions: Ling 3.0's embeddings and MLA projections, LongCat's ...)
    keep = frozenset(r.path for r in conversion.plan.rows if r.quant is None) | frozenset(
        r.role.value for r in conversion.plan.rows if r.quant is None and r.role.value in ("embedding", "lm_head"))
    simulated = compare_logits(mx.array(reference), mx.array(simulated_logits(model_type, src, bits, keep=keep)))
    # The simulation quantizes every matrix the plan does, where the paths agree; the real plan
    # differs in a few (MLA's kv_b_proj is quantized as mlx-lm's two halves). Measured ratio
    # ours/simulated KL: 1.00 for most model_types, 0.99-1.03 for the MLA ones, at 4 and 8 bits.
    # A wrong layout or a module quantized along its output dimension is many times further.
    assert ours.kl <= 1.1 * simulated.kl + 1e-4, (ours, simulated)

    # the quantized model runs in its runner itself (mlx-lm's loader, or mlx-vlm's for an output for mlx-vlm)
    if conversion.runner == "mlx-vlm":
        from mlx_vlm.utils import load_model

        model = load_model(tmp_path / "dst")
    else:
        from mlx_lm.utils import load_model

        model, _ = load_model(tmp_path / "dst")
    quantized = text_logits(model, mx.array(TOKENS.astype(np.int32)))
    mx.eval(quantized)
    assert np.isfinite(np.array(quantized)).all()


@pytest.mark.parametrize("model_type", [m for m in SUPPORTED if m in TEXT_BY_MLX_VLM])
def test_a_text_model_only_mlx_vlm_runs_converts_for_mlx_vlm_and_is_refused_for_mlx_lm(tmp_path, produced, model_type):
    src, _ = produced(model_type)
    conversion = Conversion(src, None, dtype="float32")
    assert conversion.runner == "mlx-vlm"
    assert any(n.startswith(f"output for mlx-vlm: mlx-lm has no {model_type} model") for n in conversion.plan.notes), conversion.plan.notes
    card = conversion.card()
    assert "from mlx_vlm import load" in card
    if PRODUCED[model_type].model_class.endswith("ForCausalLM"):  # a causal LM generates text
        assert "pipeline_tag: text-generation" in card
    else:  # a token classifier labels tokens
        assert PRODUCED[model_type].model_class.endswith("ForTokenClassification")
        assert "pipeline_tag: token-classification" in card
    with pytest.raises(MoequantError, match=rf"^config.json: model_type '{model_type}' is not supported by mlx-lm "):
        Conversion(src, runner="mlx-lm")


def _flint_unnormalized(layers) -> None:
    """transformers' Flint router with norm_topk_prob false: the chosen experts' sigmoid scores as they are."""
    def route(block, x):
        scores = mx.sigmoid(block.gate(x).astype(mx.float32))
        indices = mx.argpartition(scores + block.expert_bias, kth=-block.top_k, axis=-1)[..., -block.top_k:]
        return indices, mx.take_along_axis(scores, indices, axis=-1)

    for layer in layers:
        if "switch_mlp" in layer.mlp:
            layer.mlp.route = lambda x, block=layer.mlp: route(block, x)


def _cohere2_softmax_over_chosen(layers) -> None:
    """transformers' Cohere2Moe router: softmax over the chosen experts' logits (renormalized all-expert softmax)."""
    for layer in layers:
        if "switch_mlp" in layer.mlp:
            layer.mlp.norm_topk_prob = True


def _cohere2_linear_rope(layers) -> None:
    """transformers' linear RoPE scaling (rope_parameters factor 2) in place of mlx-vlm's plain RoPE."""
    for layer in layers:
        layer.self_attn.rope = nn.RoPE(layer.self_attn.head_dim, traditional=True, base=10000.0, scale=0.5)


def _cohere2_sliding_prefix(layers) -> None:
    """transformers' sliding window in the dense first layer that layer_types makes sliding."""
    layers[0].self_attn.use_sliding_window = True


class _LastDimsRope:
    """A rope that rotates the last `dims` features of each head, as transformers' HYV4Indexer does."""

    def __init__(self, rope, dims: int):
        self.rope, self.dims = rope, dims

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        cut = x.shape[-1] - self.dims
        return mx.concatenate([x[..., :cut], self.rope(x[..., cut:], offset=offset)], axis=-1)


def _hy_v4_indexer_last_dims(layers) -> None:
    """transformers' HYV4Indexer: RoPE on the last qk_rope_head_dim features of each indexer head."""
    for indexer in (layer.self_attn.indexer for layer in layers if layer.self_attn.indexer is not None):
        indexer.rope = _LastDimsRope(indexer.rope, indexer.rope_head_dim)


def _hy_v4_clamped_swiglu(limit: float):
    """transformers' HYV4Experts._apply_gate: the gate clamped from above at `limit`, up within ±limit."""
    def undo(layers) -> None:
        for layer in layers:
            if "switch_mlp" in layer.mlp:
                layer.mlp.switch_mlp.activation = lambda up, gate: nn.silu(mx.minimum(gate, limit)) * mx.clip(
                    up, -limit, limit)
    return undo


def _deepseek_v4_exact_top_k(layers) -> None:
    """transformers' DeepseekV4Indexer: the exact top index_topk (index_block 0 turns mlx-vlm's HISA off)."""
    for layer in layers:
        if "indexer" in layer.attn:
            layer.attn.indexer.index_block = 0


# Producer checkpoints (extra config over the row's) where mlx-vlm's model for a text model computes otherwise than
# transformers' (registry ignored_by_vlm rows), and the difference undone on the loaded model
DIFFERS_BY_MLX_VLM = {
    "flint norm_topk_prob": ("flint", {"norm_topk_prob": False}, _flint_unnormalized),
    "cohere2_moe norm_topk_prob": ("cohere2_moe", {"norm_topk_prob": False}, _cohere2_softmax_over_chosen),
    "cohere2_moe rope": ("cohere2_moe", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
                         _cohere2_linear_rope),
    "cohere2_moe sliding prefix": ("cohere2_moe", {"first_k_dense_replace": None,
                                                   "mlp_layer_types": ["dense", "sparse", "sparse"]},
                                   _cohere2_sliding_prefix),
    # prompts longer than index_topk; a SwiGLU clamp the experts' inputs pass
    "hy_v4 index_topk": ("hy_v4", {"index_topk": 8}, _hy_v4_indexer_last_dims),
    "hy_v4 swiglu_limit": ("hy_v4", {"swiglu_limit": 0.5}, _hy_v4_clamped_swiglu(0.5)),
    # mlx-vlm's hierarchical top-k from 4 compressed entries on (its own config keys, which transformers keeps)
    "deepseek_v4 hisa": ("deepseek_v4", {"index_block": 2, "index_keep": 2}, _deepseek_v4_exact_top_k),
}


@pytest.mark.parametrize("case", DIFFERS_BY_MLX_VLM)
def test_where_mlx_vlm_differs_from_transformers_the_plan_says_so_and_that_is_the_whole_difference(
        tmp_path, monkeypatch, case):
    model_type, extra, undo = DIFFERS_BY_MLX_VLM[case]
    row = PRODUCED[model_type]
    monkeypatch.setitem(PRODUCED, model_type, replace(row, extra={**row.extra, **extra}))
    reference = mx.array(write_produced(tmp_path / "src", model_type))
    conversion = Conversion(tmp_path / "src", None, dtype="float32")
    assert len(_differs(conversion)) == 1 and _differs(conversion)[0].startswith(f"mlx-vlm's {model_type} differs")
    list(conversion.run(tmp_path / "dst"))
    ours = load_float32(tmp_path / "dst")
    ids = mx.array(TOKENS.astype(np.int32))
    assert compare_logits(reference, ours(ids)).max_abs > 100 * MAX_ABS
    undo(ours.model.language_model.model.layers)
    closeness = compare_logits(reference, ours(ids))
    assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness


@pytest.mark.parametrize("model_type", ["kolibri1", "hy_v4", "deepseek_v4"])
def test_a_router_correction_bias_reaches_mlx_vlm(tmp_path, model_type):
    """Routers' e_score_correction_bias and DeepSeek-V4's hash table tid2eid (a token's experts) are buffers (the
    producer's redraw leaves them zero): drawn here, they change which experts transformers picks, and the output
    picks the same."""
    config = tiny_config(model_type)
    model = model_class(model_type).from_config(config, dtype=torch.float32).eval()
    redraw(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        buffers = [(n, b) for n, b in model.named_buffers() if n.endswith(("e_score_correction_bias", "tid2eid"))]
        assert buffers
        for name, buffer in buffers:
            if name.endswith("tid2eid"):  # [vocab, top_k]: distinct experts per token
                buffer.copy_(torch.stack([torch.randperm(E, generator=g)[: buffer.shape[1]] for _ in buffer]))
            else:
                buffer.copy_(2 * torch.randn(E, generator=g))
        reference = model(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()
    model.save_pretrained(tmp_path / "src")
    list(Conversion(tmp_path / "src", None, dtype="float32").run(tmp_path / "dst"))
    closeness = compare_logits(mx.array(reference), mx.array(_logits(tmp_path / "dst")))
    assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness


@pytest.mark.parametrize("model_type", REFUSED)
def test_unsupported_model_type_is_refused_in_one_line(tmp_path, produced, model_type):
    src, _ = produced(model_type)
    with pytest.raises(MoequantError) as e:
        list(Conversion(src).run(tmp_path / "dst"))
    assert "\n" not in str(e.value) and model_type in str(e.value)
    assert not (tmp_path / "dst").exists()


# mlx_lm.convert's own output of the same producer checkpoint, the other producer: mlx-lm's dbrx has no
# quant_predicate, so mlx_lm.convert quantizes the router gates (ffn.router.layer) with everything else
@pytest.mark.parametrize("bits,gate_bits", [(4, None), (8, None), (8, 8)])
@pytest.mark.parametrize("model_type", ["dbrx"])
def test_every_tensor_equals_mlx_lm_converts_but_the_float_router_gates(tmp_path, produced, model_type, bits,
                                                                          gate_bits):
    import json
    import shutil

    from mlx_lm.convert import convert

    from moequant.tiny import byte_tokenizer

    src, _ = produced(model_type)
    with_tokenizer = shutil.copytree(src, tmp_path / "src")  # mlx_lm.convert loads a tokenizer too
    (with_tokenizer / "tokenizer.json").write_text(json.dumps(byte_tokenizer()))
    (with_tokenizer / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    convert(str(with_tokenizer), str(tmp_path / "theirs"), quantize=True, q_bits=bits, q_group_size=64,
            dtype="float32")
    conversion = Conversion(src, Quant.make("affine", bits, 64), dtype="float32", gate_bits=gate_bits)
    list(conversion.run(tmp_path / "ours"))
    ours, theirs = (mx.load(str(tmp_path / d / "model.safetensors")) for d in ("ours", "theirs"))
    gates = {r.path for r in conversion.plan.rows if r.role.value == "router_gate"}
    assert len(gates) == 3 and all(r.quant is not None for r in conversion.plan.rows if r.role.value == "routed_experts")
    differ = {k for k in ours.keys() | theirs.keys()
              if k not in ours or k not in theirs or ours[k].dtype != theirs[k].dtype
              or not mx.array_equal(ours[k], theirs[k])}
    if gate_bits is None:  # kept float: weight float32 [E, H] here, packed weight, scales and biases there
        assert differ == {f"{g}.{s}" for g in gates for s in ("weight", "scales", "biases")}
        assert all(ours[f"{g}.weight"].dtype == mx.float32 for g in gates)
    else:
        assert differ == set()


def test_a_row_block_that_the_expert_count_does_not_divide_is_refused_in_one_line(tmp_path, produced):
    import shutil

    src, _ = produced("dbrx")
    bad = shutil.copytree(src, tmp_path / "src")
    tensors = mx.load(str(bad / "model.safetensors"))
    key = "transformer.blocks.1.ffn.experts.mlp.w2"
    tensors[key] = tensors[key][:-2]
    mx.save_safetensors(str(bad / "model.safetensors"), tensors, metadata={"format": "pt"})
    with pytest.raises(MoequantError, match=rf"^{key}: shape \(254, 128\); expected \[E·rows, cols\], rows a "
                                            r"multiple of E=4 \(num_experts\)$"):
        list(Conversion(bad).run(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()
