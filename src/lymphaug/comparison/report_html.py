"""reports/report.md as one self-contained HTML page, for the MLflow parent run.

MLflow's artifact viewer shows a ``.md`` file as plain text, so the report's figures
appeared as ``![...](compare/x.png)`` lines. It renders ``.html`` in a frame, but that
frame cannot load files beside it: so every image the report links is embedded (a
``data:`` URI) and the page needs nothing else. Rendered with markdown-it (CommonMark
plus tables, the syntax report.md is written in).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em;"
    "line-height:1.45}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
    "padding:.2em .5em}img{max-width:100%}code{background:#f3f3f3}"
)
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def render(markdown: str, *, base: Path, title: str) -> str:
    """The page: ``markdown`` rendered, each relative image under ``base`` embedded."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                child.attrs["src"] = _embedded(base, str(child.attrs["src"]))
    body = md.renderer.render(tokens, md.options, {})
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def _embedded(base: Path, src: str) -> str:
    """A data: URI for a relative image file under ``base``; anything else unchanged."""
    path = (base / src).resolve()
    mime = MIME.get(path.suffix.lower())
    if "://" in src or mime is None or not path.is_relative_to(base.resolve()):
        return src  # not a file of the report's: left as written
    if not path.is_file():
        return src
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
