"""Read a source checkpoint from headers alone: config.json, shards, index, tensor names/shapes/dtypes.

Tensor data is touched only by `Checkpoint.load`, one group of keys at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .errors import CheckpointError
from .registry import SOURCE_PREFIXES
from .names import layer_of

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype -> bytes per element
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# mlx dtype -> safetensors spelling (mlx writes fp8 as U8; releases tag it F8_E4M3)
DTYPE_TAGS = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32", mx.uint8: "U8",
              mx.int32: "I32", mx.int64: "I64", mx.uint16: "U16", mx.int8: "I8", mx.int16: "I16",
              mx.uint64: "U64", mx.bool_: "BOOL"}

# Files copied beside the weights when present (tokenizer, generation, chat-template and processor files).
SIDECAR_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "*.tiktoken", "tiktoken.model", "vocab.json", "merges.txt", "vocab.txt",
    "generation_config.json", "chat_template.json", "chat_template.jinja", "*.jinja",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    # the license and use-policy files a release ships (DST is a derivative: they travel with it)
    "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "NOTICE.txt", "NOTICE.md", "USE_POLICY", "USE_POLICY.md",
)

# What a hub snapshot needs for a conversion (everything else in a repo is left on the hub)
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "README.md", *SIDECAR_PATTERNS]  # README: its card metadata

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: BF16, F32, U32, F8_E4M3, …
    file: Path
    nbytes: int

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class Group:
    """The tensors converted together: one decoder layer, or everything outside the layers."""

    name: str  # "model.layers.3" or "rest"
    keys: tuple[str, ...]


def encode_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None = None) -> bytes:
    """A safetensors header for tensors (key, dtype tag, shape) stored back to back in this order,
    with its 8-byte length prefix and padding."""
    header, offset = {}, 0
    for key, tag, shape in entries:
        nbytes = math.prod(shape) * ITEMSIZE[tag]
        header[key] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class Stacked:
    """A tensor given as equal parts along a new first axis (an expert stack, expert by expert):
    what `mx.stack(parts)` would be, computed and written part by part so that no stacked copy
    is ever made."""

    def __init__(self, parts: list[mx.array]):
        self.parts = parts

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)

    @property
    def dtype(self) -> mx.Dtype:
        return self.parts[0].dtype


def tensor_bytes(value: mx.array) -> memoryview:
    """The raw bytes of an array in C order, as safetensors stores them (evaluates it): the array's
    own buffer when it is row-contiguous (no copy), else a contiguous copy's."""
    mx.eval(value)
    view = memoryview(value)
    if not view.c_contiguous:
        value = mx.contiguous(value)
        mx.eval(value)
        view = memoryview(value)
    return view.cast("B")


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Every tensor's name, shape and dtype from a shard header, checking the file is complete."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: {size} bytes; expected a safetensors file (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(
                    f"{file}: header says {n} bytes of metadata but the file has {size}; "
                    "expected a complete safetensors file (truncated download?)"
                )
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found; expected a safetensors shard") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable header ({e}); expected a safetensors file") from None
    header.pop("__metadata__", None)
    tensors = {}
    for key, entry in header.items():
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if dtype not in ITEMSIZE:
            raise CheckpointError(f"{file}: tensor {key} has dtype {dtype}; expected one of {', '.join(ITEMSIZE)}")
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != nbytes:
            raise CheckpointError(
                f"{file}: tensor {key} spans {end - begin} bytes; expected {nbytes} for {dtype} {list(shape)}"
            )
        if 8 + n + end > size:
            raise CheckpointError(
                f"{file}: tensor {key} ends at byte {8 + n + end} but the file has {size}; "
                "expected a complete shard (truncated download?)"
            )
        tensors[key] = TensorInfo(key, shape, dtype, file, nbytes)
    return tensors


def resolve_source(src: str | os.PathLike) -> Path:
    """A local folder as is; a hub id through huggingface_hub's cache (offline mode respected)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{src}: is a file; expected a checkpoint folder or a hub id")
        return path
    if not _HUB_ID.match(str(src)):
        raise CheckpointError(f"{src}: no such folder; expected a checkpoint folder or a hub id like org/name")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(str(src), allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as e:  # huggingface_hub raises many types; all mean "not available"
        where = "in the local Hugging Face cache (offline mode)" if constants.HF_HUB_OFFLINE else "on the hub"
        raise CheckpointError(
            f"{src}: not a local folder and not available {where} ({type(e).__name__}); "
            "expected a checkpoint folder or a cached hub id"
        ) from None


class Checkpoint:
    """A source checkpoint: its config and, per tensor, where it is and what it is."""

    def __init__(self, path: Path, config: dict, tensors: dict[str, TensorInfo]):
        self.path = path
        self.config = config
        self.tensors = tensors
        self._shards: dict[Path, dict] | None = None  # see shards_kept
        self._groups: list[Group] | None = None  # see groups (every tensor's layer_of: 0.04 s for 19k tensors)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def groups(self) -> list[Group]:
        """Decoder layers in order, then everything else; each tensor in exactly one group."""
        if self._groups is None:
            self._groups = self._grouped()
        return list(self._groups)

    def _grouped(self) -> list[Group]:
        layers: dict[tuple[str, int], list[str]] = {}
        rest: list[str] = []
        for key in self.tensors:
            where = layer_of(key)
            (layers.setdefault(where, []) if where else rest).append(key)
        groups = [Group(f"{p}.{i}", tuple(sorted(ks))) for (p, i), ks in sorted(layers.items())]
        if rest:
            groups.append(Group("rest", tuple(sorted(rest))))
        return groups

    def load(self, keys) -> dict[str, mx.array]:
        """The tensors named, lazily loaded from their shards (each shard's dict is dropped after,
        unless inside shards_kept)."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.tensors[key].file, []).append(key)
        out = {}
        for file, names in by_file.items():
            if self._shards is None:
                arrays = mx.load(str(file))
            elif (arrays := self._shards.get(file)) is None:
                arrays = self._shards[file] = mx.load(str(file))
            out.update((k, arrays[self.tensors[k].key]) for k in names)  # SOURCE_PREFIXES renamed the keys
        return out

    @contextmanager
    def shards_kept(self):
        """Inside, each shard is opened once (`load` keeps its dict of lazy arrays): for a dry run,
        which evaluates none of them. mx.load makes an array of every tensor in the shard, so a
        shard opened again for each group cost the benchmarks' 9-layer, one-shard layout 0.057 of
        its manifest's 0.086 s. Not around work that evaluates them: a kept dict would hold their data."""
        self._shards = {}
        try:
            yield
        finally:
            self._shards = None


def mlx_quantization(config: dict) -> dict | None:
    """An MLX checkpoint's quantization entry (defaults + per-path entries), wherever it sits:
    `quantization` or its alias `quantization_config`, at the top or under `text_config`."""
    for where in (config, config.get("text_config") or {}):
        for key in ("quantization", "quantization_config"):
            q = where.get(key)
            if isinstance(q, dict) and "bits" in q and "group_size" in q:
                return q
    return None


def read_config(path: Path) -> dict:
    file = path / "config.json"
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found; expected a model folder with config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if "model_type" not in config:
        raise CheckpointError(f"{file}: no model_type key; expected e.g. \"model_type\": \"qwen3_moe\"")
    modelopt = path / "hf_quant_config.json"  # NVIDIA ModelOpt exports keep their settings here
    if modelopt.exists() and not config.get("quantization_config"):
        try:
            config["quantization_config"] = {"quant_method": "modelopt", **json.loads(modelopt.read_text())}
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{modelopt}: not valid JSON ({e})") from None
    return config


def read_checkpoint(src: str | os.PathLike) -> Checkpoint:
    path = resolve_source(src)
    config = read_config(path)
    index_file = path / INDEX_FILE
    tensors: dict[str, TensorInfo] = {}
    if index_file.exists():
        try:
            weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_file}: unreadable ({e!r}); expected a weight_map") from None
        headers = {}
        for name in sorted(set(weight_map.values())):
            if not (path / name).exists():
                raise CheckpointError(f"{INDEX_FILE}: lists {name}; expected it in {path}, not found")
            headers[name] = read_safetensors_header(path / name)
            tensors.update(headers[name])
        for key, name in weight_map.items():
            if key not in headers[name]:
                raise CheckpointError(f"{INDEX_FILE}: says {key} is in {name}; {name} has no such tensor")
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors and no {INDEX_FILE}; expected model weights")
        for file in files:
            tensors.update(read_safetensors_header(file))
    log.debug("read %d tensors from %s", len(tensors), path)
    if prefixes := SOURCE_PREFIXES.get(config["model_type"]):  # e.g. a wrapped language model: its wrapper's keys
        tensors = {_prefixed_key(key, prefixes): info for key, info in tensors.items()}
    return Checkpoint(path, config, tensors)


def _prefixed_key(key: str, prefixes: tuple[tuple[str, str], ...]) -> str:
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old):]
    return key
