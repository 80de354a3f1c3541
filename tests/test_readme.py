"""The documentation's Python snippets run as written, and its relative links lead somewhere.

Each of README.md and docs/*.md is one script: its fenced ```python blocks, top to bottom, in a fresh
interpreter (later blocks may use names of earlier ones in the same file, as a reader would; files
do not share names). A snippet that cannot run on this machine (an 8B checkpoint, eight devices, a
TPU pod) must use another fence (```py for such Python, still highlighted; ```bash).

Every relative link ``[text](path)`` / ``![alt](path)`` outside code must name an existing file or
folder, and a ``#fragment`` into a Markdown file must name one of its headings (GitHub's anchors)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_docs_keep_their_examples():
    assert (ROOT / "docs").is_dir(), "docs/ is missing"
    assert python_blocks((ROOT / "README.md").read_text()), "the README lost its Python example"
    assert sum(len(python_blocks(p.read_text())) for p in DOCS) >= 8, "the documentation lost its examples"


@pytest.mark.parametrize("doc", [p for p in DOCS if python_blocks(p.read_text())], ids=_name)
def test_snippets_run_top_to_bottom(doc, tmp_path):
    script = tmp_path / (doc.stem + ".py")
    script.write_text("\n\n".join(python_blocks(doc.read_text())))
    # the script lives outside the checkout: put the checkout on the path, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{_name(doc)}:\n{r.stderr[-3000:]}"


# ---- links ------------------------------------------------------------------------------------------------------
def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+).*?\1", "", text, flags=re.S)


def links(text: str) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(text))


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 … for repeats."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_rule():
    assert anchors("# A `b.py` (c)?\n## A `b.py` (c)?\n## Multi-host") == {"a-bpy-c", "a-bpy-c-1", "multi-host"}
    assert links("[a](x.md) `[b](y.md)` ![c](d/e.png)\n```\n[f](g.md)\n```\n") == ["x.md", "d/e.png"]


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_relative_links_point_to_existing_files(doc):
    bad = []
    for target in links(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, …
            continue
        path, _, fragment = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            bad.append(f"{target}: no heading with the anchor #{fragment} in {dest.relative_to(ROOT)}")
    assert not bad, f"{_name(doc)}: " + "; ".join(bad)
