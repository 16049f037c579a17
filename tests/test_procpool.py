"""Worker processes (procpool): the same bytes whatever the workers, and an interrupted
multi-process run leaves no DST, no temporary folder and no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import pytest

from moequant import procpool
from moequant.card import CARD_FILE
from moequant.checkpoint import Stacked
from moequant.convert import Conversion
from moequant.errors import LayoutError
from moequant.formats import Quant
from moequant.quantize import Quantizer
from moequant.tiny import write_tiny_checkpoint

from conftest import CALIB_TEXT
from test_streaming import _slow_checkpoint


def _files(folder):
    """Every file's bytes but the model card's, which names DST (tests/test_card.py checks it)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != CARD_FILE}


@pytest.mark.parametrize("arch,mode", [("qwen3_moe", "affine"), ("deepseek_v3", "mxfp4")])
def test_one_two_and_many_workers_write_the_same_bytes(tmp_path, cli, arch, mode):
    src = write_tiny_checkpoint(tmp_path / "src", arch, shards=2)
    runs = {"p1": ("--workers", "1"), "p2": ("--workers", "2"), "p5": ("--workers", "5"),
            "t3": ("--workers", "3", "--pool", "threads")}
    for name, args in runs.items():
        result = cli("convert", src, tmp_path / name, "--mode", mode, "--shard-size", "200KB", "--quiet", *args)
        assert result.exit_code == 0, result.output
    first = _files(tmp_path / "p1")
    assert len(first) > 4
    for name in runs:
        assert _files(tmp_path / name) == first, name


@pytest.mark.parametrize("arch,mode", [("qwen3_moe", "affine"), ("deepseek_v3", "nvfp4"), ("mixtral", "mxfp8")])
def test_layers_shared_by_workers_write_the_same_bytes(tmp_path, cli, monkeypatch, arch, mode):
    """Shares of a layer's expert stacks (procpool.units), more of them than experts, several of one
    layer in the same worker: the same bytes as one worker converting each layer whole."""
    src = write_tiny_checkpoint(tmp_path / "src", arch, shards=2)
    result = cli("convert", src, tmp_path / "whole", "--mode", mode, "--quiet", "--workers", "1")
    assert result.exit_code == 0, result.output
    whole_units = procpool.units

    def shared(conv, groups, workers):
        assert sorted(whole_units(conv, groups, workers)) == [(i, 0, 1, 1, True) for i in range(len(groups))]  # groups >= workers
        return [procpool.Unit(i, k, k + 1, n, k == 0) for i in range(len(groups))
                for n in [1 if i == len(groups) - 1 else 3 + i * 3] for k in range(n)]  # the rest whole; 3, 6, ... shares of 4 experts

    monkeypatch.setattr(procpool, "units", shared)
    result = cli("convert", src, tmp_path / "shared", "--mode", mode, "--quiet", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "shared") == _files(tmp_path / "whole")

    def spans(conv, groups, workers):  # a layer's other tensors alone, then uneven spans; the next with the first
        Unit = procpool.Unit
        return [Unit(len(groups) - 1)] + [u for i in range(len(groups) - 1) for u in (
            [Unit(i, 0, 0, 8, True), Unit(i, 0, 1, 8, False), Unit(i, 1, 5, 8, False), Unit(i, 5, 8, 8, False)]
            if i % 2 == 0 else [Unit(i, 0, 3, 8, True), Unit(i, 3, 8, 8, False)])]

    monkeypatch.setattr(procpool, "units", spans)
    result = cli("convert", src, tmp_path / "spans", "--mode", mode, "--quiet", "--workers", "3")
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "spans") == _files(tmp_path / "whole")


def test_gptq_layers_shared_by_every_worker_write_the_same_bytes(tmp_path, cli):
    """--rounding gptq: each layer's experts rounded by all the workers together (a share each, on
    their own experts' moments), 5 shares of 4 experts leaving share 0 none: the same bytes as one
    worker rounding each layer whole, and as worker threads."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", shards=2)
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    gptq = ["--target-bpw", "4", "--rounding", "gptq", "--calib", str(calib), "--calib-sequences", "2",
            "--calib-length", "256", "--quiet"]
    runs = {"p1": ("--workers", "1"), "p2": ("--workers", "2"), "p5": ("--workers", "5"),
            "t2": ("--workers", "2", "--pool", "threads")}
    for name, args in runs.items():
        result = cli("convert", src, tmp_path / name, *gptq, *args)
        assert result.exit_code == 0, result.output
    first = _files(tmp_path / "p1")
    for name in runs:
        assert _files(tmp_path / name) == first, name
    conv = Conversion(src, Quant.make("affine", 4, 64), target_bpw=4, rounding="gptq", calib=str(calib),
                      calib_sequences=2, calib_length=256)
    groups = conv.ckpt.groups()
    # the rest first, then layer after layer, a share per worker
    assert procpool.units(conv, groups, 3) == [(2, 0, 1, 1, True), (0, 0, 1, 3, True), (0, 1, 2, 3, False),
                                               (0, 2, 3, 3, False), (1, 0, 1, 3, True), (1, 1, 2, 3, False),
                                               (1, 2, 3, 3, False)]
    assert procpool.units(conv, groups, 1) == [(0, 0, 1, 1, True), (1, 0, 1, 1, True), (2, 0, 1, 1, True)]


@pytest.mark.parametrize("rounding", ["plain", "gptq"])
def test_a_share_computes_its_experts_and_writes_only_them(tmp_path, rounding):
    """Quantizer.run with experts= (a share): each expert stack comes out Stacked, its parts of those
    experts equal to a whole run's and its other parts stand-ins, never computed; an empty share (more
    shares than experts) computes none."""
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    options = dict(rounding="gptq", calib=str(calib), calib_sequences=2, calib_length=256) if rounding == "gptq" else {}
    conv = Conversion(write_tiny_checkpoint(tmp_path / "src", "qwen3_moe"), Quant.make("mxfp4" if rounding == "plain"
                      else "affine", 4, 32 if rounding == "plain" else 64), **options)
    moments = conv._moments() if rounding == "gptq" else None

    def run(experts=None, rest=True):
        return Quantizer(conv._target(), conv.plan, moments=moments).run(conv._normalized_groups(as_parts=True)[0],
                                                                         experts, rest)

    whole = run()
    stacks = sorted(k for k in whole if ".switch_mlp." in k and not k.endswith(".bias"))
    assert stacks and all(whole[k].shape[0] == 4 for k in stacks)
    share = run(range(1, 3), rest=False)
    for key in stacks:
        assert isinstance(share[key], Stacked), key
        parts = share[key].parts
        expected = whole[key].parts if isinstance(whole[key], Stacked) else list(whole[key])
        for e in (1, 2):
            assert mx.array_equal(parts[e], expected[e]).item(), (key, e)
        assert parts[0] is parts[3] and not mx.array_equal(parts[0], expected[0]).item()  # a zero stand-in
    empty = run(range(0, 0))
    assert all(isinstance(empty[k], Stacked) and all(p is empty[k].parts[0] for p in empty[k].parts) for k in stacks)
    if moments is not None:
        moments.close()


def test_a_plain_conversion_cuts_layers_only_where_the_workers_finish_sooner(tmp_path):
    conv = Conversion(write_tiny_checkpoint(tmp_path / "src", "qwen3_moe"))
    groups = conv.ckpt.groups()  # 2 layers with expert stacks and the rest
    assert [g.name for g in groups] == ["model.layers.0", "model.layers.1", "rest"]
    whole = [procpool.Unit(i) for i in range(3)]
    # a tiny layer is cheaper whole than its units' overhead (UNIT_BYTES): whole, however many workers
    assert procpool.units(conv, groups, 1) == procpool.units(conv, groups, 3) == procpool.units(conv, groups, 5) == whole


@pytest.mark.parametrize("workers", [2, 4, 8, 10, 12, 16, 24, 32])
def test_balanced_units_cover_every_expert_once(workers):
    """The 6 GB layout (9 layers of 64 experts: 576 MiB of experts, 36 MiB else; the embeddings and
    lm_head, 256 MiB): each layer's experts in spans that cover them once, its other tensors in one
    unit; longest first."""
    mib = 1 << 20
    sizes = [(36 * mib, 576 * mib, 64)] * 9 + [(256 * mib, 0, 0)]
    units = procpool.balanced(sizes, workers)
    for i in range(10):
        mine = [u for u in units if u.group == i]
        assert sum(u.rest for u in mine) == 1
        if mine != [procpool.Unit(i)]:
            assert sorted(e for u in mine for e in range(u.start, u.stop)) == list(range(64)) and \
                {u.slices for u in mine} == {64}
    def cost(u):
        r, x, _ = sizes[u.group]
        return (r if u.rest else 0) + x * (u.stop - u.start) / u.slices + procpool.UNIT_BYTES

    # before: 3 equal shares of each layer (the first with the other tensors), first shares first
    thirds = sorted([procpool.Unit(9)] + [procpool.Unit(i, k, k + 1, 3, k == 0) for i in range(9) for k in range(3)],
                    key=lambda u: (u.start, u.group))
    assert procpool.makespan([cost(u) for u in units], workers) <= procpool.makespan([cost(u) for u in thirds], workers)
    if workers == 16:
        # wrap-around: the embeddings first, one or two units per worker, each worker's load near the mean
        assert units[0] == procpool.Unit(9) and len(units) <= 10 + 16 - 1
        mean = sum(cost(u) for u in units) / workers
        assert procpool.makespan([cost(u) for u in units], workers) < 1.03 * mean  # the thirds: 1.18x theirs
    if workers == 10:  # one group each: no cut pays
        assert sorted(units) == [procpool.Unit(i) for i in range(10)]


def _session(pgid: int) -> list[int]:
    """Processes whose process group is pgid (the run and everything it started)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGINT to the group (Ctrl-C)", "SIGINT", "SIGTERM"])
def test_interrupted_multiprocess_run_leaves_no_dst_folder_or_process(tmp_path, how):
    src = _slow_checkpoint(tmp_path / "src")
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "moequant", "convert", str(src), str(dst), "--rounding", "mse",
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 90
    # wait until the workers run: the main process, the forkserver and two workers
    while not (list(tmp_path.glob(".dst.moequant-partial-*")) and len(_session(proc.pid)) >= 4):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    if how.startswith("SIGINT to the group"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(getattr(signal, how))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (143 if how == "SIGTERM" else 130), stderr  # 128 + the signal
    assert "error: interrupted; DST was not written" in stderr
    assert not dst.exists() and not list(tmp_path.glob(".dst.moequant-*"))
    deadline = time.time() + 10
    while (left := _session(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left running: {left}"


def test_workers_forked_ahead_and_not_taken_exit():
    """Workers forked ahead (procpool.Workers) that the conversion does not need exit on their own
    once let go; closing the pool stops the rest."""
    with procpool.Workers(3) as pool:
        taken = pool.take(1)
        assert len(taken) == 1 and 1 <= len(pool.procs) <= 3
        for p in pool.procs[1:]:
            p.join(timeout=30)
            assert p.exitcode == 0, p
        assert taken[0].is_alive()  # waiting for its Spec
    assert [p for p in pool.procs if p.is_alive()] == []


def test_a_manifest_that_fails_after_the_spec_went_out_leaves_no_worker(tmp_path, monkeypatch):
    """A plain conversion sends the workers forked ahead their Spec before it makes the manifest:
    when the manifest fails, its error is what the caller gets, every worker (set up, or setting
    up, and waiting for its Place) is stopped, and DST is not written."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    conversion = Conversion(src, Quant.make("affine", 4, 64))

    def failing(self):
        raise LayoutError("the manifest failed")

    monkeypatch.setattr(Conversion, "manifest", failing)
    with procpool.Workers(2) as pool:
        pool.take(2)  # both forked: both get the Spec ahead
        with pytest.raises(LayoutError, match="the manifest failed"):
            list(conversion.run(tmp_path / "dst", workers=2, pool=pool))
        assert pool.sent == 2 and pool.spec is not None
        assert [p for p in pool.procs if p.is_alive()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_error_after_the_workers_were_forked_ahead_leaves_no_process(tmp_path):
    """The CLI forks the workers before it reads SRC: a conversion refused after that (here by its
    options) exits with its one-line error and no process of its own left running."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    proc = subprocess.Popen([sys.executable, "-m", "moequant", "convert", str(src), str(tmp_path / "dst"),
                             "--group-size", "7", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and stderr.startswith("error: --mode/--bits/--group-size:"), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    deadline = time.time() + 10
    while (left := _session(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left running: {left}"
    assert not (tmp_path / "dst").exists()


def test_gptq_workers_fit_in_the_memory_the_calibration_pass_held(monkeypatch):
    """GPTQ's default worker count: as many as fit at GPTQ_WORKER each (more where the widest input's
    H takes more) in what the main process held at its peak (the pass) and holds no longer, or in
    GPTQ_ROOM where that is more; at least one, at most the limit."""
    gib = 1 << 30
    monkeypatch.setattr(procpool, "_resident", lambda: (int(2.0 * gib), int(0.5 * gib)))
    assert procpool.gptq_workers(16) == int(1.5 * gib) // procpool.GPTQ_WORKER == 4
    assert procpool.gptq_workers(16, widest=4096) == 4  # H 64 MiB: within GPTQ_WORKER
    assert procpool.gptq_worker_memory(8192) == 3 * (256 << 20) + procpool.GPTQ_BASE
    assert procpool.gptq_workers(16, widest=8192) == int(1.5 * gib) // procpool.gptq_worker_memory(8192) == 1
    assert procpool.gptq_workers(2) == 2
    monkeypatch.setattr(procpool, "_resident", lambda: (gib, gib))  # a pass that held nothing more
    assert procpool.gptq_workers(16) == procpool.GPTQ_ROOM // procpool.GPTQ_WORKER == 3
    monkeypatch.setattr(procpool, "GPTQ_ROOM", 0)
    assert procpool.gptq_workers(16) == 1
    monkeypatch.setattr(procpool, "_resident", lambda: None)  # not Linux
    assert procpool.gptq_workers(16) == 16


def test_a_layer_whose_stacks_differ_in_experts_is_not_shared():
    """procpool._share: equal stacks in ranges of experts; stacks of different expert counts in one
    group (two expert sets of a layer) whole by share 0, none by the others, so no expert is left
    unwritten."""
    part = mx.zeros((2, 2))
    equal = {"a": Stacked([part] * 4), "b": Stacked([part] * 4), "norm": part}
    Unit = procpool.Unit
    assert [procpool._share(equal, Unit(0, k, k + 1, 3, k == 0)) for k in range(3)] == [range(0, 1), range(1, 2),
                                                                                        range(2, 4)]
    assert procpool._share(equal, Unit(0)) is None
    assert procpool._share(equal, Unit(0, 0, 0, 4, True)) == range(0)  # the other tensors only
    unequal = {"a": Stacked([part] * 4), "b": Stacked([part] * 2)}
    assert [procpool._share(unequal, Unit(0, k, k + 1, 2, k == 0)) for k in range(2)] == [None, range(0)]
