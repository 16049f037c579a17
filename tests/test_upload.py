"""`moequant upload DST ORG/NAME` and `convert --upload-repo`: every refusal is one line, and none
needs the network (issue 17). Nothing here reaches the hub: the one upload attempt goes to a
closed local port."""

from __future__ import annotations

import pytest

from moequant.card import CARD_FILE
from moequant.tiny import write_tiny_checkpoint

from conftest import moequant


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A finished moequant output (shared: the tests only read it)."""
    from moequant.convert import Conversion
    from moequant.formats import Quant

    root = tmp_path_factory.mktemp("upload")
    src = write_tiny_checkpoint(root / "src", "mixtral")
    list(Conversion(src, Quant.make("affine", 4)).run(root / "dst"))
    return root / "dst"


def _copy(output, tmp_path):
    import shutil

    return shutil.copytree(output, tmp_path / "dst")


def _error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


def test_upload_refuses_a_folder_moequant_did_not_write(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    assert _error(cli("upload", src, "org/name")) == (
        f"error: {src}: no moequant.json; expected a moequant output (moequant uploads only what it wrote)")


def test_upload_checks_the_card_exists_first(tmp_path, cli, monkeypatch, output):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the card is checked before anything else
    dst = _copy(output, tmp_path)
    (dst / CARD_FILE).unlink()
    assert _error(cli("upload", dst, "org/name")) == (
        f"error: {dst / CARD_FILE}: not found; expected the model card moequant writes into every output")


def test_upload_checks_the_card_parses(tmp_path, cli, output):
    dst = _copy(output, tmp_path)
    (dst / CARD_FILE).write_text("---\nlicense: [mit\n---\n# broken\n")
    assert _error(cli("upload", dst, "org/name")).startswith(
        f"error: {dst / CARD_FILE}: front matter does not parse (")


def test_upload_refuses_a_repo_id_that_is_not_org_name(cli, output):
    assert _error(cli("upload", output, "just-a-name")) == (
        "error: just-a-name: not a hub repo id; expected ORG/NAME, like my-org/Qwen3-30B-A3B-4bit")


def test_upload_offline_is_one_clear_line(cli, monkeypatch, output):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _error(cli("upload", output, "org/name")) == (
        "error: org/name: HF_HUB_OFFLINE is set (offline mode); expected access to the hub to upload (unset "
        "HF_HUB_OFFLINE)")


def test_upload_without_a_token_is_one_clear_line(tmp_path, output):
    result = moequant("upload", output, "org/name", env={"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""})
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: org/name: not logged in to the Hugging Face hub (no token); expected "
                                     "`hf auth login` or HF_TOKEN")


def test_upload_when_the_hub_cannot_be_reached_is_one_clear_line(tmp_path, output):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = moequant("upload", output, "org/name", env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: org/name: cannot reach the Hugging Face hub (")
    assert result.stderr.strip().endswith("); expected a network connection to upload")


def test_convert_upload_repo_offline_is_refused_before_any_work(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    assert _error(cli("convert", src, tmp_path / "dst", "--upload-repo", "org/name")).startswith(
        "error: org/name: HF_HUB_OFFLINE is set (offline mode)")
    assert not (tmp_path / "dst").exists()


def test_private_without_upload_repo_is_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    assert _error(cli("convert", src, tmp_path / "dst", "--private")) == (
        "error: --private: only used with --upload-repo; expected --upload-repo ORG/NAME with it")
