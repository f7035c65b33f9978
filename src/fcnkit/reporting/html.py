"""A self-contained HTML report: one file, images embedded, readable offline in any browser.

A report is a title and a list of sections; each section is a heading with one kind of content (a metrics table,
a key/value table, a generic table, an image, a paragraph). ``Report.write`` renders and writes it atomically.

>>> r = Report("demo")
>>> r.add_text("About", "Trained on the built-in digit scenes.")
>>> html = r.render()
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fcnkit.errors import InputError
from fcnkit.io.atomic import atomic_file

_METRIC_NAMES = {
    "pixel_accuracy": "pixel accuracy",
    "mean_accuracy": "mean accuracy",
    "mean_iu": "mean IU",
    "fw_iu": "frequency-weighted IU",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d2530; background: #fbfbfd; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d6dbe3; padding-bottom: .3rem; }
.subtitle { color: #5a6472; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .8rem; border-bottom: 1px solid #e3e7ee; text-align: left; }
td.num { text-align: right; }
th { background: #eef1f6; }
figure { margin: .8rem 0; }
figure img { max-width: 100%; border: 1px solid #d6dbe3; background: white; }
figcaption { color: #5a6472; font-size: .9rem; margin-top: .3rem; }
.bar { display: inline-block; height: .7rem; background: #3b7dd8; vertical-align: middle; margin-left: .4rem; }
"""

# Marks the page as loaded once every embedded image decoded; the browser test reads it.
_SCRIPT = """
window.addEventListener("load", function () {
  var broken = [];
  document.querySelectorAll("img").forEach(function (img) {
    if (!img.complete || img.naturalWidth === 0) { broken.push(img.alt || "image"); }
  });
  document.body.setAttribute("data-status", broken.length ? "broken: " + broken.join(", ") : "ok");
});
"""


@dataclass
class _Section:
    title: str
    body: str


def _fmt(value: Any, *, scores: bool = False) -> str:
    """A cell's text. ``scores``: a column of scores in [0, 1], all with four decimals so that they line up."""
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:  # a width of 1.0 or 516.0 s reads as 1 and 516, not 1.0000
            return f"{int(value):,}"
        if abs(value) < 1e-3:  # 1.5e-05 would print as 0.0000
            return f"{value:.2e}"
        if scores:
            return f"{value:.4f}"
        # four decimals at most, without trailing zeros: a width of 0.5 and 174.2 s read as 0.5 and 174.2
        text = f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
        return text.rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return " × ".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else html.escape(str(value))
    return html.escape(str(value))


def _cell(value: Any, *, scores: bool = False) -> str:
    klass = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    return f"<td{klass}>{_fmt(value, scores=scores)}</td>"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, table_id: str | None = None,
           scores: bool = False) -> str:
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, scores=scores) for v in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png_bytes(image: Any) -> bytes:
    """PNG bytes from a path, raw bytes, a matplotlib figure, or an (H, W[, C]) uint8 array."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"report image {str(path)!r} does not exist; write the picture before adding it")
        return path.read_bytes()
    if hasattr(image, "savefig"):
        buf = io.BytesIO()
        image.savefig(buf, format="png", bbox_inches="tight", dpi=110)
        return buf.getvalue()
    try:
        import numpy as np
        from PIL import Image

        array = np.asarray(image)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"report image of type {type(image).__name__} is not a path, PNG bytes, figure or uint8 array"
        ) from exc


@dataclass
class Report:
    """An HTML report under construction. Add sections in reading order, then ``write``."""

    title: str
    subtitle: str = ""
    sections: list[_Section] = field(default_factory=list)

    def add_text(self, title: str, text: str) -> None:
        paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())
        self.sections.append(_Section(title, paragraphs))

    def add_metrics(self, title: str, scores: Mapping[str, Any], class_names: Sequence[str] | None = None) -> None:
        """The four FCN metrics, then per-class IU (with a bar), from ``fcnkit.metrics.scores``'s dict."""
        rows = [(label, float(scores[key])) for key, label in _METRIC_NAMES.items() if key in scores]
        body = _table(["metric", "value"], rows, table_id="metrics", scores=True)
        ious = scores.get("iu")
        if ious is not None:
            names = list(class_names) if class_names is not None else [str(i) for i in range(len(ious))]
            if len(names) != len(ious):
                raise InputError(f"report got {len(names)} class names for {len(ious)} per-class IU values")
            per_class = []
            for name, iu in zip(names, ious):
                iu = float(iu)
                bar = "" if math.isnan(iu) else f'<span class="bar" style="width:{iu * 8:.2f}rem"></span>'
                cell = f'<td class="num">{_fmt(iu, scores=True)}{bar}</td>'
                per_class.append(f"<tr><td>{html.escape(name)}</td>{cell}</tr>")
            body += (
                '<table id="per-class-iu"><thead><tr><th>class</th><th>IU</th></tr></thead><tbody>'
                + "".join(per_class)
                + "</tbody></table>"
            )
        self.sections.append(_Section(title, body))

    def add_key_values(self, title: str, mapping: Mapping[str, Any]) -> None:
        self.sections.append(_Section(title, _table(["", ""], list(mapping.items()))))

    def add_table(self, title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.sections.append(_Section(title, _table(header, rows)))

    def add_image(self, title: str, image: Any, caption: str = "") -> None:
        data = base64.b64encode(_png_bytes(image)).decode("ascii")
        alt = html.escape(caption or title)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.sections.append(
            _Section(title, f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>'))

    def render(self) -> str:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        subtitle = html.escape(self.subtitle + (" · " if self.subtitle else "") + f"written {stamp}")
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>",
            f'<body data-status="loading"><h1>{html.escape(self.title)}</h1><p class="subtitle">{subtitle}</p>',
        ]
        for section in self.sections:
            parts.append(f"<section><h2>{html.escape(section.title)}</h2>{section.body}</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report atomically (a kill leaves the old file or the new one, never half of one).

        A folder that cannot be created or written raises ``OutputError`` naming it."""
        target = Path(path)
        with atomic_file(target, "w", what="report") as fh:
            fh.write(self.render())
        return target
