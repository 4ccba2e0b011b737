"""Replace one marked section of docs/benchmarks.md, leaving the others as they are."""

from __future__ import annotations

from pathlib import Path


def write_section(doc: Path, name: str, body: str) -> None:
    """Put `body` between `<!-- name:start -->` and `<!-- name:end -->` (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
