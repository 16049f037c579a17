"""Write DST: shards + index + config.json + sidecar files into a temporary sibling folder, check the
result against the plan, then rename it into place. Nothing half-written ever looks finished."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from . import __version__
from .checkpoint import (DTYPE_TAGS, INDEX_FILE, ITEMSIZE, SIDECAR_PATTERNS, Stacked, encode_header,
                         read_safetensors_header, tensor_bytes)
from .errors import OutputError, os_reason, size_text
from .formats import MODES, packed_shape, scales_shape
from .names import module_path
from .plan import Plan

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 5 << 30  # bytes, as mlx-lm
PARTS_AT_ONCE = 8  # parts of a Stacked tensor (experts) evaluated together
# moequant's mark on every output folder: {"written_by": "moequant", "version": …, "files": [every
# file it wrote]}. `--force` replaces an existing DST only if it carries this mark and holds
# nothing else (or is empty), so it can never delete a folder moequant did not write.
MARK_FILE = "moequant.json"
SPACE_MARGIN = 1 << 20  # bytes beyond the shards: index, config.json, tokenizer files


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _folder_names(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _marked_files(folder: Path) -> set[str] | None:
    """The files a previous moequant run wrote into `folder` (its MARK_FILE lists them), or None
    if the folder carries no readable mark."""
    try:
        mark = json.loads((folder / MARK_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(mark, dict) or mark.get("written_by") != "moequant" or not isinstance(mark.get("files"), list):
        return None
    return {str(f) for f in mark["files"]} | {MARK_FILE}


def check_apart(dst: Path, src: Path) -> None:
    """Refuse a DST that is SRC, holds SRC or lies inside it: writing there (let alone --force
    replacing it) would destroy or mix into the source checkpoint."""
    d, s = Path(dst).resolve(), Path(src).resolve()
    if d == s:
        raise OutputError(f"{dst}: is SRC itself; expected a different folder (the source checkpoint is never "
                          "replaced)")
    if d in s.parents:
        raise OutputError(f"{dst}: contains SRC ({src}); expected a folder outside it (replacing it would delete "
                          "the source)")
    if s in d.parents:
        raise OutputError(f"{dst}: lies inside SRC ({src}); expected a folder outside the source checkpoint")


def check_destination(dst: Path, force: bool, src: Path | None = None) -> None:
    """Refuse, before any work is done, a DST that cannot be written or must not be replaced.

    Without --force DST must not exist. With --force an existing DST is replaced only if it is an
    empty folder or a previous moequant output: a folder carrying MARK_FILE, holding nothing but
    the files listed there. A file, a link or any other folder is named and left alone."""
    dst = Path(dst)
    if src is not None:
        check_apart(dst, src)
    if dst.is_symlink():
        raise OutputError(f"{dst}: is a symbolic link; expected a new folder (moequant never replaces a link)")
    if dst.exists():
        if not dst.is_dir():
            raise OutputError(f"{dst}: is a file; expected a new folder (moequant never replaces a file, "
                              "even with --force)")
        try:
            present = {p.name for p in dst.iterdir()}
        except OSError as e:
            raise OutputError(f"{dst}: {os_reason(e)}; expected a new folder") from None
        marked = _marked_files(dst)
        if present and marked is None:
            raise OutputError(f"{dst}: already exists and is not a moequant output (no {MARK_FILE}; holds "
                              f"{_folder_names(dst)}); expected a new folder (--force replaces only a previous "
                              "moequant output or an empty folder)")
        if present and (extra := sorted(present - marked)):
            raise OutputError(f"{dst}: a moequant output that also holds {', '.join(extra[:3])}, which moequant "
                              f"did not write; expected a new folder (--force replaces only what moequant wrote)")
        if not force:
            raise OutputError(f"{dst}: already exists; expected a new folder (or pass --force to replace it)")
    if dst.parent.exists() and not dst.parent.is_dir():
        raise OutputError(f"{dst.parent}: not a folder; expected DST's parent to be one")


@contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block is done (in the main thread, where Python runs
    signal handlers); elsewhere a no-op."""
    held = {signal.SIGINT, signal.SIGTERM}
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if main else None
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def free_space(folder: Path) -> int:
    """Bytes free for writing in `folder` (its nearest existing ancestor's file system)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


@dataclass(frozen=True)
class Slot:
    """Where one output tensor goes: known before any data is computed (see Conversion.manifest)."""

    key: str
    tag: str  # safetensors dtype
    shape: tuple[int, ...]
    shard: int
    offset: int  # absolute byte offset in the shard file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.tag]


class Output:
    """A temporary folder beside DST that becomes DST only when `finish` succeeds.

    Every output tensor's name, dtype and shape are known up front (the manifest), so each shard
    file is created whole — header first, data region sized — and each tensor is written at its
    offset the moment it is computed. Nothing waits for a shard to fill: memory stays bounded by
    the group being converted, whatever the shard size or the model size."""

    def __init__(self, dst: Path, force: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
                 src: Path | None = None):
        self.dst = Path(dst)
        self.force = force
        self.shard_size = shard_size
        self.src = src
        self.tmp = self.dst.parent / f".{self.dst.name}.moequant-partial-{os.getpid()}"
        self.slots: dict[str, Slot] = {}
        self.names: list[str] = []
        self.files: list[int] = []  # open file descriptors, one per shard
        self.written: set[str] = set()
        self.nbytes = 0  # of all shards, once allocated
        self.lock = threading.Lock()  # `add` is called from several worker threads

    @contextmanager
    def _os(self, doing: str, path: Path | None = None):
        """An OSError while writing as one OutputError naming DST (or `path`) and what was expected."""
        try:
            yield
        except OSError as e:
            where = path or self.dst
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                expected = f"{size_text(self.nbytes + SPACE_MARGIN)} free for DST" if self.nbytes else "free space"
            else:
                expected = f"a folder moequant can write ({where.parent if where == self.dst else where})"
            raise OutputError(f"{where}: {os_reason(e)} ({doing}); expected {expected}") from None

    def __enter__(self) -> "Output":
        check_destination(self.dst, self.force, self.src)
        with self._os(f"creating {self.dst.parent}", self.dst.parent):
            self.dst.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.dst.parent.glob(f".{self.dst.name}.moequant-partial-*"):
            if not _alive(stale.name.rsplit("-", 1)[-1]):  # left by a run that was killed (SIGKILL)
                log.info("removing %s, left by an interrupted run", stale)
                shutil.rmtree(stale, ignore_errors=True)
        with self._os(f"creating a temporary folder in {self.dst.parent}", self.dst.parent):
            self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)  # after a successful finish it is already gone

    def _close(self) -> None:
        for fd in self.files:
            try:
                os.close(fd)
            except OSError:
                pass
        self.files = []

    def allocate(self, manifest: list[tuple[str, str, tuple[int, ...]]]) -> None:
        """Cut the manifest (key, dtype tag, shape; in write order) into shards of at most
        `shard_size` bytes (a larger tensor gets a shard of its own) and create the files — once
        DST's file system is known to have room for all of them (shutil.disk_usage)."""
        if self.shard_size <= 0:
            raise OutputError(f"shard size {self.shard_size}: expected a size above 0 bytes")
        shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
        size = 0
        for entry in manifest:
            nbytes = math.prod(entry[2]) * ITEMSIZE[entry[1]]
            if shards[-1] and size + nbytes > self.shard_size:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += nbytes
        n = len(shards)
        self.names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        headers, ends = [], []
        for i, entries in enumerate(shards):
            header = encode_header(entries, {"format": "mlx"})
            offset = len(header)
            for key, tag, shape in entries:
                self.slots[key] = slot = Slot(key, tag, tuple(shape), i, offset)
                offset += slot.nbytes
            headers.append(header)
            ends.append(offset)
        self.nbytes = sum(ends)
        need = self.nbytes + SPACE_MARGIN + self._sidecar_bytes()
        if (free := free_space(self.dst.parent)) < need:
            raise OutputError(f"{self.dst.parent}: {size_text(free)} free; expected at least {size_text(need)} "
                              f"for DST ({n} shard{'s' * (n > 1)} and its config and tokenizer files)")
        for name, header, end in zip(self.names, headers, ends):
            with self._os(f"creating {name}"):
                fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self.files.append(fd)
                os.pwrite(fd, header, 0)
                os.ftruncate(fd, end)

    def _sidecar_bytes(self) -> int:
        if self.src is None:
            return 0
        return sum(f.stat().st_size for pattern in SIDECAR_PATTERNS for f in Path(self.src).glob(pattern)
                   if f.is_file())

    def add(self, tensors: dict[str, mx.array | Stacked], only: range | None = None) -> None:
        """Evaluate tensors one module at a time and write each at its place (any mismatch with
        the manifest is an error). Takes ownership of `tensors`: each is dropped once written, so
        only one module's inputs and outputs are in memory at a time — of a Stacked tensor, only
        PARTS_AT_ONCE of its parts. `only`: of each Stacked tensor, only these parts (procpool's
        workers share a layer's expert stacks so)."""
        by_module: dict[str, list[str]] = {}
        for key in tensors:
            by_module.setdefault(module_path(key), []).append(key)
        for keys in by_module.values():
            batch = {k: tensors.pop(k) for k in keys}
            slots = {k: self._claim(k, v) for k, v in batch.items()}
            whole = {k: v for k, v in batch.items() if not isinstance(v, Stacked)}
            mx.eval(list(whole.values()))
            for k, v in whole.items():
                self._pwrite(slots[k].shard, tensor_bytes(v), slots[k].offset)
            stacked = {k: v.parts for k, v in batch.items() if isinstance(v, Stacked)}
            del batch, whole
            n = min((len(parts) for parts in stacked.values()), default=0)
            todo = range(n) if only is None else range(max(only.start, 0), min(only.stop, n))
            for start in range(todo.start, todo.stop, PARTS_AT_ONCE):
                chunk = range(start, min(start + PARTS_AT_ONCE, todo.stop))
                mx.eval([parts[i] for parts in stacked.values() for i in chunk])
                for k, parts in stacked.items():
                    slot = slots[k]
                    for i in chunk:
                        data = tensor_bytes(parts[i])
                        self._pwrite(slot.shard, data, slot.offset + i * data.nbytes)
                        parts[i] = None  # written: free it

    def _pwrite(self, shard: int, data: memoryview, offset: int) -> None:
        """Write one tensor's bytes at their place (a worker process writes from a thread of its own)."""
        done = 0
        with self._os(f"writing {self.names[shard]}"):
            while done < data.nbytes:  # pwrite may write less than asked (buffers over 2 GiB)
                done += os.pwrite(self.files[shard], data[done:], offset + done)

    @classmethod
    def attached(cls, slots: dict[str, Slot], paths: list[Path], dst: str | None = None, nbytes: int = 0) -> "Output":
        """An Output that writes into shard files another process created with `allocate` (a
        worker process of procpool): same `add`, no folder of its own, nothing to finish."""
        self = cls.__new__(cls)
        self.slots, self.written, self.lock = slots, set(), threading.Lock()
        self.files = [os.open(path, os.O_WRONLY) for path in paths]
        # what _os names in a one-line error: DST (else the folder the shards are in) and its size
        self.dst, self.nbytes = Path(dst) if dst else Path(paths[0]).parent, nbytes
        self.names = [Path(p).name for p in paths]
        return self

    def adopt(self, keys: list[str]) -> None:
        """Record tensors another process wrote (procpool's workers), each once."""
        with self.lock:
            if twice := sorted(self.written.intersection(keys)):
                raise OutputError(f"{twice[0]}: written twice; expected each output tensor once")
            if odd := sorted(set(keys) - set(self.slots)):
                raise OutputError(f"{odd[0]}: written but not in the manifest")
            self.written.update(keys)

    def _claim(self, key: str, value: mx.array | Stacked) -> Slot:
        """The slot of an output tensor about to be written, checked against the manifest."""
        slot = self.slots.get(key)
        tag = DTYPE_TAGS.get(value.dtype)
        with self.lock:
            twice = key in self.written
            self.written.add(key)
        if slot is None or twice or (slot.tag, slot.shape) != (tag, tuple(value.shape)):
            want = f"{slot.tag} {list(slot.shape)}" if slot else "no such tensor"
            raise OutputError(f"{key}: computed {tag} {list(value.shape)}; the manifest says {want}"
                              f"{' (written twice)' if twice else ''}")
        return slot

    def write_files(self, config: dict, source: Path, plan: Plan, files: dict[str, str | bytes] | None = None) -> None:
        """Index, config.json, SRC's tokenizer and license files and `files` (name -> text or bytes:
        the model card, the plan, its picture) into the temporary folder; none depends on the tensors'
        bytes, so this may run while the shards are still being written."""
        index = {"metadata": {"total_size": sum(s.nbytes for s in self.slots.values()), "total_parameters": plan.params},
                 "weight_map": {k: self.names[s.shard] for k, s in sorted(self.slots.items())}}
        with self._os("writing its index, config.json, tokenizer files and model card"):
            (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=4))
            for pattern in SIDECAR_PATTERNS:
                for file in source.glob(pattern):
                    if file.is_file() and not (self.tmp / file.name).exists():
                        shutil.copy(file, self.tmp / file.name)
            (self.tmp / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
            for name, content in (files or {}).items():
                if isinstance(content, bytes):
                    (self.tmp / name).write_bytes(content)
                else:
                    (self.tmp / name).write_text(content)

    def finish(self, plan: Plan) -> None:
        """Once every tensor is written (and write_files has run): the mark listing every file, the
        whole checked against the plan, then renamed into place."""
        if missing := sorted(set(self.slots) - self.written):
            raise OutputError(f"{missing[0]}: in the manifest but never computed ({len(missing)} in all)")
        self._close()
        with self._os("writing its index, config.json, tokenizer files and model card"):
            files = sorted(p.name for p in self.tmp.iterdir())
            mark = {"written_by": "moequant", "version": __version__, "files": [*files, MARK_FILE]}
            (self.tmp / MARK_FILE).write_text(json.dumps(mark, indent=4))
        verify_output(self.tmp, plan)
        with self._os("moving the finished output into place"):
            self._replace()

    def _replace(self) -> None:
        """Rename the finished temporary folder to DST. An existing DST (--force) is checked once
        more (it may have changed during the run), set aside, and deleted only once the new DST is
        in place; if that rename fails the old DST is put back, so no user folder is ever left
        renamed."""
        if not (self.dst.exists() or self.dst.is_symlink()):
            self.tmp.rename(self.dst)
            return
        check_destination(self.dst, True, self.src)
        old = self.dst.parent / f".{self.dst.name}.moequant-old-{os.getpid()}"
        with _signals_held():  # a Ctrl-C between the two renames must not leave the old DST set aside
            self.dst.rename(old)
            try:
                self.tmp.rename(self.dst)
            except OSError:
                old.rename(self.dst)
                raise
        shutil.rmtree(old, ignore_errors=True)


def output_config(resolved_config: dict, plan: Plan) -> dict:
    """config.json for DST: the resolved source config, with `quantization` and its alias."""
    config = {k: v for k, v in resolved_config.items() if k not in ("quantization", "quantization_config")}
    quantization = plan.quantization_config()
    if quantization is not None:
        config["quantization"] = quantization
        config["quantization_config"] = dict(quantization)
    return config


def verify_output(folder: Path, plan: Plan) -> None:
    """Every module is stored as the plan says (packed or float, with its own parameters), and the
    config's quantization entries say the same. Any difference is an OutputError naming the module."""
    index = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    stored = {}
    for name in sorted(set(index.values())):
        stored.update(read_safetensors_header(folder / name))
    if set(stored) != set(index):
        odd = sorted(set(stored) ^ set(index))[0]
        raise OutputError(f"{INDEX_FILE}: disagrees with the shards about {odd}; expected the same tensors")
    config = json.loads((folder / "config.json").read_text())
    want = plan.quantization_config()
    for key in ("quantization", "quantization_config"):
        if config.get(key) != want:
            raise OutputError(f"config.json: {key} is {config.get(key)!r}; expected {want!r} from the plan")
    for row in plan.rows:
        weight = stored.get(f"{row.path}.weight")
        if weight is None:
            continue  # modules whose parameters are not named weight (rare) are checked by load tests
        scales = stored.get(f"{row.path}.scales")
        if row.quant is None:
            if not weight.is_float or scales is not None or weight.shape != row.shape:
                raise OutputError(
                    f"{row.path}: stored as {weight.dtype} {list(weight.shape)}"
                    f"{' with scales' if scales is not None else ''}; expected float {list(row.shape)} (plan: keep)"
                )
            continue
        q, spec = row.quant, MODES[row.quant.mode]
        packed, groups = packed_shape(row.shape, q), scales_shape(row.shape, q)
        biases, global_scale = stored.get(f"{row.path}.biases"), stored.get(f"{row.path}.global_scale")
        ok = (
            weight.dtype == "U32" and weight.shape == packed and scales is not None and scales.shape == groups
            and (scales.dtype != "U8") == spec.has_biases and (biases is not None) == spec.has_biases
            and (global_scale is not None) == q.global_scale
        )
        if not ok:
            got = f"{weight.dtype} {list(weight.shape)}" + (
                f", scales {scales.dtype} {list(scales.shape)}" if scales is not None else ", no scales")
            raise OutputError(f"{row.path}: stored as {got}; expected uint32 {list(packed)} with scales "
                              f"{list(groups)} for {q} (plan)")
