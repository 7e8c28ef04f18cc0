"""paper-repro book: the offline HTML book of the project (docs + executed notebooks).

Builds build/book/index.html with one page per document in docs/ and per executed notebook
in results/notebooks/ (figures inline). Mathematics is converted to MathML when the book is
built, so the pages need no network and no JavaScript: open build/book/index.html in any
browser. Run `make notebooks` first to refresh the executed copies.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

from paper_repro import results

_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$", re.S)
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }
nav { margin-bottom: 2rem; font-size: 0.9rem; } nav a { margin-right: 1rem; }
pre, code { background: #f5f5f5; } pre { padding: 0.6rem; overflow-x: auto; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; }
img { max-width: 100%; } math[display="block"] { margin: 0.8rem 0; }
.cell-input { border-left: 3px solid #8ab; padding-left: 0.5rem; margin: 0.5rem 0; }
.cell-output { margin: 0.5rem 0 1.2rem 0; }
"""


def math_to_mathml(text: str) -> str:
    """Replace ``$...$`` and ``$$...$$`` by MathML (left as is where conversion fails)."""
    from latex2mathml.converter import convert

    def repl(m):
        tex, display = (m.group(1), "block") if m.group(1) is not None else (m.group(2),
                                                                               "inline")
        try:
            return convert(tex.strip(), display=display)
        except Exception:  # noqa: BLE001 - keep the source when the converter cannot parse it
            return html.escape(m.group(0))
    return _MATH.sub(repl, text)


def markdown_html(text: str) -> str:
    """Markdown (with LaTeX math) to HTML; math is protected from the Markdown parser."""
    import mistune

    store: list[str] = []

    def keep(m):
        store.append(math_to_mathml(m.group(0)))
        return f"\x00MATH{len(store) - 1}\x00"

    protected = _MATH.sub(keep, text)
    out = mistune.create_markdown(plugins=["table", "strikethrough"])(protected)
    return re.sub("\x00MATH(\\d+)\x00", lambda m: store[int(m.group(1))], out)


def notebook_html(path: Path) -> str:
    """An executed notebook as HTML: markdown cells rendered, code and outputs shown."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(markdown_html(cell.source))
        elif cell.cell_type == "code":
            parts.append(f'<div class="cell-input"><pre><code>{html.escape(cell.source)}'
                         "</code></pre></div>")
            for o in cell.get("outputs", []):
                parts.append('<div class="cell-output">' + _output_html(o) + "</div>")
    return "\n".join(parts)


def _output_html(o) -> str:
    if o.get("output_type") == "stream":
        return f"<pre>{html.escape(o.get('text', ''))}</pre>"
    data = o.get("data", {})
    if "image/png" in data:
        return f'<img src="data:image/png;base64,{data["image/png"]}">'
    if "text/html" in data:
        return "".join(data["text/html"])
    if "text/markdown" in data:
        return markdown_html("".join(data["text/markdown"]))
    if "text/plain" in data:
        return f"<pre>{html.escape(''.join(data['text/plain']))}</pre>"
    if o.get("output_type") == "error":
        return f"<pre>{html.escape(o.get('ename', ''))}: {html.escape(o.get('evalue', ''))}</pre>"
    return ""


def _page(title: str, body: str, nav: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body><nav>{nav}</nav>{body}</body></html>\n")


def build(out: Path | None = None) -> Path:
    """Write the book; return the index page."""
    root = results.ROOT
    out = out or root / "build" / "book"
    out.mkdir(parents=True, exist_ok=True)
    docs = sorted((root / "docs").glob("*.md"))
    nbs = sorted((results.results_root() / "notebooks").glob("*.ipynb"))
    if not nbs:
        raise FileNotFoundError("no executed notebooks in results/notebooks/: run "
                                "`make notebooks` first")
    pages = [(p.stem, p.stem.replace("_", " "), "doc", p) for p in docs] + \
            [(p.stem, p.stem, "notebook", p) for p in nbs]
    nav = '<a href="index.html">contents</a>' + "".join(
        f'<a href="{k}-{slug}.html">{html.escape(title)}</a>' for slug, title, k, _ in pages)
    items = []
    for slug, title, kind, p in pages:
        body = markdown_html(p.read_text()) if kind == "doc" else notebook_html(p)
        name = f"{kind}-{slug}.html"
        results.write_if_changed(out / name, _page(title, body, nav))
        items.append(f'<li><a href="{name}">{html.escape(title)}</a> ({kind})</li>')
    readme = markdown_html((root / "README.md").read_text())
    index = (f"<h1>paper-repro</h1><p>The theory documents and the executed notebooks, with "
             f"their figures.</p><ul>{''.join(items)}</ul><hr>{readme}")
    results.write_if_changed(out / "index.html", _page("paper-repro", index, nav))
    return out / "index.html"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("book", help="build the offline HTML book (docs + executed notebooks)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default build/book)")
    return p


def run(args) -> int:
    index = build(args.out)
    print(f"book: {index}", file=sys.stderr)
    print(index)
    return 0
