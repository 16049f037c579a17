"""Worker processes for `convert`: each takes the next group (decoder layer), reads, dequantizes,
quantizes and writes it at its place in the shard files that the main process created.

A unit of work (Unit, units) is a group, or a span of a layer's experts (the same span of every
expert stack), one of the layer's spans also taking its other tensors, each written at its place;
the group counts as written once all its units are. A plain conversion cuts layers where that
lets the workers finish sooner (balanced: by bytes), --rounding gptq into one share per worker.

Why processes: with worker threads, 16 threads on 16 cores converted only 1.9x faster than one
(BENCHMARKS.md, issue 16): the GIL and mlx's per-process state serialize them. A process has its
own of both. The dry-run manifest already fixes every output tensor's offset, so each worker
`pwrite`s into the same files and nothing is sent back but the names it wrote.

* Workers come from a `forkserver` that imports mlx, numpy and moequant once, but not mlx-lm's
  package `__init__` (it imports transformers and torch: ~0.3 GB and seconds per process;
  target.lazy_mlx_lm); each worker rebuilds the target model from its class and ModelArgs, sent
  pickled.
* The workers are forked ahead (Workers), while the main process still imports, reads SRC and
  plans, and then wait for their Spec: pickled once, sent down each one's pipe. A plain
  conversion's Spec goes before the manifest is made (send_spec), so that the workers set up
  while the main process makes it; then each gets its Place (the manifest's slots).
* Each worker reads ahead: when it starts group i it asks the kernel for group i's and group
  i + workers' bytes (`posix_fadvise WILLNEED`), so the next layer's reads overlap this one's work.
* It never waits on a write: evaluated tensors go to a writer thread (at most WRITE_AHEAD bytes in
  flight), so quantizing the next module overlaps the `pwrite` of the last.
* SIGINT is the main process's business: workers ignore it and are terminated (SIGTERM) and
  joined by the main process before it removes the temporary folder; a worker still waiting for
  its Spec or its Place exits when its pipe closes (the main process let it go, or died).
"""

from __future__ import annotations

import heapq
import json
import multiprocessing as mp
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import mlx.core as mx

from .errors import MoequantError, OutputError
from .heap import trim

WRITE_AHEAD = 256 << 20  # bytes of evaluated tensors queued for writing, per worker
WORKER_BASE = 256 << 20  # a worker's memory besides the tensors it converts (python, mlx, graph)
# a GPTQ worker's peak RSS rounding shares of the 6 GB layout's 64-expert layers: 0.30 GiB with 5 workers on 16
# cores, 0.37 with 4 on 2 (2 layers), 0.55 with 2 (larger shares), all with gptq's earlier chunks (twice its _CHUNK
# and _H_CHUNK: 40-50 MB more a worker); the count is at most the cores
GPTQ_WORKER = 320 << 20
# and one rounding a module whose input is n wide holds its H (4n² bytes) three times over (H read, its Cholesky
# factor and the feedback: a [2048, 8192] weight took 2.0 H beside its H) and this much more (GPTQ_WORKER at
# n = 4096, the 6 GB layout's widest): the one worker of a 2-layer Qwen3-MoE whose o_proj inputs are 8192 wide
# peaked at 0.91 GiB against 0.875 estimated, two at 1.44 GiB (BENCHMARKS.md, issue 15)
GPTQ_BASE = 128 << 20
GPTQ_ROOM = 1 << 30  # what GPTQ's workers may take however little the pass held (a small model's: the process's base)
# plain conversion's units (balanced): a unit costs its source bytes and this much more (graph, clear, trim: 0.045 s
# against 2.0 ms per MB read and quantized, one worker on the 2-core VM, the 6 GB layout's spans of 4-36 experts)
UNIT_BYTES = 24 << 20
MAX_PIECES = 16  # balanced units: a group's stacks in at most this many spans
TIMELINE = "MOEQUANT_TIMELINE"  # set to 1: print a per-worker timeline table to stderr


# ---------------------------------------------------------------------------------------------
# how many workers


def available_memory() -> int:
    """Bytes of memory available to new work (MemAvailable; cgroup limit if lower)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 1 << 60:
                avail = min(avail, int(limit) - int(Path(usage_file).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    return max(avail, 0)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_memory(largest_tensor: int) -> int:
    """A worker's peak estimate: its base, plus the largest source tensor in float32 three times
    over (its float copy, the quantizer's temporaries, the packed output being written)."""
    return WORKER_BASE + 3 * 2 * largest_tensor


def default_workers(groups: int, largest_tensor: int) -> int:
    """As many workers as cores and as half the available memory holds at worker_memory each, and
    no more than there are groups. More workers than groups come only with an explicit --workers
    (the groups are then cut into spans of experts, see units): on 16 cores, 6 GB, 10 groups, 16
    workers took 1.9-2.1 s against 2.6 s for 10, at 1.47 GB against 1.03 GB peak RSS (BENCHMARKS.md,
    issue 16, 07:37 UTC): the default keeps to the memory."""
    by_memory = int(available_memory() * 0.5 // worker_memory(largest_tensor))
    return max(1, min(cores(), groups, by_memory))


def _resident() -> tuple[int, int] | None:
    """(peak, current) resident bytes of this process (VmHWM and VmRSS; Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM:", "VmRSS:")))
        return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def gptq_worker_memory(widest: int) -> int:
    """A GPTQ worker's peak estimate, rounding modules whose inputs are at most `widest` wide."""
    return max(GPTQ_WORKER, 3 * 4 * widest * widest + GPTQ_BASE)


def gptq_workers(limit: int, widest: int = 0) -> int:
    """GPTQ's worker processes by default, once the calibration pass is over: at most `limit`
    (default_workers' choice), and no more than fit at gptq_worker_memory(widest) each in the memory
    this process held at its peak (the pass) and holds no longer, so that the rounding takes no
    more memory than the pass did, about one layer's; or in GPTQ_ROOM where that is more (the
    trained tiny MoE's pass left room for none: one worker rounded it in 1.4 s of its 6.1 s on the
    2-core VM). `limit` where the peak is unknown (not Linux)."""
    resident = _resident()
    if resident is None:
        return limit
    peak, now = resident
    return max(1, min(limit, max(peak - now, GPTQ_ROOM) // gptq_worker_memory(widest)))


# ---------------------------------------------------------------------------------------------
# main process side


@dataclass
class Spec:
    """What a worker needs to set up, pickled once for all: the Conversion's class (by reference:
    the worker imports convert.py only when it unpickles it) and state (no mlx objects), how to
    rebuild its target model without importing mlx-lm's package, and its units. Where to write
    comes after it (Place), once the manifest is made."""

    kind: type
    state: dict
    model_class: type | None
    model_args: object
    shapes: dict  # the target's parameter shapes, to check the rebuilt model against
    groups: list  # the keys of each group, for read-ahead
    units: list  # (group, share, shares): see units()
    workers: int
    moments: object = None  # calibrate.Moments, read from its files (--rounding gptq)
    timeline: bool = False


class Place(NamedTuple):
    """Where a worker writes (writer.Output.attached): each output tensor's slot in the shard files
    the main process allocated, their paths, and DST and the output's size for its errors."""

    slots: dict
    paths: list
    dst: str
    nbytes: int


def _context(gptq: bool = False):
    """The forkserver context. The forkserver imports its preload once; every worker is a fork of it
    (no mlx threads yet at fork). Only the first call's preload counts: the one that starts it. With
    `gptq` it also imports what GPTQ's workers unpickle and round with (calibrate's Moments: numpy,
    gptq; each worker imported them at its start, 0.12 s of the trained tiny MoE's 0.15 s setup on the
    2-core VM): numpy would only delay the first fork of a plain conversion."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["moequant._workerboot", *(["moequant.calibrate"] if gptq else [])])
    return ctx


def start_server(gptq: bool = False) -> None:
    """Start the forkserver in the background (its imports take longer than the main process's
    own until it reads SRC); Workers forks from it once it is up. A second call does nothing.
    `gptq`: for GPTQ's workers (see _context)."""
    def start():
        try:
            _context(gptq)
            from multiprocessing import forkserver
            forkserver.ensure_running()
        except Exception:  # Workers starts it again and reports what fails
            pass
    threading.Thread(target=start, daemon=True, name="moequant-forkserver").start()


def _age() -> float | None:
    """Seconds since this process started (Linux), for the timeline."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def ahead_count(workers: int | None) -> int:
    """How many workers to fork before SRC is read: `workers` if given, else the most that
    default_workers can choose before it knows the groups and tensors (cores, memory)."""
    return workers or max(1, min(cores(), int(available_memory() * 0.5 // WORKER_BASE)))


class Workers:
    """Up to `count` worker processes, forked one after another from the forkserver (started
    first: its imports take a second or more) by a thread of their own, ahead of the work, so that
    the imports and the forks (tens of milliseconds each) overlap the main process's own work: the
    CLI starts them before it imports the conversion modules and reads SRC, Conversion.run before
    its dry-run manifest. Each worker waits on a pipe of its own for its Spec (convert_groups sends
    it) and exits when the pipe closes unused (`take` closes those not needed). A context manager:
    leaving it stops the forking and terminates and joins any worker still running (an error or a
    signal before or during the conversion leaves no process behind); closing twice is harmless.
    `gptq`: for GPTQ's workers (see _context)."""

    def __init__(self, count: int, gptq: bool = False):
        self.count = count
        self.ctx = _context(gptq)
        self.tasks, self.results = self.ctx.Queue(), self.ctx.Queue()
        self.procs: list = []
        self.pipes: list = []  # the main process's end of each worker's pipe
        self.forked: list[float] = []  # perf_counter when each fork returned (the timeline)
        self.rows: list[dict] = []  # the workers' timeline rows (MOEQUANT_TIMELINE)
        self.spec: Spec | None = None  # sent ahead (send_spec): to the first `sent` workers, pickled as `blob`
        self.blob, self.sent = b"", 0
        self.error: BaseException | None = None
        self.wanted, self.stopped, self.done = count, False, False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._fork, daemon=True, name="moequant-workers")
        self.thread.start()

    def _fork(self) -> None:
        try:
            while True:
                with self.cond:
                    if self.stopped or len(self.procs) >= self.wanted:
                        return
                    n = len(self.procs)
                r, w = self.ctx.Pipe(duplex=False)
                p = self.ctx.Process(target=_worker, args=(n, r, self.tasks, self.results), name=f"moequant-{n}",
                                     daemon=True)
                try:
                    p.start()
                except BaseException:
                    w.close()
                    raise
                finally:
                    r.close()
                with self.cond:
                    self.procs.append(p)
                    self.pipes.append(w)
                    self.forked.append(time.perf_counter())
                    self.cond.notify_all()
        except BaseException as e:  # take raises it
            self.error = e
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def limit(self, workers: int) -> None:
        """No more than `workers` are needed (at most `count`): no more are forked, and those forked
        beyond them are let go (their pipes closed: they exit)."""
        with self.cond:
            self.wanted = workers
            for w in self.pipes[workers:]:
                w.close()

    def send_spec(self, spec: Spec) -> None:
        """Send `spec` to the workers forked so far (no more than are wanted); convert_groups sends
        it to any forked later, then each its Place."""
        blob = pickle.dumps(spec)
        with self.cond:
            pipes = self.pipes[:self.wanted]
        for w in pipes:
            try:
                w.send_bytes(blob)
            except OSError:  # that worker is gone: convert_groups's wait for the workers reports it
                pass
        self.spec, self.blob, self.sent = spec, blob, len(pipes)

    def take(self, workers: int) -> list:
        """The first `workers` (at most `count`) processes, once forked (see limit)."""
        self.limit(workers)
        with self.cond:
            while len(self.procs) < workers and not self.done:
                self.cond.wait()
        if len(self.procs) < workers:
            raise self.error or OutputError(f"{workers} worker processes: only {len(self.procs)} started")
        self.thread.join()
        for w in self.pipes[workers:]:  # forked while this waited
            w.close()
        return self.procs[:workers]

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self.cond:
            self.stopped = True
        self.thread.join()
        for w in self.pipes:
            w.close()
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join()
        self.tasks.close()
        self.results.close()


class Unit(NamedTuple):
    """A worker's task: of group `group`, the experts of ranges `start` to `stop` - 1 of its expert
    stacks cut in `slices` equal ranges, and with `rest` its other tensors (attention, norms, the
    router; everything, for a group without stacks). Unit(i): the group whole."""

    group: int
    start: int = 0
    stop: int = 1
    slices: int = 1
    rest: bool = True


def units(conv, groups, workers: int) -> list[Unit]:
    """The units (see Unit) in the order workers take them.

    Plain conversion (not GPTQ), more than one worker: `balanced`, from each group's bytes (its
    expert stacks' and its other tensors'): each group whole, longest first, unless cutting the
    groups into spans of experts lets the workers finish sooner (see balanced). The 6 GB layout on
    16 workers: McNaughton's wrap-around (_wrapped), 24 units, one or two per worker, each worker's
    load within 7 % of the mean by bytes; before, 28 units (3 equal shares of each layer: the first
    shares, with the layer's other tensors, were the longest, and the second round left 3 workers
    idle).

    With --rounding gptq (minutes of work per layer, against seconds to read it), every group with
    expert stacks in one share per worker, a layer after another: the workers round one layer's
    experts together, so that memory holds about one layer, whatever the number of workers; the
    other groups first (a whole lm_head's GPTQ, as long as a layer's, then overlaps the layers)."""
    from .experts import expert_sources
    from .formats import Rounding

    if workers == 1:
        return [Unit(i) for i in range(len(groups))]
    if conv.plan.options.rounding == Rounding.GPTQ:
        stacked = [i for i, g in enumerate(groups) if expert_sources(conv.family, g.keys)]
        return [Unit(i) for i in range(len(groups)) if i not in stacked] + \
            [Unit(i, k, k + 1, workers, k == 0) for i in stacked for k in range(workers)]
    return balanced(_sizes(conv, groups), workers)


def _sizes(conv, groups) -> list[tuple[int, int, int]]:
    """Per group: (bytes of its tensors other than expert weights, bytes of its expert weights, its
    expert count, or 0 where its stacks may not be cut: none, or expert sets of different counts)."""
    from .experts import expert_keys

    out = []
    for g in groups:
        experts = expert_keys(conv.family, g.keys)
        counts = {conv.expert_count.sets(k) for k in experts}
        n = next(iter(counts))[0] if len(counts) == 1 and len(next(iter(counts))) == 1 else 0
        stacked = sum(conv.ckpt.tensors[k].nbytes for k in experts)
        out.append((sum(conv.ckpt.tensors[k].nbytes for k in g.keys) - stacked, stacked, n if stacked else 0))
    return out


def balanced(sizes: list[tuple[int, int, int]], workers: int) -> list[Unit]:
    """Units for `workers` from the groups' sizes (_sizes), longest first, each costing its bytes and
    UNIT_BYTES: of the schedules that cut every group with stacks into the same number of spans of
    its experts (1 to MAX_PIECES, of equal cost or tapering: the short ones, last, fill the workers'
    ends; the first span also holds the group's other tensors, and as many fewer experts as they
    weigh), and _wrapped's, the one whose workers finish first (makespan: each unit to the worker
    free first, in order), the earlier one on a tie within 3 % (fewer units). A group without stacks
    to cut (the embeddings and lm_head) is one unit, whatever its size."""
    best = None
    for pieces, taper in ((p, t) for p in range(1, MAX_PIECES + 1) for t in (False, True)):
        cut = []
        for i, (r, x, n) in enumerate(sizes):
            p = min(pieces, n)
            if p <= 1:
                cut.append((r + x + UNIT_BYTES, Unit(i)))
                continue
            # bounds of the spans by cost, equal or (taper) as p, p - 1, ... 1: the first span also holds the
            # other tensors (r), so fewer experts
            weights = [p - k if taper else 1 for k in range(p)]
            bounds, done = [0], 0
            for w in weights[:-1]:
                done += w
                bounds.append(min(n, max(bounds[-1], round((done / sum(weights) * (r + x) - r) * n / x))))
            bounds.append(n)
            cut += [(r * (k == 0) + x * (b - a) / n + UNIT_BYTES, Unit(i, a, b, n, k == 0))
                    for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a or k == 0]
        # longest first; among equal ones, by span then group: a worker's next unit is of another group
        cut.sort(key=lambda cu: (-cu[0], cu[1].start, cu[1].group))
        span = makespan([c for c, _ in cut], workers)
        if best is None or span < best[0] * 0.97:
            best = (span, cut)
    wrapped = _wrapped(sizes, workers)
    if (span := makespan([c for c, _ in wrapped], workers)) < best[0] * 0.97:
        best = (span, wrapped)
    return [u for _, u in best[1]]


def _wrapped(sizes: list[tuple[int, int, int]], workers: int) -> list[tuple[float, Unit]]:
    """(cost, unit) by McNaughton's wrap-around: the groups one after another (those without stacks
    to cut first, whole) fill each worker up to the mean load in turn, a group cut into spans where a
    worker's load is full, so that each worker has one or two units (groups + workers - 1 in all).
    Queued as the workers' first units, then their second ones longest first: the worker free first,
    whose first unit was the shortest, takes the longest, its complement."""
    total = sum(r + x for r, x, _ in sizes) + (len(sizes) + workers - 1) * UNIT_BYTES
    budget = total / workers
    loads: list[list[tuple[float, Unit]]] = [[]]
    room = budget
    for i in sorted(range(len(sizes)), key=lambda i: (sizes[i][2] > 0, i)):
        r, x, n = sizes[i]
        if not n:
            if loads[-1] and room < (r + x + UNIT_BYTES) / 2:
                loads.append([])
                room = budget
            loads[-1].append((r + x + UNIT_BYTES, Unit(i)))
            room -= r + x + UNIT_BYTES
            continue
        start = 0
        while start < n:
            at = r + x * start / n if start else 0  # bytes of the group before this span
            fill = room - UNIT_BYTES  # the bytes that fill this worker
            stop = n if fill >= r + x - at or len(loads) >= workers else \
                min(n, max(start, round((at + fill - r) * n / x)))
            if stop == start:  # not one expert fits here: the next worker
                loads.append([])
                room = budget
                continue
            cost = (r if start == 0 else 0) + x * (stop - start) / n + UNIT_BYTES
            loads[-1].append((cost, Unit(i) if stop - start == n else Unit(i, start, stop, n, start == 0)))
            room -= cost
            start = stop
            if stop < n:
                loads.append([])
                room = budget
    queue_ = [load[0] for load in loads if load]
    for k in range(1, max(len(load) for load in loads)):
        queue_ += sorted((load[k] for load in loads if len(load) > k), key=lambda cu: -cu[0])
    return queue_


def makespan(costs: list[float], workers: int) -> float:
    """When the last of `workers` is done, each taking the next cost in order as soon as it is free."""
    free = [0.0] * workers
    for c in costs:
        heapq.heapreplace(free, free[0] + c)
    return max(free)


def _spec(conv, groups, workers: int, moments) -> Spec:
    from .quantize import parameter_shapes

    state = {k: v for k, v in conv.__dict__.items() if k not in ("model", "format")}
    model = conv.model
    args = getattr(model, "args", None)
    model_class = type(model) if args is not None else None
    try:
        pickle.dumps((model_class, args))
    except Exception:  # a class or args that do not pickle: the worker builds from the config
        model_class, args = None, None
    return Spec(type(conv), state, model_class, args, parameter_shapes(model), [list(g.keys) for g in groups],
                units(conv, groups, workers), workers, moments, os.environ.get(TIMELINE, "") not in ("", "0"))


def send_spec(conv, groups, workers: int, pool: Workers) -> None:
    """Send the Spec of a plain conversion (GPTQ's comes with its moments, in convert_groups) to
    `workers` of `pool`, forked ahead, before the manifest is made: each sets up (unpickles it,
    rebuilds the target model, builds its groups' lazy graphs) while the main process makes the
    manifest and allocates the output, then waits for its Place."""
    pool.send_spec(_spec(conv, groups, workers, None))


def convert_groups(conv, out, groups, workers: int, moments=None, started: Workers | None = None) -> Iterator[int]:
    """Indices of groups as they are written, by `workers` processes (see the module docstring):
    those `started` ahead (Workers of at least `workers`, their Spec sent ahead or not: send_spec),
    else forked now. Output `out` has allocated the shard files; each worker's written tensors are
    adopted into it."""
    with (nullcontext(started) if started is not None else Workers(workers, moments is not None)) as pool:
        spec = pool.spec or _spec(conv, groups, workers, moments)
        blob = pool.blob or pickle.dumps(spec)
        for u in range(len(spec.units)):
            pool.tasks.put(u)
        for _ in range(workers):
            pool.tasks.put(None)
        start, age = time.perf_counter(), _age()
        procs = pool.take(workers)
        place = pickle.dumps(Place(dict(out.slots), [str(out.tmp / name) for name in out.names], str(out.dst),
                                   out.nbytes))
        for k, w in enumerate(pool.pipes[:workers]):
            try:
                if k >= pool.sent:
                    w.send_bytes(blob)
                w.send_bytes(place)
            except OSError:  # that worker failed setting up and is gone: _results reports its error
                pass
        sent = time.perf_counter()
        yield from _results(pool, procs, out, spec, len(groups))
        if spec.timeline:
            print_timeline(pool.rows, start, workers, {"age": age, "forked": [t - start for t in pool.forked],
                                                       "sent": sent - start, "joined": time.perf_counter() - start})


def _results(pool: Workers, procs: list, out, spec: Spec, pending: int) -> Iterator[int]:
    shares_left: dict[int, int] = {}  # the units of each group not yet done
    for unit in spec.units:
        shares_left[unit.group] = shares_left.get(unit.group, 0) + 1
    written: dict[int, set] = {}
    running, clean = len(procs), False
    try:
        while pending or running:
            try:
                kind, n, payload = pool.results.get(timeout=0.2)
            except queue.Empty:
                for p in procs:
                    if p.exitcode not in (None, 0):
                        raise OutputError(f"worker {p.name}: exited with {_exit(p.exitcode)} before finishing "
                                          "its group; nothing was written to DST")
                continue
            if kind == "error":
                raise payload
            if kind == "done":
                i, keys, row = payload
                pool.rows.append(row)
                written.setdefault(i, set()).update(keys)
                shares_left[i] -= 1
                if shares_left[i] == 0:
                    out.adopt(sorted(written.pop(i)))
                    pending -= 1
                    yield i
            elif kind == "bye":
                running -= 1
                pool.rows.extend(payload)
        clean = True
    finally:
        if not clean:
            for p in procs:
                if p.is_alive():
                    p.terminate()
        for p in procs:
            p.join()


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def print_timeline(rows: list[dict], start: float, workers: int, main: dict) -> None:
    """Per worker: its setup (its write-wait: the wait for its Place, the manifest), then each group
    with the seconds spent building the lazy graph, evaluating (read + dequantize + quantize, fused
    by mlx), waiting for the writer, and idle.
    Then the main process's share: its age when the pool started (interpreter, imports, reading
    SRC, the plan, the manifest), the wait for the forks and the sending of the Spec, and the
    joining of the workers after the last group."""
    err = sys.stderr
    print(f"timeline ({workers} worker processes; seconds from pool start):", file=err)
    print(f"{'worker':>6} {'group':>28} {'start':>7} {'end':>7} {'graph':>7} {'eval':>7} {'write-wait':>10} "
          f"{'written MB':>10}", file=err)
    for r in sorted(rows, key=lambda r: (r["worker"], r["t0"])):
        print(f"{r['worker']:>6} {r['group']:>28} {r['t0'] - start:7.2f} {r['t1'] - start:7.2f} {r['graph']:7.2f} "
              f"{r['eval']:7.2f} {r['wait']:10.2f} {r['bytes'] / 1e6:10.1f}", file=err)
    busy = {}
    for r in rows:
        busy[r["worker"]] = busy.get(r["worker"], 0.0) + r["t1"] - r["t0"]
    end = max((r["t1"] for r in rows), default=start)
    print(f"pool wall {end - start:.2f} s; busy per worker: " +
          ", ".join(f"{w}: {b:.2f}" for w, b in sorted(busy.items())) +
          f"; the workers' CPU {sum(r.get('cpu', 0.0) for r in rows):.2f} s", file=err)
    age = f"{main['age']:.2f} s" if main["age"] is not None else "?"
    forked = main["forked"]
    print(f"main process: {age} old at the pool's start (interpreter, imports, reading SRC, the plan, the "
          f"manifest); {len(forked)} workers forked ahead, the first {forked[0]:+.2f} s and the last of {workers} "
          f"{forked[workers - 1]:+.2f} s from the pool's start; Spec sent at {main['sent']:.2f} s; workers joined "
          f"{main['joined'] - (end - start):.2f} s after the last group", file=err)


# ---------------------------------------------------------------------------------------------
# worker side


class _Writes:
    """A writer thread: `put` queues (shard, bytes, offset) and returns at once unless WRITE_AHEAD
    bytes are already queued; the bytes' owner (an mlx array's buffer) stays alive until written."""

    def __init__(self, out):
        self.out, self.queue, self.error = out, queue.Queue(), None
        self.inflight, self.cond, self.wait_s, self.bytes = 0, threading.Condition(), 0.0, 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="moequant-writer")
        self.thread.start()

    def put(self, shard: int, data: memoryview, offset: int) -> None:
        t = time.perf_counter()
        with self.cond:
            while self.inflight and self.inflight + data.nbytes > WRITE_AHEAD and self.error is None:
                self.cond.wait()
            self.inflight += data.nbytes
        self.wait_s += time.perf_counter() - t
        self._raise()
        self.queue.put((shard, data, offset))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            shard, data, offset = item
            try:
                if self.error is None:
                    type(self.out)._pwrite(self.out, shard, data, offset)
            except BaseException as e:
                self.error = e
            n = data.nbytes
            del item, data
            with self.cond:
                self.inflight -= n
                self.bytes += n
                self.cond.notify_all()

    def drain(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if isinstance(self.error, MoequantError):  # already one line naming DST (writer.Output._os)
            raise self.error
        if self.error is not None:
            raise OutputError(f"writing DST: {self.error}") from self.error


def _ranges(paths: set[str]) -> dict[str, tuple[str, int, int]]:
    """key -> (file, absolute start, length) of every tensor in the safetensors files named."""
    out = {}
    for path in paths:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key != "__metadata__":
                a, b = info["data_offsets"]
                out[key] = (path, 8 + n + a, b - a)
    return out


def _advise(ranges: dict, keys) -> None:
    """Ask the kernel to read these tensors' bytes now, in the background (read-ahead)."""
    if not hasattr(os, "posix_fadvise"):
        return
    by_file: dict[str, list] = {}
    for key in keys:
        if key in ranges:
            path, start, length = ranges[key]
            by_file.setdefault(path, []).append((start, length))
    for path, spans in by_file.items():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            for start, length in spans:
                os.posix_fadvise(fd, start, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        cls = MoequantError if isinstance(e, MoequantError) else RuntimeError
        return cls(f"{type(e).__name__}: {e}")


def _share(group: dict, unit: Unit) -> range | None:
    """Of one group's expert stacks (Stacked), which experts `unit` takes, or None: the group whole.
    Stacks of different expert counts in one group are not shared: the unit with the rest takes the
    group whole, the others none of it."""
    if unit.slices == 1:
        return None
    from .checkpoint import Stacked

    counts = {len(v.parts) for v in group.values() if isinstance(v, Stacked)}
    if len(counts) > 1:
        return None if unit.rest else range(0)
    n = counts.pop() if counts else 0
    return range(n * unit.start // unit.slices, n * unit.stop // unit.slices)


def _label(name: str, unit: Unit) -> str:
    """A unit in the timeline: `model.layers.3` whole, `model.layers.3 0:21/64+rest` (ranges 0 to 20 of
    64 and the other tensors), `model.layers.3 rest` (those only)."""
    if unit.slices == 1:
        return name
    experts = f"{unit.start}:{unit.stop}/{unit.slices}" if unit.stop > unit.start else ""
    return f"{name} {experts}{'+' if experts and unit.rest else ''}{'rest' if unit.rest else ''}"


def _mine(tensors: dict, rest: bool, only: range | None) -> dict:
    """Of a unit's outputs (Quantizer.run with experts=`only`), what it writes: its parts of the
    expert stacks (Stacked), and, with `rest`, the group's other tensors."""
    from .checkpoint import Stacked

    return tensors if only is None else {k: v for k, v in tensors.items() if rest or isinstance(v, Stacked)}


def _setup(spec: Spec):
    from .dequant import source_format
    from .formats import FP_MODES
    from .quantize import Quantizer, parameter_shapes
    from .target import build_model

    conv = spec.kind.__new__(spec.kind)
    conv.__dict__.update(spec.state)
    if any(r.quant is not None and r.quant.mode in FP_MODES for r in conv.plan.rows):
        # imported here, by the workers that pack fp modes (numpy: a tenth of a second the forkserver
        # would spend before the first fork of every conversion, affine or not)
        from . import fpquant

        fpquant.THREADS = 1  # the processes are the parallelism
    conv.format, _ = source_format(conv.ckpt.config)

    def rebuild(config):
        if spec.model_class is not None:
            model = spec.model_class(spec.model_args)
            if parameter_shapes(model) == spec.shapes:
                return model
        return build_model(config)

    conv.model = rebuild(conv.config)
    conv.build_model = rebuild  # the target models of this process's Conversion (_target)

    def fresh():
        """A quantizer (it quantizes the target's modules in place: each once) and every group's
        lazy graph (each used once, then dropped), expert stacks carried as their parts: each shard
        opened once while they are made (none of them is evaluated here)."""
        with conv.ckpt.shards_kept():
            normalized = dict(enumerate(conv._normalized_groups(as_parts=True)))
        return Quantizer(conv._target(), conv.plan, moments=spec.moments), normalized

    files = {str(conv.ckpt.tensors[k].file) for keys in spec.groups for k in keys}
    return conv, fresh, _ranges(files)


def _worker(n: int, conn, tasks, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us (SIGTERM)
    with conn:
        try:
            blob = conn.recv_bytes()
        except (EOFError, OSError):  # not needed (Workers.take), or the main process is gone
            return
        _work(n, blob, conn, tasks, results)


def _work(n: int, blob: bytes, conn, tasks, results) -> None:
    """Set up from the pickled Spec `blob`, wait for the Place on `conn`, then convert units from
    `tasks` until None, reporting to `results`."""
    from .writer import Output

    rows, i = [], None
    try:
        t_setup = time.perf_counter()
        spec = pickle.loads(blob)
        with mx.stream(mx.new_stream(mx.cpu)):
            conv, fresh, ranges = _setup(spec)
            quantizer, normalized = fresh()
            t_set = time.perf_counter()
            try:
                place = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # let go before the manifest was made (it failed), or the main process is gone
                return
            out = Output.attached(place.slots, place.paths, place.dst, place.nbytes)
            writes = _Writes(out)
            out._pwrite = writes.put  # Output.add hands each evaluated tensor to the writer thread
            rows.append({"worker": n, "group": "(setup)", "t0": t_setup, "t1": time.perf_counter(),
                         "graph": 0.0, "eval": 0.0, "wait": time.perf_counter() - t_set, "bytes": 0})
            while True:
                try:
                    u = tasks.get()
                except (EOFError, OSError):  # the main process is gone
                    return
                if u is None:
                    break
                unit = spec.units[u]
                i = unit.group
                t0 = time.perf_counter()
                _advise(ranges, spec.groups[i])
                if u + spec.workers < len(spec.units):
                    _advise(ranges, spec.groups[spec.units[u + spec.workers].group])
                if i not in normalized:  # a second unit of a group here
                    quantizer, normalized = fresh()
                group = normalized.pop(i)
                only = _share(group, unit)
                tensors = _mine(quantizer.run(group, only, rest=unit.rest), unit.rest, only)
                del group
                keys = list(tensors)
                if only is not None:  # other shares of these stacks may have been written here
                    out.written.difference_update(keys)
                t1 = time.perf_counter()
                wait0, bytes0 = writes.wait_s, writes.bytes
                out.add(tensors, only)
                mx.clear_cache()
                trim()
                t2 = time.perf_counter()
                name = conv.ckpt.groups()[i].name if spec.timeline else str(i)
                row = {"worker": n, "group": _label(name, unit), "t0": t0,
                       "t1": t2, "graph": t1 - t0, "eval": t2 - t1 - (writes.wait_s - wait0),
                       "wait": writes.wait_s - wait0, "bytes": writes.bytes - bytes0}
                results.put(("done", n, (i, keys, row)))
            t = time.perf_counter()
            writes.drain()
            rows.append({"worker": n, "group": "(drain writes)", "t0": t, "t1": time.perf_counter(),
                         "graph": 0.0, "eval": 0.0, "wait": time.perf_counter() - t, "bytes": 0,
                         "cpu": time.process_time()})  # the process's CPU since its fork, threads included
        results.put(("bye", n, rows[:1] + rows[-1:]))
    except BaseException as e:
        results.put(("error", n, _picklable(e)))

