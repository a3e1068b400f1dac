"""docs/ablation_open_readings.sh: every command it runs parses and names real configs and keys."""
import os
import shlex
import subprocess

import pytest

from config import load_config
from helpers import ROOT, load_test_script

SCRIPT = os.path.join(ROOT, "docs", "ablation_open_readings.sh")


def dry_run(corpus):
    process = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "DRY_RUN": "1", "CORPUS": corpus, "OUTPUT_DIR": "/tmp/none"})
    assert process.returncode == 0, process.stderr
    return [shlex.split(line[2:]) for line in process.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("corpus, fork, arms", [
    ("synthetic", 1999, 7), ("vox1", 6887, 7), ("synthetic_off_archetype", 1999, 1)])
def test_dry_run_commands_parse_and_fork_at_the_bcr_switch_on(corpus, fork, arms):
    import train

    commands = dry_run(corpus)
    trains = [c for c in commands if c[1:2] == ["train.py"]]
    assert len(trains) == arms + 2  # AaSM alone to the fork, each arm, AaSM alone to the end
    for command in trains:
        args = train.build_parser().parse_args(command[2:])
        cfg = load_config(args.cfg, args.opts)
        assert args.seeds == [0, 1, 2] and cfg.training.diagnostics
    first = train.build_parser().parse_args(trains[0][2:])
    assert first.resume is None and f"training.max_iter={fork}" in first.opts
    for command in trains[1:]:
        args = train.build_parser().parse_args(command[2:])
        assert args.resume == "auto" and f"training.max_iter={fork}" not in args.opts
    copies = [c for c in commands if c[0] == "cp"]
    assert len(copies) == 3 * arms and all(c[1].endswith(f"checkpoint_{fork}.pth.tar") for c in copies)
    compare = next(c for c in commands if c[1:2] == ["test.py"])
    parsed = load_test_script().parse_arguments(load_test_script().build_parser(), compare[2:])
    load_config(parsed.cfg, parsed.opts)
    assert len(parsed.compare) == arms + 1 and parsed.compare[0].endswith(f"{corpus}_aasm")
    if corpus != "synthetic_off_archetype":  # the matched weight, from the config's placeholder in a dry run
        assert "training.bcr_weight=27.0" in trains[-2]
