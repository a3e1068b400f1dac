"""Shared fixtures: a tiny prepared synthetic corpus, built once per test session."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.prepare import prepare  # noqa: E402
from data.synthetic import generate_corpus  # noqa: E402
from helpers import TINY_IDENTITIES, tiny_config  # noqa: E402


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
