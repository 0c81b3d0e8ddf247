"""`GET /badge/NAME.svg`: a target's state and uptime as a small SVG badge, for a README or
a wiki (Gatus and shields.io draw the same shape). Text only through escaping; no script,
no style attribute, no external reference."""

from __future__ import annotations

from .pagetext import _e

CHAR_W = 6.6  # average advance of the badge's 11 px sans-serif, per character
PAD = 6
NAME_MAX = 40  # characters of the name shown
COLOURS = {"up": "#2a7a2a", "down": "#c22", "unknown": "#777"}


def badge_svg(name: str, state: str, uptime_pct: float | None, span: str) -> bytes:
    left = name if len(name) <= NAME_MAX else name[: NAME_MAX - 1] + "…"
    right = state if uptime_pct is None else f"{state} · {uptime_pct:.2f} % ({span})"
    lw = round(len(left) * CHAR_W + 2 * PAD)
    rw = round(len(right) * CHAR_W + 2 * PAD)
    width = lw + rw
    colour = COLOURS.get(state, COLOURS["unknown"])
    title = f"{name}: {right}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" '
        f'viewBox="0 0 {width} 20" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
        f'<rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{rw}" height="20" fill="{colour}"/>'
        '<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{PAD}" y="14">{_e(left)}</text>'
        f'<text x="{lw + PAD}" y="14">{_e(right)}</text></g></svg>\n'
    ).encode()
