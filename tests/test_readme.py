"""The README's Python snippets run as written, top to bottom, in a fresh interpreter.

Every fenced ```python block of README.md is part of one script (later blocks may use names of
earlier ones, as a reader would); a snippet that cannot run on this machine (an 8B checkpoint, eight
devices, a TPU pod) must use another fence (```py for such Python, still highlighted; ```bash)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_snippets_run_top_to_bottom(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 8, "the README lost its examples"
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(blocks))
    # the script lives outside the checkout: put the checkout on the path, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
