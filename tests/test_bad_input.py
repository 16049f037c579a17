"""Bad input: one clear line naming the file, key or option and what was expected; exit 1; no DST."""

from __future__ import annotations

import json

import pytest

from moequant.tiny import write_tiny_checkpoint


def _fails(cli, tmp_path, src, *options, match: str):
    dst = tmp_path / "dst"
    result = cli("convert", src, dst, *options, "--quiet")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: "), result.output
    assert match in " ".join(lines), result.output
    assert not dst.exists()
    assert not list(tmp_path.glob(".dst.moequant-*")), "temporary folder left behind"
    return result


def test_missing_config_json(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    (src / "config.json").unlink()
    _fails(cli, tmp_path, src, match="config.json: not found; expected a model folder with config.json")


def test_missing_shard_named_by_index(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", shards=3)
    (src / "model-00002-of-00003.safetensors").unlink()
    _fails(cli, tmp_path, src, match="model.safetensors.index.json: lists model-00002-of-00003.safetensors; "
                                     "expected it in")


def test_truncated_shard(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", shards=2)
    shard = src / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    _fails(cli, tmp_path, src, match="but the file has")
    _fails(cli, tmp_path, src, match="expected a complete shard (truncated download?)")


def test_index_names_a_tensor_no_shard_has(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral", shards=2)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.gate.weight"] = "model-00001-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails(cli, tmp_path, src, match="says model.layers.9.mlp.gate.weight is in model-00001-of-00002.safetensors; "
                                     "model-00001-of-00002.safetensors has no such tensor")


def test_unknown_model_type(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "qwen9_moe"}))
    _fails(cli, tmp_path, src, match="config.json: model_type 'qwen9_moe' is not supported by mlx-lm")


def test_dense_model_type_is_not_a_moe_family(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    _fails(cli, tmp_path, src, match="model_type 'llama' is not a supported MoE family; expected one of")


@pytest.mark.parametrize("options, match", [
    (["--mode", "nvfp4", "--group-size", "32"], "nvfp4 with bits=4, group_size=32; expected bits in [4] and group_size in [16]"),
    (["--mode", "mxfp4", "--bits", "3"], "mxfp4 with bits=3, group_size=32; expected bits in [4]"),
    (["--group-size", "16"], "affine with bits=4, group_size=16; expected bits in [2, 3, 4, 5, 6, 8] and group_size in [32, 64, 128]"),
    (["--dtype", "float8"], "--dtype float8: expected one of bfloat16, float16, float32"),
    (["--shard-size", "lots"], "--shard-size lots: expected a size like 5GB"),
])
def test_options_that_do_not_fit(tmp_path, cli, options, match):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    _fails(cli, tmp_path, src, *options, match=match)


def test_missing_expert_is_named(tmp_path, cli):
    from safetensors.numpy import load_file, save_file  # noqa: F401 (bf16 needs mlx below)
    import mlx.core as mx

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    weights = mx.load(str(src / "model.safetensors"))
    del weights["model.layers.1.mlp.experts.2.down_proj.weight"]
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    _fails(cli, tmp_path, src, match="model.layers.1.mlp.experts: missing expert(s) 2 for down_proj.weight; "
                                     "expected 4 experts (num_experts), found 3")


def test_expert_with_a_different_shape_is_named(tmp_path, cli):
    import mlx.core as mx

    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    weights = mx.load(str(src / "model.safetensors"))
    key = "model.layers.0.block_sparse_moe.experts.3.w2.weight"
    weights[key] = weights[key][:, :32]
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    _fails(cli, tmp_path, src, match=f"{key}: shape (128, 32); expected (128, 64) like expert 0")


def test_unknown_tensor_is_reported_not_dropped(tmp_path, cli):
    import mlx.core as mx

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    weights = mx.load(str(src / "model.safetensors"))
    weights["model.layers.0.mlp.mystery.weight"] = mx.zeros((4, 4))
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    _fails(cli, tmp_path, src, match="model.layers.0.mlp.mystery.weight: (4, 4) mlx.core.float32 matches no parameter")


def test_existing_dst_is_refused_without_force_and_left_alone(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    dst = tmp_path / "dst"
    assert cli("convert", src, dst, "--quiet").exit_code == 0  # a previous moequant output
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    result = cli("convert", src, dst, "--bits", "8", "--quiet")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {dst}: already exists; expected a new folder (or pass --force")
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert cli("convert", src, dst, "--bits", "8", "--force", "--quiet").exit_code == 0
    assert json.loads((dst / "config.json").read_text())["quantization"]["bits"] == 8


def test_force_leaves_a_folder_moequant_did_not_write_alone(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    result = cli("convert", src, dst, "--force", "--quiet")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {dst}: already exists and is not a moequant output")
    assert [p.name for p in dst.iterdir()] == ["keep.txt"] and (dst / "keep.txt").read_text() == "mine"


def test_not_a_folder_and_not_a_hub_id(tmp_path, cli):
    _fails(cli, tmp_path, tmp_path / "nowhere", match="no such folder; expected a checkpoint folder or a hub id")
