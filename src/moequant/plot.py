"""Pictures (`--plot`): a plan as bits per weight by decoder layer × role and bytes per role, and
`verify`'s router top-k agreement by layer and KL by token position. PNG bytes of a fixed pixel
size, drawn with matplotlib's Agg backend (no display); matplotlib is the optional extra `plot`
and is imported only here, only when a picture is asked for."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .card import short_size
from .errors import OutputError
from .names import layer_of
from .plan import Plan, Role

if TYPE_CHECKING:
    from .verify import Report

DPI = 100
PLAN_SIZE = (12.0, 8.0)  # inches: 1200 × 800 pixels at DPI
VERIFY_SIZE = (12.0, 5.0)  # 1200 × 500
ANNOTATE_UP_TO = 32  # layers: above this the heat map's cells carry no numbers
# The heat map's colour scale spans quantized bits per weight (2-bit at group 128 is 2.25, 8-bit
# at group 32 is 9); modules kept float (16 or 32) take one colour above it.
LOW_BITS, HIGH_BITS, FLOAT_COLOUR = 2.0, 9.0, "#f4a261"
OUTSIDE = "other"  # the heat map's column for modules outside the decoder layers: embeddings, lm_head, …
TICKS = 16  # at most this many layer numbers on an axis


def _pyplot(option: str = "--plot"):
    """matplotlib.pyplot on the Agg backend, or one line saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise OutputError(f"{option}: matplotlib is not installed; expected `pip install 'moequant[plot]'` "
                          "(or `pip install matplotlib`)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_target(file: Path | None, option: str = "--plot") -> None:
    """Refuse, before any work, a picture that cannot be drawn or written: matplotlib missing, a
    name other than *.png, a folder that does not exist."""
    _pyplot(option)
    if file is None:
        return
    if file.suffix.lower() != ".png":
        raise OutputError(f"{option} {file}: not a .png name; expected a PNG file name, like plan.png")
    if not file.parent.is_dir():
        raise OutputError(f"{option} {file}: folder {file.parent} not found; expected an existing folder")


def plan_grid(plan: Plan) -> tuple[list[str], list[Role], list[list[float]]]:
    """(columns, roles, bits): column labels (decoder layer indices, then `OUTSIDE` if any module
    is outside the layers), the roles present in plan order, and bits per weight of each role's
    modules in each column (8 × bytes after / parameters; NaN where the column has none)."""
    cells: dict[tuple[object, Role], list[int]] = {}
    for r in plan.rows:
        where = layer_of(r.path + ".")
        cell = cells.setdefault((where[1] if where else OUTSIDE, r.role), [0, 0])
        cell[0] += r.bytes_after
        cell[1] += r.params
    layers = sorted({c for c, _ in cells if c != OUTSIDE})
    columns = [*layers, *([OUTSIDE] if any(c == OUTSIDE for c, _ in cells) else [])]
    roles = list(plan.by_role())
    bits = [[8 * cells[c, role][0] / max(cells[c, role][1], 1) if (c, role) in cells else math.nan
             for c in columns] for role in roles]
    return [str(c) for c in columns], roles, bits


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def plan_png(plan: Plan) -> bytes:
    """The plan as a picture: bits per weight by layer × role (heat map), and bytes per role before
    and after (bars)."""
    plt = _pyplot()
    import numpy as np

    columns, roles, bits = plan_grid(plan)
    grid = np.ma.masked_invalid(np.array(bits, dtype=float))
    fig, (heat, bars) = plt.subplots(2, 1, figsize=PLAN_SIZE, height_ratios=(3, 2), layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee", over=FLOAT_COLOUR)  # bad: no such module
    image = heat.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest", vmin=LOW_BITS, vmax=HIGH_BITS)
    heat.set_yticks(range(len(roles)), [r.value for r in roles])
    layers = len(columns) - (columns[-1] == OUTSIDE)
    ticks = [*range(0, layers, math.ceil(layers / TICKS)), *([layers] if layers < len(columns) else [])]
    heat.set_xticks(ticks, [columns[t] for t in ticks])
    heat.set_xlabel(f"decoder layer ({OUTSIDE}: modules outside the layers)" if layers < len(columns) else
                    "decoder layer")
    heat.set_title(f"{plan.model_type}: bits per weight by layer and role "
                   f"({plan.bits_per_weight:.2f} overall, {short_size(plan.bytes_after)})")
    fig.colorbar(image, ax=heat, extend="max", label=f"bits per weight (above {HIGH_BITS:g}: float)")
    if len(columns) <= ANNOTATE_UP_TO:
        for y, row in enumerate(bits):
            for x, value in enumerate(row):
                if not math.isnan(value):
                    heat.text(x, y, f"{value:.3g}", ha="center", va="center", fontsize=8,
                              color="white" if value < 6 else "black")

    by_role = plan.by_role()
    before = [sum(r.bytes_before for r in by_role[role]) for role in roles]
    after = [sum(r.bytes_after for r in by_role[role]) for role in roles]
    ys = np.arange(len(roles))
    bars.barh(ys + 0.2, before, height=0.4, color="#bbbbbb", label="before")
    bars.barh(ys - 0.2, after, height=0.4, color="#3b528b", label="after")
    for y, value in zip(ys, after):
        bars.text(value, y - 0.2, f" {short_size(value)}", va="center", fontsize=8)
    bars.set_yticks(ys, [r.value for r in roles])
    bars.invert_yaxis()
    bars.xaxis.set_major_formatter(lambda value, _: short_size(value))
    bars.set_xlabel("bytes")
    bars.set_title(f"bytes by role: {short_size(plan.bytes_before)} before, {short_size(plan.bytes_after)} after")
    bars.legend(loc="lower right")
    png = _png(fig)
    plt.close(fig)
    return png


def verify_png(report: Report, title: str = "") -> bytes:
    """`verify`'s figures as a picture: router top-k agreement per MoE layer, and the KL of DST's
    next-token distribution from the reference's at each token position (mean over the batch)."""
    plt = _pyplot()

    fig, (router, kl) = plt.subplots(1, 2, figsize=VERIFY_SIZE, layout="constrained")
    blocks = list(report.router_agreement)
    if blocks:
        where = [layer_of(b + ".") for b in blocks]
        xs = [w[1] if w else i for i, w in enumerate(where)]
        agreement = router.bar(xs, [report.router_agreement[b] for b in blocks], color="#3b528b", width=0.8)
        if len(blocks) <= ANNOTATE_UP_TO:
            router.bar_label(agreement, fmt="%.3f", fontsize=8)
        router.set_xticks(xs[::math.ceil(len(xs) / TICKS)])
        router.set_xlabel("decoder layer")
        ks = sorted(set(report.top_k.values()))
        router.set_title(f"router top-{'/'.join(map(str, ks)) or 'k'} agreement by layer "
                         f"(lowest {report.min_router_agreement:.3f})")
    else:
        router.text(0.5, 0.5, "no MoE blocks routed these tokens", ha="center", va="center")
        router.set_title("router top-k agreement by layer")
    router.set_ylim(0, 1.02)
    router.set_ylabel("fraction of tokens with the same expert set")

    kl.plot(range(len(report.kl_by_position)), report.kl_by_position, color="#21918c", marker=".")
    kl.axhline(report.closeness.kl, color="#888888", linestyle="--", label=f"mean {report.closeness.kl:.4g}")
    kl.set_xlabel("token position")
    kl.set_ylabel("KL (nats)")
    kl.set_title("KL by token position (mean over the batch)")
    kl.set_ylim(bottom=0)
    kl.legend(loc="upper right")
    if title:
        fig.suptitle(title)
    png = _png(fig)
    plt.close(fig)
    return png
