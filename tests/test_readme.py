"""The README's commands against the code: every command line parses and names files and config keys that exist;
the Quick start runs as written in a fresh clone (slow)."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import ROOT, load_test_script
from utils.config import load_config

README = os.path.join(ROOT, "README.md")


def shell_blocks() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)


def commands() -> list[list[str]]:
    """Every command of the README's bash blocks, as argv lists: continuations joined, comments dropped,
    `&&` chains split."""
    found = []
    for block in shell_blocks():
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
    names = {" ".join(c[:3]) for c in PROGRAMS}
    assert {"python train.py --cfg", "python test.py --cfg", "python -m data.prepare"} <= names
    quick_start = shell_blocks()[:2]
    assert "python train.py --cfg config/synthetic.yaml" in quick_start[0]
    assert "python -m pytest" in quick_start[1]


@pytest.mark.parametrize("argv", PROGRAMS, ids=[" ".join(c)[:90] for c in PROGRAMS])
def test_readme_command_parses_and_names_real_configs_and_keys(argv):
    parser, arguments = script_parser(argv)
    args = parser.parse_args(arguments)  # a flag the program lacks exits here
    assert os.path.isfile(os.path.join(ROOT, args.cfg)), f"{args.cfg} does not exist"
    load_config(os.path.join(ROOT, args.cfg), args.opts)  # every --opts key is a config key of the right type


def test_readme_files_and_modules_exist():
    for argv in commands():
        if argv[0] == "python" and argv[1].endswith(".py"):
            assert os.path.isfile(os.path.join(ROOT, argv[1])), argv
        if argv[:2] == ["python", "-m"] and not argv[2].startswith(("pytest", "torch", "pip")):
            assert os.path.isfile(os.path.join(ROOT, *argv[2].split(".")) + ".py"), argv
        if argv[:2] == ["pip", "install"]:
            assert os.path.isfile(os.path.join(ROOT, argv[argv.index("-r") + 1])), argv


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
