"""docs/figures/import_graph.py, run as the lead runs it, on a tiny repository with a planted circle, imports
against the floors and a function-local import: each is reported, the picture is drawn, --strict fails; the same
tree without them is clean."""
import os
import subprocess
import sys

from helpers import ROOT

SCRIPT = os.path.join(ROOT, "docs", "figures", "import_graph.py")

PLANTED = {
    "utils/__init__.py": "",
    "utils/run.py": "from data.items import Item\n",  # floor 0 importing floor 2: upward
    "data/__init__.py": "",
    "data/items.py": "import numpy\nfrom data import reader\n\nItem = 1\n",  # `from package import module`
    "data/reader.py": "from .items import Item\n",  # relative: closes the circle items -> reader -> items
    "data/clean.py": "import utils.run\n",
    "models/__init__.py": "",
    "models/x.py": "import os\n",
    "losses/__init__.py": "def build():\n    from models import x\n    return x\n",  # losses may not import models
    "train.py": "import data.items\nimport losses\n",
    "tests/helpers.py": "",
    "tests/test_a.py": "from helpers import y\n",  # a script's folder is on its path
    ".venv/pyvenv.cfg": "",
    ".venv/lib/site-packages/evil.py": "import train\n",  # not the project's
}
CLEAN = dict(PLANTED, **{"utils/run.py": "", "data/reader.py": "", "losses/__init__.py": "import utils.run\n"})


def plant(root, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_graph(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *arguments], capture_output=True, text=True, timeout=120)


def test_planted_circle_and_upward_imports_are_reported_and_drawn(tmp_path):
    root = tmp_path / "repo"
    plant(root, PLANTED)
    picture = tmp_path / "graph.png"
    process = run_graph(str(root), "--output", str(picture), "--strict")
    assert process.returncode == 1, process.stdout + process.stderr
    lines = process.stdout.splitlines()
    assert "circles (modules importing each other): 1" in lines
    assert "  data.items -> data.reader -> data.items" in lines
    assert "imports against the floors: 2" in lines
    assert any(line.startswith("  utils.run -> data.items (utils/run.py, line 1;") for line in lines), lines
    assert any(line.startswith("  losses -> models.x (losses/__init__.py, line 2;") for line in lines), lines
    assert lines[lines.index("function-local project imports: 1") + 1] == "  losses -> models.x (line 2)"
    for pair in ("data -> utils: 1", "utils -> data: 1", "entry points -> data: 1", "entry points -> losses: 1",
                 "losses -> models: 1"):
        assert f"  {pair}" in lines, (pair, lines)
    assert "  data <-> utils" in lines
    assert "2: data, 4 files, " in process.stdout and "5: entry points, 3 files, " in process.stdout  # not .venv
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tree_without_them_is_clean(tmp_path):
    plant(tmp_path, CLEAN)
    process = run_graph(str(tmp_path), "--strict")
    assert process.returncode == 0, process.stdout + process.stderr
    for line in ("circles (modules importing each other): 0", "imports against the floors: 0",
                 "rooms importing each other: 0", "function-local project imports: 0"):
        assert line in process.stdout.splitlines(), process.stdout
