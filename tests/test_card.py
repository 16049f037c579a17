"""What every output carries to be published: a model card huggingface_hub parses, SRC's license
files, and the plan that reproduces it (issue 17)."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from moequant.card import CARD_FILE, PLAN_FILE
from moequant.tiny import write_tiny_checkpoint
from moequant.writer import MARK_FILE

from conftest import moequant


def _convert(cli, src, dst, *args):
    result = cli("convert", src, dst, *args, "--quiet")
    assert result.exit_code == 0, result.output
    return ModelCard.load(dst / CARD_FILE)


def test_every_output_has_a_card_huggingface_hub_parses(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    card = _convert(cli, src, tmp_path / "dst", "--bits", "4")
    data = card.data.to_dict()
    assert data == {"library_name": "mlx", "pipeline_tag": "text-generation",
                    "tags": ["mlx", "moequant", "4-bit", "moe"]}  # a local SRC without a card: no base_model
    assert CARD_FILE in json.loads((tmp_path / "dst" / MARK_FILE).read_text())["files"]


def test_card_tags_an_fp_mode_by_its_name(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    assert _convert(cli, src, tmp_path / "dst", "--mode", "mxfp4").data.tags == ["mlx", "moequant", "mxfp4", "moe"]


def test_card_takes_base_model_and_license_from_src_card(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    (src / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: mistralai/Mixtral-8x7B-v0.1\n---\n# theirs\n")
    card = _convert(cli, src, tmp_path / "dst")
    assert card.data.base_model == "mistralai/Mixtral-8x7B-v0.1" and card.data.license == "apache-2.0"
    assert "# theirs" not in card.text  # the card is DST's own


def test_license_and_use_policy_files_are_copied_and_marked(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    for name in ("LICENSE", "NOTICE", "USE_POLICY.md"):
        (src / name).write_text(f"{name} text\n")
    _convert(cli, src, tmp_path / "dst")
    for name in ("LICENSE", "NOTICE", "USE_POLICY.md"):
        assert (tmp_path / "dst" / name).read_text() == f"{name} text\n"
    assert {"LICENSE", "NOTICE", "USE_POLICY.md"} <= set(json.loads((tmp_path / "dst" / MARK_FILE).read_text())["files"])


def test_card_body_says_command_size_roles_and_notes(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    text = _convert(cli, src, tmp_path / "dst", "--bits", "3", "--override", "*.block_sparse_moe.gate=bits=8").text
    assert f"moequant convert {src} {tmp_path / 'dst'} --bits 3 --override '*.block_sparse_moe.gate=bits=8'" in text
    assert "moequant 0.1.0" in text and "bits/weight" in text
    assert "| router_gate | 2 | 1,024 | affine·8·g64 (override *.block_sparse_moe.gate) |" in text
    assert "## Notes" in text and "rope_theta = 10000.0" in text


def test_vision_language_output_is_image_text_to_text(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_vl_moe", vision=True)
    assert _convert(cli, src, tmp_path / "dst").data.pipeline_tag == "image-text-to-text"


def test_plan_in_output_reproduces_it_byte_for_byte(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    _convert(cli, src, tmp_path / "dst", "--recipe", "mixed_3_6", "--rounding", "mse", "--shard-size", "100KB")
    _convert(cli, src, tmp_path / "again", "--plan", tmp_path / "dst" / PLAN_FILE, "--shard-size", "100KB")
    shards = sorted(p.name for p in (tmp_path / "dst").glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(p.name for p in (tmp_path / "again").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "dst" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_force_replaces_an_output_with_its_card_and_plan(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    (src / "LICENSE").write_text("MIT\n")
    _convert(cli, src, tmp_path / "dst", "--bits", "8")
    assert _convert(cli, src, tmp_path / "dst", "--bits", "4", "--force").data.tags[2] == "4-bit"


def test_hub_id_source_is_the_base_model(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-moe"
    snapshot = write_tiny_checkpoint(repo / "snapshots" / commit, "qwen3_moe")
    (snapshot / "README.md").write_text("---\nlicense: mit\nbase_model: someone/else\n---\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = moequant("convert", "tiny-org/tiny-moe", tmp_path / "dst", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    card = ModelCard.load(tmp_path / "dst" / CARD_FILE)
    assert card.data.base_model == "tiny-org/tiny-moe" and card.data.license == "mit"


# --- convert --verify ------------------------------------------------------------------------


def test_convert_verify_records_the_figures_in_the_card_and_json(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--verify", "--min-top1", "0.5", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)["verify"]
    assert figures["failed"] == [] and 0.5 <= figures["closeness"]["top1"] <= 1
    text = (tmp_path / "dst" / CARD_FILE).read_text()
    assert "## Quality" in text and f"| top-1 agreement | {figures['closeness']['top1']:.4f} |" in text
    ModelCard.load(tmp_path / "dst" / CARD_FILE)  # still parses


def test_convert_verify_below_the_bar_exits_1_and_keeps_the_output(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--verify", "--max-kl", "0.000001", "--quiet")
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: {tmp_path / 'dst'}: KL ") and \
        error[0].endswith("> 1e-06; the output is written and valid, just below the bar (its model card records "
                          "the figures)"), result.output
    assert (tmp_path / "dst" / MARK_FILE).exists()
    assert "Below the bar asked for: KL" in (tmp_path / "dst" / CARD_FILE).read_text()


def test_convert_verify_below_the_bar_with_json_lists_what_failed(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--verify", "--min-top1", "1.01", "--json", "--quiet")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["verify"]["failed"][0].startswith("top-1 agreement ")


def test_a_threshold_without_verify_is_refused_before_any_work(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--min-top1", "0.9")
    assert result.exit_code == 1
    assert result.output.strip() == "error: --min-top1 0.9: a threshold on `verify`'s figures; expected --verify with it"
    assert not (tmp_path / "dst").exists()
