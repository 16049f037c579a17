"""Config aliases (transformers 5 key names) and where SRC comes from (folder, hub cache, offline)."""

from __future__ import annotations

import json

import pytest

from moequant.convert import Conversion
from moequant.evaluate import compare_logits, load_float32
from moequant.tiny import ROPE_THETA, write_tiny_checkpoint

from conftest import TOKENS, logits_of, moequant


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_rope_parameters_alias_is_applied_where_mlx_lm_would_silently_default(tmp_path, reference_logits, arch):
    """mlx-lm's mixtral/qwen2_moe default rope_theta to 1e6; the checkpoint says 1e4 only inside
    transformers 5's rope_parameters. Missing the alias loads fine and computes other logits."""
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    assert "rope_theta" not in json.loads((src / "config.json").read_text())
    conversion = Conversion(src)
    list(conversion.run(tmp_path / "dst"))
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["rope_theta"] == ROPE_THETA
    assert any(note.startswith("rope_theta = 10000.0") for note in conversion.plan.notes)
    assert compare_logits(reference_logits(arch), logits_of(tmp_path / "dst")).max_abs <= 1e-4

    # The same comparison has teeth: the config a converter that ignores rope_parameters writes
    # (mlx-lm then uses its 1e6 default) gives logits far outside the bound.
    wrong = write_tiny_checkpoint(tmp_path / "wrong", arch, style="legacy")
    config = json.loads((wrong / "config.json").read_text())
    del config["rope_theta"]
    (wrong / "config.json").write_text(json.dumps(config))
    assert compare_logits(reference_logits(arch), load_float32(wrong)(TOKENS)).max_abs > 1e-2


def test_num_local_experts_alias_reaches_qwen3_moe(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    config = json.loads((src / "config.json").read_text())
    assert "num_experts" not in config and config["num_local_experts"] == 4
    list(Conversion(src).run(tmp_path / "dst"))
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["num_experts"] == 4


def _moequant(*args, env):
    return moequant(*args, env=env)


def test_hub_id_not_in_cache_offline_is_one_clear_error(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = _moequant("convert", "tiny-org/tiny-moe", tmp_path / "dst", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: tiny-org/tiny-moe: not a local folder and not available in "
                                            "the local Hugging Face cache (offline mode)")
    assert not (tmp_path / "dst").exists()


def test_hub_id_resolves_through_the_local_cache_offline(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-moe"
    write_tiny_checkpoint(repo / "snapshots" / commit, "qwen3_moe")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = _moequant("convert", "tiny-org/tiny-moe", tmp_path / "dst", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dst" / "model.safetensors").exists()
