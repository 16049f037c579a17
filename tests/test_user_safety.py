"""Issue 13: never lose a user's data, never show a traceback, never crash natively.

One test (or parametrized row) per case of the issue's table: the message, the exit code, and the
state of DST, SRC and any unrelated files are all checked. Read-only and size-limited file systems
are real tmpfs mounts where this process may mount (root with CAP_SYS_ADMIN, as in CI's container);
where it may not, a non-root run uses chmod and the rest is skipped with the reason. Only the OS's
free-space query (shutil.disk_usage) is ever replaced, never mlx."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from moequant.tiny import write_tiny_checkpoint
from moequant.writer import MARK_FILE

from conftest import assert_no_traceback, moequant

ARCH = "qwen3_moe"


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(result) -> str:
    """The one error line of a failed CLI run (CliRunner mixes stderr into output)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def src(tmp_path):
    """A user's folder holding a checkpoint and an unrelated file, and a file beside it."""
    home = tmp_path / "home"
    path = write_tiny_checkpoint(home / "model", ARCH)
    (path / "NOTES.md").write_text("my notes about this model")
    (home / "thesis.txt").write_text("unrelated, irreplaceable")
    return path


# --- the two data-loss rows, and the rest of DST's relation to SRC ----------------------------

def test_dst_that_is_src_is_refused_and_src_is_untouched(src, cli):
    before = _tree(src.parent)
    result = cli("convert", src, src, "--force", "--quiet")
    assert result.exit_code == 1
    assert _error(result) == (f"error: {src}: is SRC itself; expected a different folder (the source checkpoint "
                              "is never replaced)")
    assert _tree(src.parent) == before


def test_dst_that_contains_src_is_refused_and_nothing_is_deleted(src, cli):
    home = src.parent
    before = _tree(home)
    result = cli("convert", src, home, "--force", "--quiet")
    assert result.exit_code == 1
    assert _error(result) == (f"error: {home}: contains SRC ({src}); expected a folder outside it (replacing it "
                              "would delete the source)")
    assert _tree(home) == before and (home / "thesis.txt").read_text() == "unrelated, irreplaceable"
    assert sorted(p.name for p in home.parent.iterdir()) == ["home"]  # nothing set aside beside it


def test_dst_inside_src_is_refused_and_nothing_is_written_into_src(src, cli):
    before = _tree(src)
    for force in ([], ["--force"]):
        result = cli("convert", src, src / "q4", "--quiet", *force)
        assert result.exit_code == 1
        assert _error(result) == f"error: {src / 'q4'}: lies inside SRC ({src}); expected a folder outside the " \
                                 "source checkpoint"
    assert _tree(src) == before and not list(src.glob(".q4*"))


def test_dst_reached_through_another_spelling_of_src_is_refused(src, cli, monkeypatch):
    monkeypatch.chdir(src.parent)
    result = cli("convert", src, Path("..") / "home" / "model", "--force", "--quiet")
    assert result.exit_code == 1 and "is SRC itself" in _error(result)


def test_force_never_replaces_a_file_nor_leaves_it_renamed(src, cli):
    target = src.parent / "a_file"
    target.write_text("keep me")
    before = _tree(src.parent)
    result = cli("convert", src, target, "--force", "--quiet")
    assert result.exit_code == 1
    assert _error(result) == (f"error: {target}: is a file; expected a new folder (moequant never replaces a "
                              "file, even with --force)")
    assert target.read_text() == "keep me" and _tree(src.parent) == before
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".")]


def test_force_never_replaces_a_folder_moequant_did_not_write(src, cli, tmp_path):
    dst = tmp_path / "photos"
    dst.mkdir()
    (dst / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    for force in ([], ["--force"]):
        result = cli("convert", src, dst, "--quiet", *force)
        assert result.exit_code == 1
        assert _error(result) == (f"error: {dst}: already exists and is not a moequant output (no {MARK_FILE}; "
                                  "holds cat.jpg); expected a new folder (--force replaces only a previous moequant "
                                  "output or an empty folder)")
    assert _tree(dst) == {"cat.jpg": hashlib.sha256(b"\xff\xd8 a cat").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "photos"]


def test_force_replaces_a_previous_moequant_output_and_an_empty_folder(src, cli, tmp_path):
    dst = tmp_path / "q4"
    assert cli("convert", src, dst, "--quiet").exit_code == 0
    mark = json.loads((dst / MARK_FILE).read_text())
    assert mark["written_by"] == "moequant" and set(mark["files"]) == {p.name for p in dst.iterdir()}
    result = cli("convert", src, dst, "--quiet")
    assert result.exit_code == 1 and _error(result) == (f"error: {dst}: already exists; expected a new folder "
                                                        "(or pass --force to replace it)")
    assert cli("convert", src, dst, "--bits", "8", "--force", "--quiet").exit_code == 0
    assert json.loads((dst / "config.json").read_text())["quantization"]["bits"] == 8
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("convert", src, empty, "--force", "--quiet").exit_code == 0 and (empty / MARK_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "home", "q4"]


def test_force_keeps_a_moequant_output_the_user_added_files_to(src, cli, tmp_path):
    dst = tmp_path / "q4"
    assert cli("convert", src, dst, "--quiet").exit_code == 0
    (dst / "eval-results.csv").write_text("mine")
    before = _tree(dst)
    result = cli("convert", src, dst, "--force", "--quiet")
    assert result.exit_code == 1
    assert _error(result) == (f"error: {dst}: a moequant output that also holds eval-results.csv, which moequant "
                              "did not write; expected a new folder (--force replaces only what moequant wrote)")
    assert _tree(dst) == before


# --- OS-level failures: read-only, permission denied, disk full --------------------------------

def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'})")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs folder; unmounted after the test."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        _mount_tmpfs(where, options)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _read_only_folder(tmpfs, tmp_path) -> tuple[Path, str]:
    """A folder nobody running this test can write to, and what the OS calls that."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder, "permission denied"
    return tmpfs("size=1m,ro"), "read-only file system"  # chmod does not stop root


def test_read_only_dst_parent_is_one_line_and_nothing_is_left(src, cli, tmpfs, tmp_path):
    parent, reason = _read_only_folder(tmpfs, tmp_path)
    dst = parent / "q4"
    result = cli("convert", src, dst, "--quiet")
    assert result.exit_code == 1
    assert _error(result).startswith(f"error: {parent}: {reason} (creating a temporary folder in {parent}); "
                                     f"expected a folder moequant can write"), result.output
    assert not dst.exists() and list(parent.iterdir()) == []


def test_permission_denied_dst_parent_is_one_line(src, tmp_path):
    """chmod 0o555 stops a user, not root: as root, the CLI runs without the capability that lets
    root write anywhere (setpriv drops CAP_DAC_OVERRIDE), so the kernel says EACCES as to a user."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: chmod cannot deny root a write")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                  "--inh-caps=-dac_override,-dac_read_search"]
    result = subprocess.run([*prefix, sys.executable, "-m", "moequant", "convert", str(src), str(locked / "q4"),
                             "--quiet"], capture_output=True, text=True, timeout=300)
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (f"error: {locked}: permission denied (creating a temporary folder in "
                                     f"{locked}); expected a folder moequant can write ({locked})")
    assert list(locked.iterdir()) == []


def test_too_little_free_space_is_refused_before_writing_with_both_numbers(src, cli, monkeypatch, tmp_path):
    """The OS's free-space query reports 100 KB free (only that is replaced): the output is ~210 KB."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    dst = tmp_path / "q4"
    result = cli("convert", src, dst, "--quiet")
    assert result.exit_code == 1
    line = _error(result)
    assert line.startswith(f"error: {tmp_path}: 100.00 KB (100,000 bytes) free; expected at least "), line
    assert line.endswith(" for DST (1 shard and its config and tokenizer files)")
    need = int(line.split("expected at least ")[1].split("(")[1].split(" bytes")[0].replace(",", ""))
    assert need > 100_000
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_a_full_file_system_is_refused_before_writing(src, cli, tmpfs):
    small = tmpfs("size=64k")
    dst = small / "q4"
    result = cli("convert", src, dst, "--quiet")
    assert result.exit_code == 1
    assert _error(result).startswith(f"error: {small}: 65.54 KB (65,536 bytes) free; expected at least ")
    assert list(small.iterdir()) == []


def test_disk_full_while_writing_is_one_line_and_nothing_is_left(src, cli, tmpfs, monkeypatch):
    """The free-space check is told there is room (the OS query replaced), so the kernel's real
    ENOSPC is what moequant meets: from writing the shard, or the index, config and card that the
    main process writes while the workers write the shard (whichever the full disk refuses first),
    named in the line."""
    small = tmpfs("size=64k")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10**12))
    dst = small / "q4"
    result = cli("convert", src, dst, "--quiet")
    assert result.exit_code == 1
    line = _error(result)
    writing = ("model.safetensors", "its index, config.json, tokenizer files and model card")
    assert any(line.startswith(f"error: {dst}: no space left on device (writing {w}); expected ") for w in writing), line
    assert line.endswith(" free for DST")
    assert list(small.iterdir()) == []


def _calibrated(src: Path, dst: Path, tmp_path: Path, *options) -> list:
    """The CLI's arguments of a calibrated conversion, its calibration ids written to tmp_path."""
    np.save(calib := tmp_path / "ids.npy", np.arange(4096) % 256)
    return ["convert", src, dst, *options, "--calib", calib, "--quiet"]


def test_a_temporary_folder_without_room_for_gptqs_moments_is_refused_before_the_pass(src, cli, tmpfs, tmp_path,
                                                                                     monkeypatch):
    small = tmpfs("size=64k")
    monkeypatch.setattr(tempfile, "tempdir", str(small))  # as TMPDIR=small
    dst = tmp_path / "q4"
    result = cli(*_calibrated(src, dst, tmp_path, "--bits", "4", "--rounding", "gptq"))
    assert result.exit_code == 1
    line = _error(result)
    assert line.startswith(f"error: {small}: 65.54 KB (65,536 bytes) free; expected at least "), line
    assert line.endswith(" for --rounding gptq's input moments, kept there until the layers are rounded (TMPDIR "
                         "chooses the folder)"), line
    assert list(small.iterdir()) == [] and not dst.exists()


@pytest.mark.parametrize("options, file, what", [
    (["--bits", "4", "--rounding", "gptq"], r"moequant-moments-[^/]+/\d+\.npy", "--rounding gptq's input moments"),
    (["--target-bpw", "4", "--rounding", "gptq"], r"moequant-moments-[^/]+/\d+\.npy",
     "--rounding gptq's input moments"),
    (["--target-bpw", "4"], r"moequant-calibration-[^/]+/states", "the calibration's hidden states"),
])
def test_disk_full_while_calibrating_is_one_line_and_nothing_is_left(src, cli, tmpfs, tmp_path, monkeypatch,
                                                                     options, file, what):
    """The free-space checks are told there is room (the OS query replaced), so the kernel's real ENOSPC
    in the temporary folder is what the calibration meets: from a moments' file (`file`, a pattern), or
    from its hidden states kept on disk (SPILL_SHARE 0: whatever their size)."""
    from moequant import calibrate

    small = tmpfs("size=64k")
    monkeypatch.setattr(tempfile, "tempdir", str(small))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10**12))
    monkeypatch.setattr(calibrate, "SPILL_SHARE", 0.0 if file.endswith("states") else calibrate.SPILL_SHARE)
    dst = tmp_path / "q4"
    result = cli(*_calibrated(src, dst, tmp_path, *options))
    assert result.exit_code == 1
    line = _error(result)
    assert re.fullmatch(rf"error: {re.escape(str(small))}/{file}: no space left on device; expected room for "
                        rf"{re.escape(what)} in the temporary folder \(TMPDIR chooses it\)", line), line
    assert list(small.iterdir()) == [] and not dst.exists()


# --- missing paths in every command ----------------------------------------------------------

@pytest.mark.parametrize("command, message", [
    (["verify", "{missing}", "--reference", "{src}"], "{missing}: no such folder; expected a converted checkpoint folder"),
    (["verify", "{missing}", "--reference", "{src}", "--prompt", "hi"],
     "{missing}: no such folder; expected a converted checkpoint folder"),
    (["verify", "{src_q4}/config.json", "--reference", "{src}"],
     "{src_q4}/config.json: a file; expected a converted checkpoint folder"),
    (["verify", "{src_q4}", "--reference", "{missing}"], "{missing}: no such folder; expected a checkpoint folder or a hub id"),
    (["inspect", "{missing}"], "{missing}: no such folder; expected a checkpoint folder or a hub id"),
    (["convert", "{missing}", "{out}"], "{missing}: no such folder; expected a checkpoint folder or a hub id"),
    (["convert", "{src}", "{out}", "--plan", "{missing}"], "--plan {missing}: not found; expected the JSON"),
    (["convert", "{src}", "{out}", "--target-bpw", "4", "--calib", "{missing}"],
     "--calib {missing}: not found; expected a text or .npy token file"),
])
def test_missing_paths_are_one_line_in_every_command(src, cli, tmp_path, command, message):
    names = {"missing": tmp_path / "no" / "such", "src": src, "out": tmp_path / "out", "src_q4": tmp_path / "q4"}
    assert cli("convert", src, names["src_q4"], "--quiet").exit_code == 0
    result = cli(*(part.format(**names) for part in command))
    assert result.exit_code == 1
    assert _error(result).startswith("error: " + message.format(**names)), result.output
    assert not names["out"].exists()


# --- make-tiny -------------------------------------------------------------------------------

@pytest.mark.parametrize("shards", ["0", "-2"])
def test_make_tiny_with_no_shards_is_refused_and_leaves_no_folder(cli, tmp_path, shards):
    result = cli("make-tiny", ARCH, tmp_path / "tiny", "--shards", shards)
    assert result.exit_code == 1
    assert _error(result) == f"error: --shards {shards}: expected 1 to 8 (a tiny checkpoint has few tensors)"
    assert list(tmp_path.iterdir()) == []


def test_make_tiny_never_overwrites_an_existing_folder(cli, tmp_path):
    dst = tmp_path / "tiny"
    dst.mkdir()
    (dst / "mine.txt").write_text("mine")
    result = cli("make-tiny", ARCH, dst)
    assert result.exit_code == 1
    assert _error(result) == (f"error: {dst}: already exists (a folder that is not empty); expected a new or empty "
                              "folder (make-tiny never overwrites)")
    assert [p.name for p in dst.iterdir()] == ["mine.txt"]
    (dst / "mine.txt").unlink()
    assert cli("make-tiny", ARCH, dst).exit_code == 0 and (dst / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # its temporary folder is gone


# --- plan files ------------------------------------------------------------------------------

def _row_index(plan: dict, path: str) -> int:
    return next(i for i, r in enumerate(plan["modules"]) if r["path"] == path)


V = "model.layers.0.self_attn.v_proj"


@pytest.mark.parametrize("edit, found", [
    (lambda p: p["modules"][_row_index(p, V)].update(quant="four"),
     'modules[{i}] ({V}).quant: "four"; expected null (keep) or an object like {{"mode": "affine"'),
    (lambda p: p["modules"][_row_index(p, V)].update(quant={"bits": "4", "group_size": 64}),
     'modules[{i}] ({V}).quant.bits: "4"; expected a whole number'),
    (lambda p: p["modules"][_row_index(p, V)].update(quant={"bits": 4, "group_size": 64, "mode": "four"}),
     "modules[{i}] ({V}).quant: mode 'four'; expected one of affine, mxfp4, nvfp4, mxfp8"),
    (lambda p: p["modules"][_row_index(p, V)].update(quant={"bits": 4, "group": 64}),
     "modules[{i}] ({V}).quant.group: unknown field; expected mode, bits, group_size, global_scale"),
    (lambda p: p["modules"][_row_index(p, V)].update(shape="64x128"),
     'modules[{i}] ({V}).shape: "64x128"; expected a list of whole numbers like [64, 128]'),
    (lambda p: p["modules"][_row_index(p, V)].update(path=7), "modules[{i}].path: 7; expected a module path"),
    (lambda p: p["modules"].__setitem__(_row_index(p, V), "v_proj"), 'modules[{i}]: "v_proj"; expected an object'),
    (lambda p: p["options"].update(quant="four"), 'options.quant: "four"; expected null or an object'),
    (lambda p: p["options"].update(dtype="fp8"), 'options.dtype: "fp8"; expected one of bfloat16'),
    (lambda p: p["options"].update(gate_bits=4), "options.gate_bits: 4; expected null (float) or 8"),
    (lambda p: p["options"].update(global_scale="yes"), 'options.global_scale: "yes"; expected true or false'),
    (lambda p: p["options"].update(recipe=None), "options.recipe: null; expected one of uniform"),
    (lambda p: p.update(options=[]), "options: []; expected an object"),
])
def test_hand_edited_plan_names_the_file_and_the_json_path(src, cli, tmp_path, edit, found):
    plan = json.loads(cli("inspect", src, "--json").stdout)
    i = _row_index(plan, V)
    edit(plan)
    file = tmp_path / "my-edits.json"
    file.write_text(json.dumps(plan))
    result = cli("convert", src, tmp_path / "dst", "--plan", file, "--quiet")
    assert result.exit_code == 1
    assert _error(result).startswith(f"error: {file}: " + found.format(i=i, V=V)), result.output
    assert not (tmp_path / "dst").exists()


# --- calibration files -----------------------------------------------------------------------

def test_calibration_ids_past_the_vocabulary_are_refused_not_a_segfault(src, tmp_path):
    """In a separate process: before the check, mlx's embedding read past its table (exit 139)."""
    calib = tmp_path / "ids.npy"
    np.save(calib, np.arange(4096) % 300)  # the tiny model's vocab_size is 256
    for options in (["--target-bpw", "4"], ["--rounding", "gptq"]):
        result = moequant("convert", src, tmp_path / "dst", *options, "--calib", calib, "--quiet")
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert result.stderr.strip() == (f"error: --calib {calib}: token id 256 at position 256 (572 in all, the "
                                         "largest 299); expected ids below the model's vocab_size 256")
        assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("write, found", [
    (lambda f: f.write_bytes(b"\x93NUMPY garbage " * 40), "not a .npy array numpy reads without pickle"),
    (lambda f: f.write_bytes(os.urandom(600)), "not a .npy array numpy reads without pickle"),
    (lambda f: np.save(f, np.array([{"ids": 1}] * 600, dtype=object), allow_pickle=True),
     "not a .npy array numpy reads without pickle (Object arrays cannot be loaded when allow_pickle=False)"),
    (lambda f: np.save(f, np.ones(4096)), "float64 values; expected integer token ids"),
    (lambda f: np.save(f, np.full(4096, -1)), "token id -1 at position 0; expected ids from 0"),
    (lambda f: np.save(f, np.zeros(100, np.int32)), "100 tokens; expected at least 512"),
])
def test_bad_calibration_files_are_one_line(src, cli, tmp_path, write, found):
    calib = tmp_path / "calib.npy"
    write(calib)
    result = cli("convert", src, tmp_path / "dst", "--target-bpw", "4", "--calib", calib, "--quiet")
    assert result.exit_code == 1
    assert _error(result).startswith(f"error: --calib {calib}: {found}"), result.output
    assert not (tmp_path / "dst").exists()


def test_calibration_text_with_bytes_past_the_vocabulary_is_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", ARCH)
    config = json.loads((src / "config.json").read_text())
    calib = tmp_path / "text.txt"
    calib.write_text("naïve café " * 100)  # UTF-8 bytes above 127
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": 128}))
    weights = __import__("mlx.core", fromlist=["load"]).load(str(src / "model.safetensors"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[key] = weights[key][:128]
    __import__("mlx.core", fromlist=["save_safetensors"]).save_safetensors(str(src / "model.safetensors"), weights)
    result = cli("convert", src, tmp_path / "dst", "--target-bpw", "4", "--calib", calib, "--quiet")
    assert result.exit_code == 1
    # the tokenizer's ids (bytes) reach past the model's 128-token table
    assert _error(result).startswith(f"error: --calib {calib}: token id 195 at position 2 ("), result.output


# --- numeric and conflicting options ---------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--group-size", "0"], "--mode/--bits/--group-size: affine with bits=4, group_size=0; expected bits in "
                            "[2, 3, 4, 5, 6, 8] and group_size in [32, 64, 128]"),
    (["--bits", "0"], "--mode/--bits/--group-size: affine with bits=0, group_size=64; expected bits in"),
    (["--mode", "nvfp4", "--group-size", "0"], "--mode/--bits/--group-size: nvfp4 with bits=4, group_size=0; expected bits in [4] and "
                                               "group_size in [16]"),
    (["--shard-size", "0"], "--shard-size 0: 0 bytes; expected a size above 0, like 5GB or 500MB"),
    (["--shard-size", "-1"], "--shard-size -1: -1 bytes; expected a size above 0, like 5GB or 500MB"),
    (["--shard-size", "0.0001B"], "--shard-size 0.0001B: 0 bytes; expected a size above 0"),
    (["--shard-size", "infGB"], "--shard-size infGB: expected a size like 5GB, 500MB or a byte count"),
    (["--no-quantize", "--bits", "3"], "--no-quantize --bits 3: --bits only shapes quantization, which "
                                       "--no-quantize turns off; expected one of them, not both"),
    (["--no-quantize", "--mode", "affine"], "--no-quantize --mode affine: --mode only shapes quantization"),
    (["--no-quantize", "--gate-bits", "8"], "--no-quantize --gate-bits 8: --gate-bits only shapes"),
    (["--no-quantize", "--recipe", "moe"], "--no-quantize --recipe moe: --recipe only shapes"),
    (["--no-quantize", "--no-global-scale"], "--no-quantize --no-global-scale: --no-global-scale only shapes"),
])
def test_numeric_and_conflicting_options_are_refused(src, cli, tmp_path, options, message):
    dst = tmp_path / "dst"
    result = cli("convert", src, dst, *options, "--quiet")
    assert result.exit_code == 1
    assert _error(result).startswith("error: " + message), result.output
    assert not dst.exists() and not list(tmp_path.glob(".dst*"))


@pytest.mark.parametrize("option", [["--bits", "8"], ["--mode", "nvfp4"], ["--no-quantize"], ["--recipe", "moe"],
                                    ["--override", "lm_head=keep"], ["--dtype", "float16"], ["--gate-bits", "8"]])
def test_plan_options_beside_a_plan_file_are_refused_not_ignored(src, cli, tmp_path, option):
    plan = tmp_path / "p.json"
    plan.write_text(cli("inspect", src, "--json").stdout)
    result = cli("convert", src, tmp_path / "dst", "--plan", plan, *option, "--quiet")
    assert result.exit_code == 1
    assert _error(result) == (f"error: --plan {plan} {' '.join(option)}: the plan file decides every module and its "
                              "options; expected no plan option beside --plan (edit the plan instead)")
    assert not (tmp_path / "dst").exists()


def test_make_tiny_refuses_the_same_numbers(cli, tmp_path):
    result = cli("make-tiny", ARCH, tmp_path / "t", "--dtype", "int4")
    assert result.exit_code == 1 and _error(result).startswith("error: --dtype int4: expected one of")
    assert not (tmp_path / "t").exists()


# --- --json: every outcome is JSON -----------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["convert", "{src}", "{src}", "--force", "--json"],
    ["convert", "{src}", "{out}", "--shard-size", "0", "--json"],
    ["inspect", "{missing}", "--json"],
    ["verify", "{missing}", "--reference", "{src}", "--json"],
    ["archs", "--status", "nope", "--json"],
])
def test_json_errors_are_json_on_stdout_with_the_same_exit_code(src, tmp_path, command):
    names = {"src": src, "out": tmp_path / "out", "missing": tmp_path / "missing"}
    result = moequant(*(part.format(**names) for part in command))
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert set(error) == {"error", "path", "exit_code"} and error["exit_code"] == 1
    assert error["path"] == error["error"].split(": ")[0] and "expected" in error["error"]
    assert not result.stderr.count("error:")


# --- messages that say what is true ----------------------------------------------------------

def test_override_of_a_module_that_exists_but_cannot_be_quantized_says_so(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "deepseek_v3")
    result = cli("convert", src, tmp_path / "dst", "--override", "model.layers.1.mlp.gate=bits=8", "--quiet")
    assert result.exit_code == 1
    assert _error(result) == ("error: --override 'model.layers.1.mlp.gate=bits=8': model.layers.1.mlp.gate exists "
                              "but cannot be quantized (mlx-lm's deepseek_v3.MoEGate has no quantized form: no "
                              "to_quantized), so it stays float; expected a pattern that matches a quantizable module "
                              "(1 matched, none quantizable)")
    assert not (tmp_path / "dst").exists()


# --- no native crash on any exit path --------------------------------------------------------

@pytest.mark.slow
def test_conversions_under_load_always_exit_cleanly(tmp_path):
    """30 CLI conversions with 2 worker threads each, two at a time, while another process keeps a
    core busy. Before the worker threads released their mlx streams, about 1 in 40 ended with
    'terminate called without an active exception' (exit 134) after the success line."""
    src = write_tiny_checkpoint(tmp_path / "src", ARCH)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    failures = []
    try:
        for batch in range(15):
            runs = [(tmp_path / f"out{batch}-{k}", subprocess.Popen(
                [sys.executable, "-m", "moequant", "convert", str(src), str(tmp_path / f"out{batch}-{k}"),
                 "--workers", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                for k in range(2)]
            for dst, proc in runs:
                stdout, stderr = proc.communicate(timeout=120)
                assert_no_traceback(stdout, stderr)
                if proc.returncode != 0 or stderr.strip() or not (dst / MARK_FILE).exists():
                    failures.append((dst.name, proc.returncode, stderr.strip()[-300:]))
                shutil.rmtree(dst, ignore_errors=True)
    finally:
        busy.send_signal(signal.SIGKILL)
        busy.wait()
    assert not failures, failures
