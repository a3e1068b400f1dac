"""A tiny prepared synthetic corpus shared by the data tests (built once per test session)."""
from __future__ import annotations

import os

import pytest

from data.prepare import prepare
from data.synthetic import generate_corpus
from utils.config import load_config

TINY_IDENTITIES = 16
# id00001 has no face folder (the corpus' faceless rule at this size), so val has 5 usable
# identities; each split has at least two identities of each gender (for the `g` lists).
TINY_RANGES = ["dataset.split_ranges.val=[id00001, id00006]", "dataset.split_ranges.test=[id00007, id00011]",
               "dataset.split_ranges.train=[id00012, id00016]"]
_BUILT: dict[str, object] = {}


def tiny_config(root: str, *extra: str):
    """The synthetic config pointed at a corpus under `root`, with the tiny corpus' split ranges."""
    opts = [f"dataset.audio_data_dir={root}/wav", f"dataset.image_data_dir={root}/VGG_ALL_FRONTAL",
            f"dataset.meta_file={root}/vox1_meta.csv", f"dataset.list_dir={root}/lists",
            f"dataset.lmdb_dir={root}/lmdb", f"dataset.synthetic.root={root}",
            f"dataset.synthetic.identities={TINY_IDENTITIES}", "dataset.num_workers=0",
            "training.batch_size=4", *TINY_RANGES, *extra]
    return load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "config", "synthetic.yaml"), opts)


def tiny_corpus(tmp_path_factory) -> str:
    """Root of a 12-identity corpus with short clips and few files (generated once)."""
    if "root" not in _BUILT:
        root = str(tmp_path_factory.mktemp("tiny_corpus"))
        generate_corpus(root, TINY_IDENTITIES, seed=0, clips=(3, 4), images=(3, 4), seconds=(1.0, 1.6), workers=1)
        _BUILT["root"] = root
    return _BUILT["root"]


def prepared_config(tmp_path_factory):
    """Config of the tiny corpus after `prepare` (split CSVs, stores, lists)."""
    if "cfg" not in _BUILT:
        cfg = tiny_config(tiny_corpus(tmp_path_factory))
        prepare(cfg)
        _BUILT["cfg"] = cfg
    return _BUILT["cfg"]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    return prepared_config(tmp_path_factory)
