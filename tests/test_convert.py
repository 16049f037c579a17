"""End to end: tiny published-layout checkpoints -> convert -> real mlx-lm load -> logits."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model, quantize_model

from moequant.convert import Conversion
from moequant.evaluate import compare_logits
from moequant.formats import Quant
from moequant.tiny import ARCHS, write_tiny_checkpoint

from conftest import layers_repeated, logits_of

# Bounds measured on these tiny random models (2 layers, 4 experts, hidden 128) against the float
# reference; the figures seen are in the comments. Random weights put routing near ties, so a
# few flipped expert choices dominate the error (deepseek_v3's sigmoid router most of all: its
# 8-bit figures equal mlx-lm's own 8-bit quantization of the same weights).
MODES = {
    # name: (options, min cosine, max KL)        seen: cosine / KL, worst arch
    "affine8": (["--bits", "8"], 0.985, 0.02),  # 0.9916 / 0.0084 (deepseek_v3), others ≥ 0.9992
    "affine4": (["--bits", "4"], 0.90, 0.15),  # 0.931 / 0.066 (deepseek_v3), others ≥ 0.972
    "mxfp4": (["--mode", "mxfp4"], 0.88, 0.18),  # 0.919 / 0.078 (deepseek_v3), others ≥ 0.960
    "nvfp4": (["--mode", "nvfp4"], 0.90, 0.15),  # 0.931 / 0.064 (deepseek_v3), others ≥ 0.972
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_output_loads_in_mlx_lm_and_stays_close_to_float(tmp_path, cli, reference_logits, arch, mode):
    args, min_cosine, max_kl = MODES[mode]
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    result = cli("convert", src, tmp_path / "dst", *args, "--quiet")
    assert result.exit_code == 0, result.output
    closeness = compare_logits(reference_logits(arch), logits_of(tmp_path / "dst"))
    assert closeness.cosine >= min_cosine and closeness.kl <= max_kl, closeness


@pytest.mark.parametrize("arch", ARCHS)
def test_no_quantize_reproduces_float_logits(tmp_path, cli, reference_logits, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    assert cli("convert", src, tmp_path / "dst", "--no-quantize", "--quiet").exit_code == 0
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    closeness = compare_logits(reference_logits(arch), logits_of(tmp_path / "dst"))
    assert closeness.max_abs <= 1e-4, closeness


@pytest.mark.parametrize("arch", ARCHS)
def test_output_loads_with_mlx_lm_load_and_tokenizer(tmp_path, arch):
    import mlx_lm

    src = write_tiny_checkpoint(tmp_path / "src", arch)
    list(Conversion(src, Quant.make("affine", 4)).run(tmp_path / "dst"))
    model, tokenizer = mlx_lm.load(str(tmp_path / "dst"))
    assert tokenizer.encode("def f():", add_special_tokens=False) == list(b"def f():")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "dst" / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_equals_mlx_lm_quantizing_the_same_modules(tmp_path, arch, mode):
    """Exactly as if mlx-lm had produced it: same packed weights, scales and biases per module."""
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    legacy = write_tiny_checkpoint(tmp_path / "legacy", arch, style="legacy")
    conversion = Conversion(src, Quant.make(mode))
    list(conversion.run(tmp_path / "dst"))
    ours, _ = load_model(tmp_path / "dst")
    theirs, config = load_model(legacy)
    rows = conversion.plan.by_path
    quantize_model(theirs, config, None, None, mode=mode,
                   quant_predicate=lambda p, m: rows[p].quant.to_dict() if rows[p].quant else False)
    ours, theirs = dict(tree_flatten(ours.parameters())), dict(tree_flatten(theirs.parameters()))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and mx.array_equal(ours[key], theirs[key]), key


def test_sharded_source_converts_like_a_single_file(tmp_path):
    one = write_tiny_checkpoint(tmp_path / "one", "qwen2_moe")
    three = write_tiny_checkpoint(tmp_path / "three", "qwen2_moe", shards=3)
    assert len(list(three.glob("model-*-of-00003.safetensors"))) == 3
    for src, dst in ((one, "a"), (three, "b")):
        list(Conversion(src, Quant.make("affine", 4)).run(tmp_path / dst))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_source_dtypes_convert_and_dtype_option_sets_float_tensors(tmp_path, cli, dtype):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral", dtype=dtype)
    assert cli("convert", src, tmp_path / "dst", "--dtype", "float16", "--quiet").exit_code == 0
    weights = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    assert weights["model.norm.weight"].dtype == mx.float16
    assert weights["model.layers.0.block_sparse_moe.gate.weight"].dtype == mx.float16
    assert weights["lm_head.scales"].dtype == mx.float16


def test_demo_runs_and_reports_closeness(tmp_path, cli):
    result = cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "4-bit vs float logits: top-1 agreement" in result.output


def test_demo_ends_with_its_output_and_three_commands_that_work(tmp_path, cli):
    demo = tmp_path / "demo"
    lines = cli("demo", "--out", demo, "--arch", "mixtral").output.splitlines()
    assert lines[-5].startswith(f"output: {demo / 'mixtral-4bit'} ") and lines[-4] == "next, try:"
    assert [line.split()[:2] for line in lines[-3:]] == [["moequant", "inspect"], ["moequant", "verify"],
                                                        ["moequant", "convert"]]
    for line in lines[-3:]:
        result = cli(*line.split()[1:])
        assert result.exit_code == 0, (line, result.output)


def test_shard_size_limit_splits_output_into_an_indexed_set_with_the_same_tensors(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen2_moe")
    assert cli("convert", src, tmp_path / "one", "--quiet").exit_code == 0
    assert cli("convert", src, tmp_path / "many", "--shard-size", "100KB", "--quiet").exit_code == 0
    shards = sorted((tmp_path / "many").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "many" / "model.safetensors").exists()
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    one = mx.load(str(tmp_path / "one" / "model.safetensors"))
    many = {}
    for shard in shards:
        many.update(mx.load(str(shard)))
    assert one.keys() == many.keys() == index["weight_map"].keys()
    assert all(mx.array_equal(one[k], many[k]) for k in one)
    assert compare_logits(logits_of(tmp_path / "one"), logits_of(tmp_path / "many")).max_abs == 0


def test_the_dry_run_walks_each_layer_once_and_opens_each_shard_once(tmp_path, monkeypatch):
    """The manifest (a dry run of every group) packs each group's modules walking only their decoder
    layer, not the whole model once per group (which grew with the square of the layers), and
    opens each source shard once, not once per group that reads it."""
    import mlx.nn as nn

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    walked, opened = [], []
    leaf_modules, load = nn.Module.leaf_modules, mx.load
    monkeypatch.setattr(nn.Module, "leaf_modules", lambda self: (walked.append(len(tree_flatten(
        leaf_modules(self), is_leaf=lambda m: isinstance(m, nn.Module)))), leaf_modules(self))[1])
    monkeypatch.setattr(mx, "load", lambda file, *a, **k: (opened.append(file), load(file, *a, **k))[1])
    visited = {}
    for layers in (2, 8):
        deep = layers_repeated(src, tmp_path / f"l{layers}", layers, shards=2)
        conversion = Conversion(deep, Quant.make("affine", 4))
        walked.clear(), opened.clear()
        entries = conversion.manifest()
        assert sorted(set(opened)) == sorted(opened) and len(opened) == 2
        assert any(".layers.7." in k for k, _, _ in entries) or layers == 2
        visited[layers] = sum(walked)
    # 4x the layers: about 4x the modules walked (each layer's own, and the rest's walk of the model once);
    # a walk of the whole model per group visited 4 x 9 / 3 = 12x as many
    assert visited[8] < 6 * visited[2], visited
