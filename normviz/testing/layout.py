"""Whether a figure's texts are readable: :func:`text_collisions` lists the texts that overlap,
stand too close (tick labels) or leave the figure, as drawn at the saved size and dpi."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TextBox:
    """A text drawn on a figure: its string, what it is, and its corners in pixels."""

    text: str
    role: str
    corners: tuple[tuple[float, float], ...]
    group: int = 0  # tick labels of one axis share a group (they need a gap between them)

    def describe(self) -> str:
        return f"{self.role} {self.text!r}"


def _roles(fig: Any) -> dict[int, str]:
    """What each text artist of ``fig`` is (figure title, tick label, …), by id, for messages."""
    from matplotlib.legend import Legend

    roles: dict[int, str] = {}
    if getattr(fig, "_suptitle", None) is not None:
        roles[id(fig._suptitle)] = "figure title"
    for ax in fig.axes:
        for title in (ax.title, ax._left_title, ax._right_title):
            roles[id(title)] = "axes title"
        for axis in (ax.xaxis, ax.yaxis):
            roles[id(axis.label)] = "axis label"
            roles[id(axis.offsetText)] = "axis offset"
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                roles[id(tick.label1)] = roles[id(tick.label2)] = "tick label"
                tick.label1._normviz_axis = tick.label2._normviz_axis = axis
    for legend in fig.findobj(Legend):
        for text in [*legend.get_texts(), legend.get_title()]:
            roles[id(text)] = "legend text"
    return roles


def _group(text: Any) -> int:
    """An id shared by the tick labels of one axis (0 for other texts)."""
    axis = getattr(text, "_normviz_axis", None)
    return id(axis) if axis is not None else 0


def _corners(text: Any, renderer: Any) -> tuple[tuple[float, float], ...]:
    """The four corners of a (possibly rotated) text's box, in pixels.

    ``get_window_extent`` is the axis-aligned box around the rotated text; the
    rotated rectangle inside it has the same centre, and its sides follow from
    the box's width and height (W = w|cos| + h|sin|, H = w|sin| + h|cos|).
    Adjacent rotated tick labels overlap as boxes without their glyphs touching.
    """
    import math

    box = text.get_window_extent(renderer)
    angle = math.radians(text.get_rotation() % 180.0)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    det = c * c - s * s
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    if abs(det) < 1e-3 or s < 1e-6:  # upright (or near 45 degrees: the box is the best we know)
        return ((box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1))
    w = max(0.0, (box.width * c - box.height * s) / det)
    h = max(0.0, (box.height * c - box.width * s) / det)
    ux, uy = math.cos(angle), math.sin(angle)  # along the text
    vx, vy = -uy, ux  # across it
    return tuple(
        (cx + a * w / 2 * ux + b * h / 2 * vx, cy + a * w / 2 * uy + b * h / 2 * vy)
        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    )


def _saved_dpi(fig: Any, dpi: float | None) -> float:
    import matplotlib

    if dpi is not None:
        return float(dpi)
    saved = matplotlib.rcParams["savefig.dpi"]
    return float(fig.dpi if saved == "figure" else saved)


def drawn_texts(fig: Any, *, dpi: float | None = None) -> list[TextBox]:
    """Every non-empty text a draw of ``fig`` at ``dpi`` puts on the canvas.

    ``dpi`` defaults to ``rcParams["savefig.dpi"]`` (a style's value inside its
    :func:`~normviz.plot.style.style_context`), so extents are those of the saved
    file. Only texts actually drawn count: tick labels outside the view, invisible
    and empty texts are left out.
    """
    from matplotlib.text import Text

    dpi = _saved_dpi(fig, dpi)
    drawn: list[Any] = []
    original = Text.draw

    def draw(self: Any, renderer: Any) -> Any:
        result = original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, renderer))
        return result

    old_dpi = fig.dpi
    Text.draw = draw  # type: ignore[method-assign]
    try:
        fig.set_dpi(dpi)
        fig.draw_without_rendering()  # the layout and every artist's extent, no pixels
        roles = _roles(fig)  # after the draw: axes make their tick labels while drawing
        boxes = [TextBox(t.get_text(), roles.get(id(t), "text"), _corners(t, r), _group(t)) for t, r in drawn]
    finally:
        Text.draw = original  # type: ignore[method-assign]
        fig.set_dpi(old_dpi)
    return boxes


def _overlap(a: TextBox, b: TextBox) -> float:
    """How deep two convex boxes overlap, in pixels (separating axes); <= 0 when apart."""
    import math

    depth = math.inf
    for poly in (a.corners, b.corners):
        for i in range(4):
            (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % 4]
            nx, ny = y0 - y1, x1 - x0
            norm = math.hypot(nx, ny)
            if norm == 0:
                continue
            nx, ny = nx / norm, ny / norm
            pa = [x * nx + y * ny for x, y in a.corners]
            pb = [x * nx + y * ny for x, y in b.corners]
            depth = min(depth, min(max(pa), max(pb)) - max(min(pa), min(pb)))
            if depth <= 0:
                return depth
    return depth


def text_collisions(
    fig: Any, *, tolerance: float = 1.0, tick_gap: float = 2.0, dpi: float | None = None
) -> list[str]:
    """Where the texts of ``fig`` collide, as drawn at ``dpi`` (default: the saved dpi).

    One message per pair of texts (titles, axis labels, tick labels, legend texts,
    any other text) that overlap by more than ``tolerance`` pixels, and per text
    that reaches more than ``tolerance`` pixels outside the figure. Tick labels of
    one axis must also stand ``tick_gap`` points apart: "115" and "198" 0.7 pt
    apart read as "115198". An empty list: every text is readable. Call it inside
    the style's :func:`~normviz.plot.style.style_context` for the style's saved dpi.
    """
    dpi = _saved_dpi(fig, dpi)
    gap_px = tick_gap * dpi / 72.0
    boxes = drawn_texts(fig, dpi=dpi)
    width, height = fig.get_figwidth() * dpi, fig.get_figheight() * dpi
    problems = []
    for box in boxes:
        xs = [x for x, _ in box.corners]
        ys = [y for _, y in box.corners]
        out = max(-min(xs), -min(ys), max(xs) - width, max(ys) - height)
        if out > tolerance:
            problems.append(f"{box.describe()} reaches {out:.1f} px outside the figure")
    spans = [(min(x for x, _ in b.corners), max(x for x, _ in b.corners), min(y for _, y in b.corners),
              max(y for _, y in b.corners)) for b in boxes]
    margin = max(gap_px, tolerance)
    for i, a in enumerate(boxes):
        ax0, ax1, ay0, ay1 = spans[i]
        for j in range(i + 1, len(boxes)):
            bx0, bx1, by0, by1 = spans[j]
            if bx0 > ax1 + margin or ax0 > bx1 + margin or by0 > ay1 + margin or ay0 > by1 + margin:
                continue  # far apart: no need for the exact test
            b = boxes[j]
            depth = _overlap(a, b)
            if a.group and a.group == b.group and depth > -gap_px:
                problems.append(f"{a.describe()} and {b.describe()} are {-depth:.1f} px apart (< {tick_gap:g} pt)")
            elif depth > tolerance:
                problems.append(f"{a.describe()} overlaps {b.describe()} by {depth:.1f} px")
    return problems
