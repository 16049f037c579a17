"""A conversion's main process starts without importing transformers or torch (issue 16): mlx-lm's
package `__init__` waits until something asks for it (target.lazy_mlx_lm), mlx-lm's model module
is found without mlx_lm.utils, and transformers' reading of config.json is kept in moequant's cache
per config.json and transformers version — never served for another of either."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from moequant import target
from moequant.registry import FAMILIES
from moequant.tiny import ALL_ARCHS, write_tiny_checkpoint

from test_procpool import _files


def _entries(cache_home):
    return sorted((cache_home / "moequant" / "transformers-config").glob("*.json"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reads(monkeypatch):
    """The configs transformers itself was asked to read (target._read_with_transformers)."""
    calls, read = [], target._read_with_transformers
    monkeypatch.setattr(target, "_read_with_transformers", lambda config: calls.append(config) or read(config))
    return calls


def test_no_conversion_imports_transformers_or_torch_and_the_second_reads_the_cache(tmp_path, cache):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", shards=2)
    script = ("import sys; from pathlib import Path; from moequant.convert import Conversion; "
              f"list(Conversion(Path({str(src)!r})).run(Path(sys.argv[1]), workers=2, pool='processes')); "
              "print(sorted({'transformers', 'torch', 'mlx_lm.utils', 'mlx_lm.convert'} & set(sys.modules)))")
    seen = []
    for name in ("cold", "warm"):
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        seen.append(result.stdout.strip())
    assert len(_entries(cache)) == 1  # the cold run had config.json read by transformers in a child process
    assert seen == ["[]", "[]"], seen
    assert _files(tmp_path / "warm") == _files(tmp_path / "cold")


def test_the_command_line_imports_no_pydantic(tmp_path):
    """typer 0.29 and later build a pydantic TypeAdapter per option at every start (0.12 s before a
    conversion's workers start, pyproject pins typer below it): `moequant convert` imports no pydantic."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    script = ("import runpy, sys\n"
              f"sys.argv = ['moequant', 'convert', {str(src)!r}, {str(tmp_path / 'dst')!r}, '--quiet']\n"
              "try:\n    runpy.run_module('moequant', run_name='__main__')\nexcept SystemExit as e:\n"
              "    assert not e.code, e.code\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and (tmp_path / "dst" / "config.json").exists(), result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_the_commands_entry_module_imports_no_cli():
    """Each worker process runs the `moequant` script again (multiprocessing's __mp_main__), which
    imports the entry module moequant.__main__: it must not bring typer, rich or the CLI with it."""
    script = "import sys, moequant.__main__; print(sorted({'typer', 'rich', 'moequant.cli', 'mlx.core'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_the_child_process_reads_every_config_as_transformers_here_does():
    configs = [arch.config("published") for arch in ALL_ARCHS.values()]
    # == rather than repr: a nested dict's key order may follow string hashes, which differ between processes
    assert target._readings_in_child(configs) == [target._read_in_process(config) for config in configs]
    assert target._readings_in_child([{"model_type": "no_such_model_type"}]) == [None]


@pytest.mark.parametrize("arch", ["qwen3_moe", "phimoe", "llama4", "gpt_oss", "deepseek_v32"])
def test_cached_reading_resolves_exactly_as_transformers_does(cache, reads, arch):
    config = ALL_ARCHS[arch].config("published")
    before = json.dumps(config)
    cold = target.resolve_config(config)
    warm = target.resolve_config(config)
    assert len(reads) == 1 and len(_entries(cache)) == 1
    assert repr(warm) == repr(cold)  # values, key order and types (id2label's int keys, tuples)
    assert json.dumps(config) == before  # transformers' from_dict edits nested dicts: it gets a copy


def test_a_changed_config_or_transformers_version_is_read_again(cache, reads, monkeypatch):
    config = ALL_ARCHS["qwen3_moe"].config("published")
    assert target._transformers_config(config)["dict"]["num_experts_per_tok"] == config["num_experts_per_tok"]
    changed = {**config, "num_experts_per_tok": config["num_experts_per_tok"] + 1}
    assert target._transformers_config(changed)["dict"]["num_experts_per_tok"] == changed["num_experts_per_tok"]
    reordered = dict(reversed(config.items()))  # transformers' reading follows the keys' order
    target._transformers_config(reordered)
    assert len(reads) == 3 and len(_entries(cache)) == 3
    target._transformers_config(config)
    assert len(reads) == 3
    version = target.installed_version
    monkeypatch.setattr(target, "installed_version",
                        lambda name: "0.0.0.other" if name == "transformers" else version(name))
    target._transformers_config(config)
    assert len(reads) == 4 and len(_entries(cache)) == 4


@pytest.mark.parametrize("package", ["transformers", "numpy", "mlx", "moequant"])  # mlx: a namespace package
def test_installed_version_is_importlib_metadatas(package):
    assert target.installed_version(package) == importlib.metadata.version(package)
    assert target.installed_version("no_such_package_here") is None


def test_an_unreadable_or_foreign_cache_entry_is_read_again(cache, reads):
    config = ALL_ARCHS["qwen3_moe"].config("published")
    expected = target._transformers_config(config)
    (entry,) = _entries(cache)
    for text in ("{not json", json.dumps({"key": "another", "reading": ["s", None]}), json.dumps({"key": 1})):
        entry.write_text(text)
        assert target._transformers_config(config) == expected
    assert len(reads) == 4


def test_an_unwritable_cache_changes_nothing(tmp_path, monkeypatch, reads):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where the folder would go
    config = ALL_ARCHS["qwen3_moe"].config("published")
    assert target.resolve_config(config) == target.resolve_config(config)
    assert len(reads) == 2


def test_encoding_keeps_types_and_refuses_others():
    value = {"id2label": {0: "a", 1: "b"}, "t": (1, 2.5, None), "inf": float("inf"), "nested": [{"x": True}], "s": ""}
    decoded = target._decode(json.loads(json.dumps(target._encode(value))))
    assert repr(decoded) == repr(value)
    assert target._encode({"x": object()}) is None and target._encode({1.5j: 1}) is None


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_model_module_is_the_one_mlx_lm_picks(model_type):
    import mlx_lm.utils

    for architectures in ((), ("BailingMoeV3ForCausalLM",), "BailingMoeV3ForCausalLM"):
        config = {"model_type": model_type, "architectures": architectures}
        try:
            expected = mlx_lm.utils._get_classes(config)
        except ValueError:
            with pytest.raises(target.CheckpointError, match="not supported by mlx-lm"):
                target.model_classes(config)
            continue
        assert target.model_classes(config) == expected
    assert target._mlx_lm_tables() == (mlx_lm.utils.MODEL_REMAPPING, mlx_lm.utils.MODEL_ARCHITECTURE_REMAPPING)


def test_mlx_lm_package_runs_its_init_when_asked_for_it():
    script = ("import sys; import moequant.target; import mlx_lm.models.qwen3_moe; "
              "assert not {'transformers', 'torch', 'mlx_lm.convert'} & set(sys.modules), sorted(sys.modules); "
              "import mlx_lm; print(mlx_lm.__version__); from mlx_lm import load, convert; "
              "print(callable(load), callable(convert), 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [importlib.metadata.version("mlx-lm"), "True True True"]


def test_a_child_that_cannot_start_or_carry_the_reading_gives_none(monkeypatch):
    config = ALL_ARCHS["qwen3_moe"].config("published")
    assert target._readings_in_child([{**config, "hidden_size": object()}]) is None  # not JSON
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    assert target._readings_in_child([config]) is None


@pytest.mark.parametrize("argv, gptq", [
    (["convert", "a", "b"], False),
    (["convert", "a", "b", "--rounding", "gptq", "--calib", "c.npy"], True),
    (["convert", "a", "b", "--rounding=gptq"], True),
    (["convert", "a", "b", "--rounding", "gptq", "--rounding=mse"], False),  # the last one given, as typer takes it
    (["convert", "a", "b", "--calib", "gptq"], False),
])
def test_the_forkserver_preloads_gptqs_modules_when_the_command_line_asks_for_gptq(monkeypatch, argv, gptq):
    from moequant import __main__ as moequant_main, procpool

    started = []
    monkeypatch.setattr(procpool, "start_server", lambda gptq=False: started.append(gptq))
    moequant_main._forkserver_early(argv)
    assert started == [gptq]
    from multiprocessing import forkserver

    try:
        procpool._context(gptq)
        assert ("moequant.calibrate" in forkserver._forkserver._preload_modules) == gptq  # what its start imports
    finally:
        procpool._context()
