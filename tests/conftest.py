"""Shared fixtures, built once per test session: a tiny prepared synthetic corpus, a short training run."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.prepare import prepare  # noqa: E402
from data.synthetic import generate_corpus  # noqa: E402
from helpers import SYNTHETIC, TINY_IDENTITIES, short_run_opts, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """Root of a 16-identity corpus with short clips and few files."""
    root = str(tmp_path_factory.mktemp("tiny_corpus"))
    generate_corpus(root, TINY_IDENTITIES, seed=0, clips=(3, 4), images=(3, 4), seconds=(1.0, 1.6), workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_cfg(tiny_root):
    """Config of the tiny corpus after `prepare` (split CSVs, stores, lists)."""
    cfg = tiny_config(tiny_root)
    prepare(cfg)
    return cfg


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> dict:
    """train.py from nothing: the corpus root, the opts, the training summary and the run folder of a short run."""
    from train import train
    from config import load_config

    output = tmp_path_factory.mktemp("short_run")
    root = str(output / "corpus")
    opts = short_run_opts(root, str(output))
    summary = train(load_config(SYNTHETIC, opts))
    return {"root": root, "opts": opts, "summary": summary, "run_dir": str(output / "short")}
