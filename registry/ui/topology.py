"""A service's place in the mesh as a picture: downstreams on the left, the service in the middle, upstreams
on the right, each edge drawn as the intentions decide it (solid green "allowed", dashed red "denied", dashed
amber "L7 rules" when an intention with HTTP permissions decides it: allowed or not per request).

Pure: names and decisions in, SVG text out (escaped), so it is tested without a browser. The edges come from
``/v1/internal/ui/service-topology/<service>``, the endpoint Consul's UI draws the same picture from; the
server draws it, so the page needs no script to show it. The picture has a text twin (the edge list) for
screen readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

ROW = 44
BOX_W, BOX_H = 190, 30
WIDTH = 760
# Why an edge is there (the endpoint's Source), in words.
ORIGINS = {"proxy-registration": "named in a proxy's upstreams", "specific-intention": "an intention names it",
           "wildcard-intention": "a wildcard intention", "default-allow": "allowed by default",
           "routing-config": "routing configuration"}  # fmt: skip
_STYLE = {"allowed": ("#116329", ""), "denied": ("#a40e26", ' stroke-dasharray="6 4"'),
          "L7 rules": ("#7d4e00", ' stroke-dasharray="2 3"')}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    destination: str
    allowed: bool
    origin: str = ""  # the endpoint's Source: why the edge is listed
    l7: bool = False  # an L7 intention (HTTP permissions) decides it

    @property
    def word(self) -> str:
        if self.l7:
            return "L7 rules"
        return "allowed" if self.allowed else "denied"

    @property
    def why(self) -> str:
        return ORIGINS.get(self.origin, self.origin)


def _box(x: int, y: int, label: str, center: bool = False) -> str:
    fill = "#dbeafe" if center else "#f6f8fa"
    text = label if len(label) <= 24 else label[:23] + "…"
    return (f'<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="#57606a"/>'
            f'<text x="{x + BOX_W // 2}" y="{y + 20}" text-anchor="middle" font-size="14" fill="#1b1f24">'
            f"{escape(text)}</text><title>{escape(label)}</title></g>")  # fmt: skip


def _marker_id(word: str) -> str:
    return "arrow-" + word.replace(" ", "-").lower()


def _edge(x1: int, y1: int, x2: int, y2: int, word: str) -> str:
    color, dash = _STYLE[word]
    mx, my = (x1 + x2) // 2, (y1 + y2) // 2
    return (f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="2"{dash} '
            f'marker-end="url(#{_marker_id(word)})"/>'
            f'<text x="{mx}" y="{my - 4}" text-anchor="middle" font-size="11" fill="{color}">{word}</text>')  # fmt: skip


def render_svg(service: str, downstreams: list[Edge], upstreams: list[Edge]) -> str:
    """The picture: ``downstreams`` are edges into ``service``, ``upstreams`` edges out of it."""
    rows = max(len(downstreams), len(upstreams), 1)
    height = rows * ROW + 16
    cy = height // 2 - BOX_H // 2
    left, mid, right = 8, WIDTH // 2 - BOX_W // 2, WIDTH - BOX_W - 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" '
             f'role="img" aria-label="{escape(_summary(service, downstreams, upstreams))}">',
             "<defs>" + "".join(
                 f'<marker id="{_marker_id(w)}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
                 f'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{c}"/></marker>'
                 for w, (c, _) in _STYLE.items()) + "</defs>"]  # fmt: skip

    def top(i: int, n: int) -> int:
        return (height - n * ROW) // 2 + i * ROW + (ROW - BOX_H) // 2

    for i, e in enumerate(downstreams):
        y = top(i, len(downstreams))
        parts.append(_edge(left + BOX_W, y + BOX_H // 2, mid, cy + BOX_H // 2, e.word))
        parts.append(_box(left, y, e.source))
    for i, e in enumerate(upstreams):
        y = top(i, len(upstreams))
        parts.append(_edge(mid + BOX_W, cy + BOX_H // 2, right, y + BOX_H // 2, e.word))
        parts.append(_box(right, y, e.destination))
    parts.append(_box(mid, cy, service, center=True))
    parts.append("</svg>")
    return "".join(parts)


def _summary(service: str, downstreams: list[Edge], upstreams: list[Edge]) -> str:
    into = ", ".join(f"{e.source} ({e.word})" for e in downstreams) or "none"
    out = ", ".join(f"{e.destination} ({e.word})" for e in upstreams) or "none"
    return f"Topology of {service}. Downstreams: {into}. Upstreams: {out}."
