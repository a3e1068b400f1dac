"""The commands of README.md and docs/*.md against the code: every command line parses and names files and config
keys that exist, every link leads to a file (and heading) that exists; the Quick start runs as written in a fresh
clone (slow)."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from config import load_config
from helpers import ROOT, load_test_script

README = os.path.join(ROOT, "README.md")
DOCUMENTS = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def shell_blocks(document: str = README) -> list[str]:
    with open(document, encoding="utf-8") as f:
        return re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)


def commands(documents: list[str] = DOCUMENTS) -> list[list[str]]:
    """Every command of the documents' bash blocks, as argv lists: continuations joined, comments dropped,
    `&&` chains split."""
    found = []
    for document in documents:
        for block in shell_blocks(document):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].split("  #")[0].strip()
                for part in line.split("&&"):
                    if part.strip() and not part.strip().startswith("#"):
                        found.append(shlex.split(part))
    return found


def script_parser(argv: list[str]):
    """(parser, arguments) of a command that runs one of the project's programs, else None."""
    if argv[:2] == ["python", "train.py"] or (argv[0] == "torchrun" and "train.py" in argv):
        import train

        return train.build_parser(), argv[argv.index("train.py") + 1:]
    if argv[:2] == ["python", "test.py"]:
        return load_test_script().build_parser(), argv[2:]
    if argv[:3] == ["python", "-m", "data.prepare"]:
        from data import prepare

        return prepare.build_parser(), argv[3:]
    return None


PROGRAMS = [c for c in commands() if script_parser(c)]


def test_the_readme_has_the_commands_this_test_reads():
    assert os.path.join(ROOT, "docs", "training.md") in DOCUMENTS  # the docs' commands are read too
    names = {" ".join(c[:3]) for c in commands([README]) if script_parser(c)}
    assert {"python train.py --cfg", "python test.py --cfg", "python -m data.prepare"} <= names
    quick_start = shell_blocks()[:2]
    assert "python train.py --cfg config/synthetic.yaml" in quick_start[0]
    assert "python -m pytest" in quick_start[1]


@pytest.mark.parametrize("argv", PROGRAMS, ids=[" ".join(c)[:90] for c in PROGRAMS])
def test_readme_command_parses_and_names_real_configs_and_keys(argv):
    parser, arguments = script_parser(argv)
    args = parser.parse_args(arguments)  # a flag the program lacks exits here
    if getattr(args, "inspect", None):  # test.py --inspect reads a checkpoint, no config
        assert args.cfg is None
        return
    assert os.path.isfile(os.path.join(ROOT, args.cfg)), f"{args.cfg} does not exist"
    load_config(os.path.join(ROOT, args.cfg), args.opts)  # every --opts key is a config key of the right type


def test_readme_files_and_modules_exist():
    for argv in commands():
        if argv[0] == "python" and argv[1].endswith(".py"):
            assert os.path.isfile(os.path.join(ROOT, argv[1])), argv
        if argv[:2] == ["python", "-m"] and not argv[2].startswith(("pytest", "torch", "pip")):
            module = os.path.join(ROOT, *argv[2].split("."))
            assert os.path.isfile(module + ".py") or os.path.isfile(os.path.join(module, "__main__.py")), argv
        if argv[:2] == ["pip", "install"]:
            assert os.path.isfile(os.path.join(ROOT, argv[argv.index("-r") + 1])), argv


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links() -> list[tuple[str, str]]:
    """(document, target) of every relative link and image of the documents (web addresses left out)."""
    found = []
    for document in DOCUMENTS:
        with open(document, encoding="utf-8") as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
        found += [(document, target) for target in re.findall(r"\]\(([^)\s]+)\)", text)
                  if not target.startswith(("http://", "https://", "mailto:"))]
    return found


def test_every_link_leads_to_a_file_and_heading_that_exist():
    assert len(links()) > 20
    for document, target in links():
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(document), path)) if path else document
        where = f"{os.path.relpath(document, ROOT)}: ({target})"
        assert os.path.exists(linked), f"{where} leads to no file"
        if anchor:
            with open(linked, encoding="utf-8") as f:
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", f.read(), flags=re.S), flags=re.M)
            assert anchor in {github_anchor(h) for h in headings}, f"{where} names no heading of {path or 'itself'}"


@pytest.mark.slow
def test_quick_start_runs_as_written_in_a_fresh_clone(tmp_path):
    """The README's first block, verbatim, in a clone of this checkout: install, train, test."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True)
    block = shell_blocks()[0].strip()
    environment = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    process = subprocess.run(["bash", "-c", block], cwd=clone, env=environment, capture_output=True, text=True)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "| synthetic, test split | voice→face |" in process.stdout
    assert (clone / "experiments" / "synthetic" / "results_test.json").is_file()
