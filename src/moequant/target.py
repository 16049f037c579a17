"""The target: the mlx-lm (or mlx-vlm) model class a checkpoint converts into, built lazily.

moequant does not re-implement architectures. It resolves config aliases so the runner's config
classes see the names they expect, and builds the model without evaluating any weight (mlx is
lazy), so the module tree can be planned before a byte of tensor data is read.

Which runner: a vision-language checkpoint (a registry row with a vision part, its vision keys set in
config.json) converts for mlx-vlm — vision tower and projector kept — when mlx-vlm is installed,
and otherwise (or when asked: `runner="mlx-lm"`) for mlx-lm, text only. A text model that only
mlx-vlm has a model for (a row of runner mlx-vlm without a vision part: registry.TEXT_BY_MLX_VLM)
converts for mlx-vlm, its config.json as the source's, as mlx_vlm.convert writes it. `resolve_config`
makes the choice and records it in the config itself: a config resolved for mlx-lm has its vision
keys removed (its output has no vision weights either), so `build_model`, and anything reading the
output, tells the two apart from the config alone.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import mlx.nn as nn

from .configmap import MISSING, PLAIN_ROPE_TYPES, TRANSFORMERS_BOOKKEEPING, apply_renames, lookup
from .errors import CheckpointError
from .registry import (ABSENT_AS_ZEROS, CONFIG_ALIASES, MODEL_ARCHITECTURES, MODEL_TYPES, TEXT_ARGS, TEXT_BY_MLX_VLM,
                       VISION_LANGUAGE, WRAPPED)

log = logging.getLogger(__name__)


MLX_LM, MLX_VLM = "mlx-lm", "mlx-vlm"
RUNNERS = (MLX_LM, MLX_VLM)
# mlx-vlm's loader builds these sub-configs from config.json (mlx_vlm.utils.load_model)
_VLM_MODULES = ("text", "vision", "perceiver", "projector", "audio")


def mlx_vlm_installed() -> bool:
    return importlib.util.find_spec("mlx_vlm") is not None


def is_vision_language(config: dict) -> bool:
    """A config with its vision part: a registry row with one (VISION_LANGUAGE), its vision keys all set."""
    row = VISION_LANGUAGE.get(config.get("model_type"))
    return row is not None and all(config.get(k) is not None for k in row.vision_keys)


def runner_of(config: dict) -> str:
    """The runner a resolved config is for (resolve_config removes the vision keys for mlx-lm; a text
    model only mlx-vlm runs is mlx-vlm's)."""
    return MLX_VLM if is_vision_language(config) or config.get("model_type") in TEXT_BY_MLX_VLM else MLX_LM


def _vlm_arch(config: dict):
    """mlx-vlm's model package for config["model_type"] (mlx_vlm.models.<module>)."""
    from mlx_vlm.utils import get_model_and_args

    try:
        return get_model_and_args(config)[0]
    except ValueError:
        import mlx_vlm

        raise CheckpointError(
            f"config.json: model_type {config['model_type']!r} is not supported by mlx-vlm "
            f"{mlx_vlm.__version__}; expected a model_type with a module in mlx_vlm.models"
        ) from None


def _vlm_config(arch, config: dict):
    """The ModelConfig mlx-vlm's loader builds from config.json (text and vision parts included)."""
    from mlx_vlm.utils import update_module_configs

    config = copy.deepcopy(config)
    config.setdefault("text_config", config.pop("llm_config", {}))
    config.setdefault("vision_config", {})
    config.setdefault("audio_config", {})
    model_config = arch.ModelConfig.from_dict(config)
    return update_module_configs(model_config, arch, config, list(_VLM_MODULES))


@functools.lru_cache(maxsize=None)
def _vlm_target_class(arch):
    """mlx-vlm's Model, with the loader's whole sanitize chain as its `sanitize`: mlx-vlm's loader
    sanitizes with the model, then with its VisionModel and LanguageModel classes (built from
    their sub-configs); the pipeline calls one `sanitize`, so the target does all three."""
    from mlx_vlm.utils import sanitize_weights

    class Target(arch.Model):
        def sanitize(self, weights):
            weights = sanitize_weights(super(), weights) if hasattr(arch.Model, "sanitize") else weights
            for part, key in (("VisionModel", "vision_config"), ("LanguageModel", "text_config"),
                              ("AudioModel", "audio_config")):
                if hasattr(arch, part) and hasattr(self.config, key):
                    weights = sanitize_weights(getattr(arch, part), weights, getattr(self.config, key))
            return weights

    Target.__name__ = Target.__qualname__ = f"{arch.Model.__module__}.Model"
    return Target


def _config_fields(config_class) -> set[str]:
    if dataclasses.is_dataclass(config_class):
        return {f.name for f in dataclasses.fields(config_class)}
    return set(inspect.signature(config_class).parameters)


def lazy_mlx_lm() -> None:
    """Make `mlx_lm` importable without running its package `__init__` (which imports
    mlx_lm.convert -> transformers -> torch: seconds, and ~0.3 GB per process) until something
    asks the package for a name only `__init__` defines (`mlx_lm.load`, `from mlx_lm import
    convert`): then `__init__` runs, as on a plain import. Submodules (mlx_lm.models.qwen3_moe)
    import as usual meanwhile. No-op once mlx_lm is imported."""
    if "mlx_lm" in sys.modules:
        return
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return
    module = importlib.util.module_from_spec(spec)

    def finish(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        del module.__getattr__
        spec.loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = finish
    sys.modules["mlx_lm"] = module
    module.__version__ = importlib.import_module("mlx_lm._version").__version__
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"  # as mlx_lm's __init__ does


lazy_mlx_lm()  # what this process needs of mlx-lm is its model modules (procpool's workers likewise)


_MLX_LM_TABLES = ("MODEL_REMAPPING", "MODEL_ARCHITECTURE_REMAPPING")


@functools.lru_cache(maxsize=1)
def _mlx_lm_tables() -> tuple[dict, dict]:
    """mlx_lm.utils' MODEL_REMAPPING and MODEL_ARCHITECTURE_REMAPPING (model_type, and
    (model_type, architecture), -> mlx-lm's model module), read from its source: importing
    mlx_lm.utils imports transformers and torch (mlx_lm.tokenizer_utils), seconds that a
    conversion's main process does not otherwise spend. Each table is read from its own lines
    (`NAME = {` to the first line `}`): parsing the whole module took 9 ms, a thirtieth of
    the main process's way to the workers' start on the 2-core VM."""
    with open(importlib.util.find_spec("mlx_lm.utils").origin, encoding="utf-8") as f:
        source = f.read()
    found = [re.search(rf"^{name} = (\{{.*?^\}})", source, re.M | re.S) for name in _MLX_LM_TABLES]
    try:
        return tuple(ast.literal_eval(m.group(1)) for m in found)
    except (AttributeError, ValueError, SyntaxError):  # an mlx-lm that writes or builds them otherwise: ask it
        import mlx_lm.utils

        return tuple(getattr(mlx_lm.utils, name) for name in _MLX_LM_TABLES)


def model_classes(config: dict):
    """(Model, ModelArgs) from mlx-lm for config["model_type"], or a one-line error: the module
    mlx_lm.utils._get_classes picks, found by its tables (_mlx_lm_tables)."""
    remapping, by_architecture = _mlx_lm_tables()
    model_type = config["model_type"]
    architectures = config.get("architectures") or ()
    for architecture in (architectures,) if isinstance(architectures, str) else architectures:
        if (model_type, architecture) in by_architecture:
            model_type = by_architecture[model_type, architecture]
            break
    else:
        model_type = remapping.get(model_type, model_type)
    try:
        arch = importlib.import_module(f"mlx_lm.models.{model_type}")
    except ImportError:
        import mlx_lm

        raise CheckpointError(
            f"config.json: model_type {config['model_type']!r} is not supported by mlx-lm "
            f"{mlx_lm.__version__}; expected a model_type with a module in mlx_lm.models"
        ) from None
    return arch.Model, arch.ModelArgs


def text_args_class(config: dict):
    """The class mlx-lm's model for `config` reads its language model's keys with: a TEXT_ARGS row
    (llama4's TextArgs, qwen3_5_moe's flat TextModelArgs), else the ModelArgs of text_config's own
    mlx-lm model_type (gemma4's gemma4_text); None for a model without one."""
    if config.get("model_type") in TEXT_ARGS:
        module, _, name = TEXT_ARGS[config["model_type"]].rpartition(".")
        return getattr(importlib.import_module(module), name)
    text = config.get("text_config")
    model_type = isinstance(text, dict) and MODEL_TYPES.get(text.get("model_type"), text.get("model_type"))
    try:
        return model_classes({"model_type": model_type})[1] if model_type else None
    except CheckpointError:
        return None


def choose_runner(config: dict, runner: str | None = None) -> tuple[str, str | None]:
    """(runner, note): mlx-vlm for a vision-language config when mlx-vlm is installed, else mlx-lm;
    mlx-vlm for a text model only mlx-vlm runs (TEXT_BY_MLX_VLM); `runner` asks for one ("mlx-lm":
    text only, whatever the source)."""
    model_type, vlm = config.get("model_type"), is_vision_language(config)
    text_vlm = model_type in TEXT_BY_MLX_VLM
    if runner not in (None, *RUNNERS):
        raise CheckpointError(f"--for {runner}: expected one of {', '.join(RUNNERS)}")
    if text_vlm and runner != MLX_LM:  # --for mlx-lm: refused where mlx-lm has no model for it (model_classes)
        if not mlx_vlm_installed():
            raise CheckpointError(f"config.json: model_type {model_type!r} runs in mlx-vlm only (mlx-lm has no model "
                                  "for it), and mlx-vlm is not installed; expected `pip install 'moequant[vlm]'`")
        return MLX_VLM, (f"output for mlx-vlm: mlx-lm has no {model_type} model, mlx-vlm runs it; config.json as "
                         "the source's")
    if runner == MLX_VLM:
        if not vlm:
            keys = VISION_LANGUAGE[model_type].vision_keys if model_type in VISION_LANGUAGE else ("vision_config",)
            raise CheckpointError(
                f"--for mlx-vlm: config.json model_type {model_type!r}"
                + (f" has no {' / '.join(keys)}" if model_type in VISION_LANGUAGE else
                   " is not a vision-language model moequant converts for mlx-vlm")
                + f"; expected one of {', '.join(sorted(VISION_LANGUAGE))} with its vision part")
        if not mlx_vlm_installed():
            raise CheckpointError("--for mlx-vlm: mlx-vlm is not installed; expected `pip install 'moequant[vlm]'`")
        return MLX_VLM, "output for mlx-vlm (asked): vision tower and projector kept, language model as mlx-lm's"
    if runner == MLX_LM:
        return MLX_LM, ("output for mlx-lm (asked): text only, the vision tower and "
                        f"{' / '.join(VISION_LANGUAGE[model_type].vision_keys)} left out") if vlm else None
    if vlm and mlx_vlm_installed():
        return MLX_VLM, ("output for mlx-vlm (a vision-language checkpoint): vision tower and projector kept; "
                         "--for mlx-lm writes a text-only output")
    if vlm:
        return MLX_LM, ("output for mlx-lm, text only: mlx-vlm is not installed (`pip install 'moequant[vlm]'` "
                        "for an output that keeps the vision tower)")
    return MLX_LM, None


def _fill_aliases(resolved: dict, takes, where: str = "", model_type: str | None = None) -> list[str]:
    """Aliased keys filled in `resolved` (in place) for a config class taking `takes`: the renames
    of `model_type` (mlx-lm's; default resolved's own) (configmap), then the aliases every
    model_type has; one note each."""
    notes = apply_renames(resolved, takes, model_type or resolved.get("model_type"), where)
    for alias in CONFIG_ALIASES:
        if alias.key in resolved or alias.key not in takes:
            continue
        for source in alias.sources:
            value = lookup(resolved, source)
            if value is not MISSING:
                resolved[alias.key] = value
                notes.append(f"{where}{alias.key} = {value!r} (from {where}{source}, {alias.note})")
                break
    rope = resolved.get("rope_parameters")
    if isinstance(rope, dict) and "rope_scaling" in takes:
        # A scaled RoPE reaches rope_scaling as transformers reads it (rope_parameters: the source's
        # own, or its legacy rope_scaling as transformers standardised it, which fill_defaults put
        # there), so a release and its transformers re-save resolve alike. The keys transformers
        # adds are its reading: rope_type (a copy of "type"; mlx-lm reads either), rope_theta
        # (left out: mlx-lm's rope_scaling readers never read it), original_max_position_embeddings.
        if rope.get("rope_type", rope.get("type")) not in PLAIN_ROPE_TYPES:
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            scaling.setdefault("type", scaling.get("rope_type"))
            if resolved.get("rope_scaling") != scaling:
                resolved["rope_scaling"] = scaling
                notes.append(f"{where}rope_scaling = {scaling!r} (from {where}rope_parameters, transformers 5)")
    if "rope_scaling" in takes and "rope_scaling" not in resolved and isinstance(rope, dict):
        resolved["rope_scaling"] = None  # transformers 5 states RoPE in rope_parameters: plain RoPE
    return notes


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings (deprecated keys, slow fallbacks) held back while moequant reads a
    config or runs a reference; its logger's level is put back afterwards."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cache_dir() -> Path:
    """moequant's cache folder: $XDG_CACHE_HOME/moequant, else ~/.cache/moequant."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moequant"


_READING_FORMAT = 1  # of the cached readings below; a change of what they hold changes it


def _reading(obj, top: bool = True) -> dict:
    """What fill_defaults uses of transformers' config object: its class's name, attribute_map and
    sub_configs, the readings of its sub-config objects, and (`top`) its to_dict()."""
    cls = type(obj)
    sub_configs = list(getattr(cls, "sub_configs", {}))
    reading = {"class": cls.__name__, "attribute_map": dict(getattr(cls, "attribute_map", {})),
               "sub_configs": sub_configs,
               "subs": {k: _reading(v, False) for k in sub_configs if (v := getattr(obj, k, None)) is not None}}
    if top:
        reading["dict"] = obj.to_dict()
    return reading


_SCALARS = (str, int, float, bool, type(None))


def _encode(value):
    """`value` as JSON that _decode gives back exactly (dicts with int keys, tuples: transformers'
    id2label, ...), or None for a value of another type."""
    if type(value) in _SCALARS:
        return ["s", value]
    if type(value) in (list, tuple):
        items = [_encode(v) for v in value]
        return None if None in items else ["l" if type(value) is list else "t", items]
    if type(value) is dict:
        items = [[_encode(k), _encode(v)] for k, v in value.items()]
        return None if any(None in kv for kv in items) else ["d", items]
    return None


def _decode(data):
    tag, value = data
    if tag == "s":
        return value
    if tag == "d":
        return {_decode(k): _decode(v) for k, v in value}
    return (list if tag == "l" else tuple)(_decode(v) for v in value)


def _read_with_transformers(config: dict) -> dict | None:
    """transformers' own reading of config.json (its model_type's config class: _reading), or None
    when transformers has no such model_type (custom-code releases) or cannot read it. Read in a
    child process that hides torch (_readings_in_child) unless this one has transformers already:
    transformers' configuration module imports torch where it is installed, seconds and a quarter
    of a GB for nothing a config needs (0.7 s against 1.7-2.7 s on the 2-core VM)."""
    if "transformers" not in sys.modules:
        readings = _readings_in_child([config])
        if readings is not None:
            return readings[0]
    return _read_in_process(config)


# run by _readings_in_child: torch hidden (importlib finds no module None stands for), the configs
# as a JSON list on stdin, their _encode'd readings as a JSON list on stdout
_CHILD = ("import sys; sys.modules['torch'] = None; from moequant.target import _print_readings; "
          "_print_readings()")


def _print_readings() -> None:
    configs = json.load(sys.stdin)
    json.dump([_encode(_read_in_process(config)) for config in configs], sys.stdout)


def _readings_in_child(configs: list[dict]) -> list[dict | None] | None:
    """_read_in_process of each config, read by a child Python without torch; None when the child
    cannot give them (no interpreter to start, a failure, a reading _encode cannot carry): the
    caller reads them here instead."""
    if not sys.executable:  # pragma: no cover - an embedded interpreter
        return None
    try:
        payload = json.dumps(configs, allow_nan=True)
    except (TypeError, ValueError):  # not JSON (a config given in Python)
        return None
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
    try:
        result = subprocess.run([sys.executable, "-c", _CHILD], input=payload, capture_output=True, text=True,
                                env=env, timeout=300)
        encoded = json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.debug("config: transformers' reading in a child process failed (%s)", e)
        return None
    # an entry None: a reading _encode cannot carry (a None reading is ["s", None])
    if not isinstance(encoded, list) or len(encoded) != len(configs) or None in encoded:
        log.debug("config: transformers' reading in a child process failed: %s", result.stderr.strip()[-500:])
        return None
    return [_decode(e) for e in encoded]


def _read_in_process(config: dict) -> dict | None:
    """_read_with_transformers in this process."""
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:  # pragma: no cover - transformers comes with mlx-lm
        return None
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return None
    config_class = CONFIG_MAPPING[model_type]
    try:
        with quiet_transformers():
            # a deep copy: transformers' from_dict edits nested dicts in place (legacy rope_scaling)
            return _reading(config_class.from_dict({k: copy.deepcopy(v) for k, v in config.items()
                                                    if k != "model_type"}))
    except Exception as e:  # transformers' validation: anything it raises means "cannot read it"
        log.debug("config: transformers' %s cannot read config.json (%s)", config_class.__name__, e)
        return None


def installed_version(package: str) -> str | None:
    """The installed version of `package` (a distribution of the same name), or None: from the name
    of the `.dist-info` folder beside it, else by importlib.metadata (whose imports took 18 ms of
    each conversion's main process on the 2-core VM, for a version read every time)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    prefix, found = f"{package.replace('-', '_')}-", []
    try:
        if spec.origin is not None:  # not a namespace package
            found = [e.name[len(prefix):-len(".dist-info")] for e in os.scandir(Path(spec.origin).parent.parent)
                     if e.name.startswith(prefix) and e.name.endswith(".dist-info")]
    except OSError:
        pass
    if len(found) == 1:
        return found[0]
    from importlib import metadata  # a namespace package, an editable install, two dist-info folders: ask it

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _transformers_config(config: dict) -> dict | None:
    """_read_with_transformers(config), kept in cache_dir() per config.json (its keys in order) and
    transformers version: starting a child process and importing transformers' config class there
    takes most of a second, for a reading that only these two decide."""
    version = installed_version("transformers")
    if version is None:  # pragma: no cover - transformers comes with mlx-lm
        return None
    try:
        key = json.dumps([_READING_FORMAT, version, config], allow_nan=True)
    except (TypeError, ValueError):  # not JSON (a config given in Python): nothing to key it by
        return _read_with_transformers(config)
    path = cache_dir() / "transformers-config" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached["key"] == key:
            return _decode(cached["reading"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    reading = _read_with_transformers(config)
    encoded = _encode(reading)
    if encoded is not None:  # else a value of a type _encode does not keep: read again each time
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"key": key, "reading": encoded}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only home: no cache, same result
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return reading


def _fill_missing(resolved: dict, full: dict, sub_configs=(), where: str = "") -> list[str]:
    """Keys of `full` missing from `resolved` (in place, nested dicts too), and keys `resolved`
    states as null that transformers reads as a value (mimo_v2_flash's routed_scaling_factor:
    null read as 1.0): the filled keys. `sub_configs`: the keys of sub-models (transformers'
    sub_configs), never filled where the source has none (a text-only release's vision_config)."""
    filled = []
    for key, value in full.items():
        if key in TRANSFORMERS_BOOKKEEPING or key.startswith("_"):
            continue
        if key in sub_configs and not isinstance(resolved.get(key), dict):
            continue
        if key not in resolved or (resolved[key] is None and value is not None):
            resolved[key] = copy.deepcopy(value)
            filled.append(f"{where}{key}")
        elif isinstance(value, dict) and isinstance(resolved[key], dict):
            filled += _fill_missing(resolved[key], value, (), f"{where}{key}.")
    return filled


def _fill_attribute_aliases(resolved: dict, reading: dict, where: str = "") -> list[str]:
    """The names transformers' config class reads as other keys (its attribute_map: bailing_hybrid's
    num_experts_per_tok is num_experts_per_token), filled (in place) from the key transformers
    writes; mlx-lm's models were written against the releases' names. Sub-configs too."""
    filled = []
    for alias, key in reading["attribute_map"].items():
        if alias not in resolved and key in resolved:
            resolved[alias] = copy.deepcopy(resolved[key])
            filled.append(f"{where}{alias} (= {where}{key})")
    for key, sub in reading["subs"].items():
        if isinstance(resolved.get(key), dict):
            filled += _fill_attribute_aliases(resolved[key], sub, f"{where}{key}.")
    return filled


def _decode_floats(value):
    """transformers 5 writes non-finite floats as {"__float__": "Infinity"} (JSON has none); the
    runners' config classes read plain JSON, so they get the float itself."""
    if isinstance(value, dict):
        if value.keys() == {"__float__"} and isinstance(value["__float__"], str):
            return float(value["__float__"].replace("Infinity", "inf"))
        return {k: _decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_floats(v) for v in value]
    return value


def fill_defaults(config: dict) -> tuple[dict, list[str]]:
    """config.json with what transformers' config class reads for every key the file leaves out
    (save_pretrained writes only the values that differ from the class's defaults), and the
    model_type mlx-lm runs it under (MODEL_TYPES); one note for all."""
    resolved = _decode_floats(config)
    notes = []
    full = _transformers_config(config)
    if full is not None:
        filled = _fill_missing(resolved, _decode_floats(full["dict"]), full["sub_configs"])
        if filled:
            notes.append(f"config: {len(filled)} keys left out of config.json (or null) read as transformers' "
                         f"{full['class']} reads them ({', '.join(filled[:8])}{', …' if len(filled) > 8 else ''})")
        aliased = _fill_attribute_aliases(resolved, full)
        if aliased:
            notes.append(f"config: {len(aliased)} keys under the names transformers' {full['class']} "
                         f"also reads them by ({', '.join(aliased[:8])}{', …' if len(aliased) > 8 else ''})")
    model_type = config.get("model_type")
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    remapped = {**_mlx_lm_tables()[1], **MODEL_ARCHITECTURES}  # mlx-lm's own pairs, named the same way
    if (model_type, architecture) in remapped:
        resolved["model_type"] = remapped[model_type, architecture]
        notes.append(f"config: model_type {model_type!r} with architectures [{architecture!r}] is mlx-lm's "
                     f"{resolved['model_type']!r}")
    elif model_type in WRAPPED:
        resolved = {"model_type": MODEL_TYPES[model_type], "text_config": resolved}
        notes.append(f"config: model_type {model_type!r} is the language model of mlx-lm's "
                     f"{MODEL_TYPES[model_type]!r}: its keys under text_config, its tensors under "
                     + ", ".join(new for _, new in WRAPPED[model_type].prefixes))
    elif model_type in MODEL_TYPES:
        resolved["model_type"] = MODEL_TYPES[model_type]
        notes.append(f"config: model_type {model_type!r} is mlx-lm's {MODEL_TYPES[model_type]!r}")
    return resolved, notes


def resolve_config(config: dict, runner: str | None = None) -> tuple[dict, list[str]]:
    """The config for the chosen runner (see choose_runner): transformers' defaults filled in
    (fill_defaults), aliased keys filled in for the runner's config classes, one note per fill
    or choice."""
    resolved, notes = fill_defaults(config)
    config = resolved
    resolved = copy.deepcopy(config)
    runner, note = choose_runner(config, runner)
    notes = ([note] if note else []) + notes
    if runner == MLX_VLM:
        arch = _vlm_arch(config)
        notes += _fill_aliases(resolved, _config_fields(arch.ModelConfig))
        # the sub-configs as mlx-vlm's classes read them: text_config by the renames of mlx-lm's model_type
        # where a TEXT_ARGS row says its language model reads them (as for mlx-lm, below), else of its own
        # model_type; vision_config by those of its own model_type
        renames_of = resolved["model_type"] if resolved["model_type"] in TEXT_ARGS else None
        for key, part, of in (("text_config", "TextConfig", renames_of), ("vision_config", "VisionConfig", None)):
            sub = resolved.get(key)
            if isinstance(sub, dict) and hasattr(arch, part):
                notes += _fill_aliases(sub, _config_fields(getattr(arch, part)), f"{key}.", of)
        notes += _fill_nested(resolved, arch.ModelConfig, "", ("text_config", "vision_config"))
        text = resolved.get("text_config")
        if getattr(VISION_LANGUAGE.get(resolved["model_type"]), "text_at_root", False) and isinstance(text, dict):
            # the runner reads the language model's keys at the root; the root's own keys win, as in transformers
            filled = [k for k in text if k not in resolved and k not in TRANSFORMERS_BOOKKEEPING]
            resolved.update((k, copy.deepcopy(text[k])) for k in filled)
            notes.append(f"config: {len(filled)} keys of text_config also at the root, where mlx-vlm's "
                         f"{resolved['model_type']} reads them "
                         f"({', '.join(filled[:8])}{', …' if len(filled) > 8 else ''})")
    else:
        for key in VISION_LANGUAGE[config["model_type"]].vision_keys if is_vision_language(config) else ():
            resolved.pop(key)
        _, args_class = model_classes(config)
        notes += _fill_aliases(resolved, inspect.signature(args_class).parameters)
        text = resolved.get("text_config")
        nested = isinstance(text, dict)
        text_args = text_args_class(resolved)
        if text_args is not None:  # the language model's keys: in text_config (gemma4, llama4), or flat (qwen3_5_moe)
            takes = _config_fields(text_args)
            # renames of mlx-lm's model_type where a TEXT_ARGS row says how it reads them, else of
            # text_config's own model_type (gemma4's gemma4_text)
            renames_of = resolved["model_type"] if resolved["model_type"] in TEXT_ARGS else None
            notes += _fill_aliases(text if nested else resolved, takes, "text_config." if nested else "", renames_of)
            if nested:
                # transformers 5 writes its bookkeeping (dtype) into sub-configs too; mlx-lm's text
                # ModelArgs never reads it, and the outer ModelArgs may keep text_config as a dict
                for key in [k for k in text if k in TRANSFORMERS_BOOKKEEPING and k not in takes and k != "model_type"]:
                    del text[key]
        notes += [f"{row.flag} is false: {row.what} written as zeros (mlx-lm's {resolved['model_type']} always has "
                  "them; zeros compute what transformers computes without them)" for row in _zero_rows(resolved)]
    for line in notes:  # which runner the output is for is said; how config.json was read only with -v
        log.log(logging.INFO if line == note else logging.DEBUG, "config: %s", line)
    return resolved, notes


def language_config(config: dict) -> dict:
    """The language model's keys in a config: its text_config, or where its VisionLanguage row says
    (Qwen3-Omni's thinker_config.text_config); {} if it has none."""
    row = VISION_LANGUAGE.get(config.get("model_type"))
    text = lookup(config, row.text if row else "text_config")
    return text if isinstance(text, dict) else {}


def _fill_nested(resolved: dict, config_class, where: str, done: tuple[str, ...] = ()) -> list[str]:
    """Aliases filled (in place) in the sub-configs an mlx-vlm config class builds from its own config
    classes (a field typed as one), at any depth (Qwen3-Omni's thinker_config.text_config,
    talker_config.code_predictor_config), each by the fields of its class, but for the keys in `done`
    (filled already); one note per fill."""
    notes = []
    for name, sub_class in typing.get_type_hints(config_class).items():
        sub = resolved.get(name)
        if name in done or not isinstance(sub, dict) or not dataclasses.is_dataclass(sub_class):
            continue
        notes += _fill_aliases(sub, _config_fields(sub_class), f"{where}{name}.")
        notes += _fill_nested(sub, sub_class, f"{where}{name}.")
    return notes


def _zero_rows(config: dict):
    return [row for row in ABSENT_AS_ZEROS.get(config.get("model_type"), ())
            if not row.flag or config.get(row.flag) is False]


def absent_as_zeros(config: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The parameters (key -> shape) of a resolved config's model written as zeros: those of an
    ABSENT_AS_ZEROS row whose flag transformers reads as false."""
    rows = _zero_rows(config)
    return {k: shape for k, shape in shapes.items() if any(re.search(row.keys, k) for row in rows)}


def reads_as_is(config: dict) -> bool:
    """Whether the runner reads config.json as it is exactly as moequant resolves it: every key its
    config class takes has the same value (or absence) both ways."""
    resolved, _ = resolve_config(config)
    if runner_of(resolved) == MLX_VLM or resolved.get("model_type") != config.get("model_type"):
        return resolved == config
    args_class = model_classes(resolved)[1]
    try:
        return args_class.from_dict(config) == args_class.from_dict(resolved)
    except TypeError:  # a required key config.json leaves out
        return False


def build_model(config: dict) -> nn.Module:
    """The runner's model (runner_of) for an already resolved config; its weights stay lazy."""
    if runner_of(config) == MLX_VLM:
        arch = _vlm_arch(config)
        try:
            return _vlm_target_class(arch)(_vlm_config(arch, config))
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"config.json: mlx-vlm's {arch.__name__} rejects it ({e})") from None
    model_class, args_class = model_classes(config)
    try:
        args = args_class.from_dict(config)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as e:
        raise CheckpointError(f"config.json: mlx-lm's {args_class.__module__}.ModelArgs rejects it ({e})") from None
    try:
        return model_class(args)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as e:
        # a value the model reads in a way config.json does not support (e.g. rope_scaling None where the
        # model reads rope_scaling["factor"], an unsupported topk_method asserted away)
        what = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise CheckpointError(f"config.json: mlx-lm's {model_class.__module__}.Model cannot be built from it "
                              f"({what}); expected the values its {model_class.__module__.rsplit('.', 1)[-1]} "
                              "module reads") from None
