"""Tiny dependency-free SVG line-chart writer (log2 x axis, log10 y axis).

Used by scripts/bench.py.  Python 3 standard library only.

    svg = line_chart(title, xlabel, ylabel, series)
    series = [{"label": "plain", "color": "#1f77b4", "points": [(x, y), ...],
               "dash": False, "marker": "circle"}, ...]
"""

import math
from xml.sax.saxutils import escape


def size_label(v):
    """16 -> '16', 4096 -> '4K', 1048576 -> '1M' (binary units)."""
    v = int(round(v))
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if v >= div and v % div == 0:
            return "%d%s" % (v // div, unit)
    return str(v)


def num_label(v):
    if v == 0:
        return "0"
    if abs(v) >= 1:
        return ("%.0f" % v) if abs(v - round(v)) < 1e-9 else ("%g" % v)
    return "%g" % v


def _attr(d):
    return " ".join('%s="%s"' % (k.replace("_", "-"), escape(str(v), {'"': "&quot;"}))
                    for k, v in d.items())


def line_chart(title, xlabel, ylabel, series, width=800, height=500,
               xfmt=size_label, yfmt=num_label, subtitle=None):
    """Return an SVG document (str).  x: log2 scale, y: log10 scale.
    Points with non-positive or missing values are skipped."""
    ml, mr, mt, mb = 80, 30, 62 if subtitle else 50, 62
    pw, ph = width - ml - mr, height - mt - mb
    pts = [(x, y) for s in series for (x, y) in s["points"]
           if x is not None and y is not None and x > 0 and y > 0]
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">'
           % (width, height, width, height),
           '<rect x="0" y="0" width="%d" height="%d" fill="white"/>' % (width, height),
           '<text x="%d" y="24" text-anchor="middle" font-size="16" '
           'font-weight="bold">%s</text>' % (width // 2, escape(title))]
    if subtitle:
        out.append('<text x="%d" y="44" text-anchor="middle" font-size="12" '
                   'fill="#555">%s</text>' % (width // 2, escape(subtitle)))
    if not pts:
        out.append('<text x="%d" y="%d" text-anchor="middle">no data</text>'
                   % (width // 2, height // 2))
        out.append("</svg>")
        return "\n".join(out) + "\n"

    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x_lo = math.floor(math.log2(min(xs)))
    x_hi = math.ceil(math.log2(max(xs)))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo = math.floor(math.log10(min(ys)))
    y_hi = math.ceil(math.log10(max(ys)))
    if y_hi == y_lo:
        y_hi += 1

    def px(x):
        return ml + (math.log2(x) - x_lo) / (x_hi - x_lo) * pw

    def py(y):
        return mt + ph - (math.log10(y) - y_lo) / (y_hi - y_lo) * ph

    # grid + y ticks
    decades = y_hi - y_lo
    for d in range(y_lo, y_hi + 1):
        for m in range(1, 10):
            v = m * 10.0 ** d
            if v > 10.0 ** y_hi * 1.0000001:
                break
            yy = py(v)
            major = m == 1
            labeled = major or (decades <= 2 and m in (2, 5))
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" '
                       'stroke-width="1"/>' % (ml, yy, ml + pw, yy,
                                               "#ccc" if major else "#eee"))
            if labeled:
                out.append('<text x="%.1f" y="%.1f" text-anchor="end">%s</text>'
                           % (ml - 6, yy + 4, escape(yfmt(v))))
    # x ticks: every power of two, labels thinned to <= 12
    nx = x_hi - x_lo
    step = max(1, math.ceil((nx + 1) / 12))
    for e in range(x_lo, x_hi + 1):
        xx = px(2.0 ** e)
        out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee" '
                   'stroke-width="1"/>' % (xx, mt, xx, mt + ph))
        if (e - x_lo) % step == 0:
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>'
                       % (xx, mt + ph, xx, mt + ph + 5))
            out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>'
                       % (xx, mt + ph + 18, escape(xfmt(2 ** e))))
    # axes
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" '
               'stroke="#333" stroke-width="1"/>' % (ml, mt, pw, ph))
    out.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="13">%s</text>'
               % (ml + pw / 2, height - 14, escape(xlabel)))
    out.append('<text x="18" y="%.1f" text-anchor="middle" font-size="13" '
               'transform="rotate(-90 18 %.1f)">%s</text>'
               % (mt + ph / 2, mt + ph / 2, escape(ylabel)))

    # series
    for s in series:
        sp = sorted((x, y) for (x, y) in s["points"]
                    if x is not None and y is not None and x > 0 and y > 0)
        if not sp:
            continue
        color = s.get("color", "#000")
        attrs = {"fill": "none", "stroke": color, "stroke_width": s.get("width", 2)}
        if s.get("dash"):
            attrs["stroke_dasharray"] = "6,4"
        out.append('<polyline %s points="%s"/>' % (
            _attr(attrs), " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in sp)))
        for x, y in sp:
            out.append(_marker(s.get("marker", "circle"), px(x), py(y), color))

    # legend (top-left inside the plot)
    lw = 12 + max(len(s["label"]) for s in series) * 7 + 40
    lh = 8 + 18 * len(series)
    lx, ly = ml + 10, mt + 10
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="white" '
               'fill-opacity="0.9" stroke="#999"/>' % (lx, ly, lw, lh))
    for i, s in enumerate(series):
        yy = ly + 14 + 18 * i
        color = s.get("color", "#000")
        dash = ' stroke-dasharray="6,4"' if s.get("dash") else ""
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" '
                   'stroke-width="2"%s/>' % (lx + 8, yy, lx + 36, yy, color, dash))
        out.append(_marker(s.get("marker", "circle"), lx + 22, yy, color))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 44, yy + 4,
                                                      escape(s["label"])))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _marker(kind, x, y, color):
    if kind == "square":
        return ('<rect x="%.1f" y="%.1f" width="8" height="8" fill="%s"/>'
                % (x - 4, y - 4, color))
    if kind == "triangle":
        return ('<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="%s"/>'
                % (x, y - 5, x - 5, y + 4, x + 5, y + 4, color))
    return '<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>' % (x, y, color)
