"""A CLI that explains itself (issue 17): help panels and examples, -h, --version, clean metavars;
how config.json was read only with -v; the notes that change the result once, after the summary."""

from __future__ import annotations

import json

import pytest

from moequant import __version__
from moequant.tiny import write_tiny_checkpoint

COMMANDS = ["convert", "inspect", "verify", "upload", "archs", "make-tiny", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_dash_h_is_help(cli, command):
    short, long = cli(command, "-h"), cli(command, "--help")
    assert short.exit_code == long.exit_code == 0 and short.output == long.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples_and_no_type_metavars(cli, command):
    text = cli(command, "-h").output
    assert "Examples" in text and f"$ moequant {command}" in text
    assert "<" not in text and "{" not in text, text  # no <bool>, <str>, {src}


def test_usage_line_names_the_arguments_in_capitals(cli):
    assert " convert [OPTIONS] SRC DST" in cli("convert", "-h").output  # (CliRunner calls the program root)


@pytest.mark.parametrize("command, panels", [("convert", ("Plan", "Quality", "Output", "Run")),
                                             ("inspect", ("Plan", "Quality", "Output", "Run"))])
def test_options_are_grouped_in_panels(cli, command, panels):
    lines = cli(command, "-h").output.splitlines()
    assert all(any(line.startswith(f"╭─ {panel} ") for line in lines) for panel in panels), lines


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.output == f"moequant {__version__}\n"


def test_how_config_json_was_read_is_shown_only_with_verbose(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    assert "config:" not in cli("inspect", src).output
    assert "DEBUG: config: rope_theta = 10000.0" in cli("inspect", src, "-v").output


def _after_summary(output: str, dst) -> list[str]:
    lines = output.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith(f"{dst}: ")) + 1:]


def test_data_free_target_bpw_is_noted_once_after_the_summary(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--target-bpw", "4", "--quiet")
    assert result.exit_code == 0, result.output
    assert _after_summary(result.output, tmp_path / "dst") == [
        "note: --target-bpw: data-free proxy (relative weight reconstruction error)"]


@pytest.mark.parametrize("options", [("--target-bpw", "4"), ("--rounding", "gptq")], ids=["target-bpw", "gptq"])
def test_experts_with_few_calibration_tokens_are_noted_once_after_the_summary(tmp_path, cli, options):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    (tmp_path / "calib.txt").write_text("".join(chr(32 + i % 95) for i in range(64)))
    # 16 tokens, top-2 of 4 experts: every expert is routed fewer than calibrate.MIN_ROUTED (32)
    result = cli("convert", src, tmp_path / "dst", *options, "--calib", tmp_path / "calib.txt",
                 "--calib-sequences", "1", "--calib-length", "16", "--quiet")
    assert result.exit_code == 0, result.output
    notes = _after_summary(result.output, tmp_path / "dst")
    assert len(notes) == 1 and notes[0].startswith("note: --calib: experts routed fewer than 32 of 16 tokens: "), notes


def test_nvfp4_global_scales_are_noted_and_not_without_them(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--mode", "nvfp4", "--quiet")
    notes = _after_summary(result.output, tmp_path / "dst")
    assert len(notes) == 1 and notes[0].startswith("note: nvfp4 expert stacks carry a per-expert global scale")
    result = cli("convert", src, tmp_path / "plain", "--mode", "nvfp4", "--no-global-scale", "--quiet")
    assert _after_summary(result.output, tmp_path / "plain") == []


def test_where_mlx_lm_differs_is_noted_once_after_the_summary_and_in_json(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "sliding_window": 16}))
    result = cli("convert", src, tmp_path / "dst")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "differs from transformers" in line]
    assert len(notes) == 1 and notes == _after_summary(result.output, tmp_path / "dst")
    assert notes[0].startswith("note: mlx-lm's mixtral differs from transformers: sliding_window = 16")
    result = cli("convert", src, tmp_path / "again", "--json", "--quiet")
    assert json.loads(result.stdout)["notices"] == [notes[0][len("note: "):]]
