"""Paths of the test data, the config of the tiny synthetic corpus the tests build (conftest.py), test.py as a module."""
import importlib.util
import os
import sys

import yaml

from config import load_config
from utils.run_folder import config_to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")  # reference values, copied from the release's outputs
SYNTHETIC = os.path.join(ROOT, "config", "synthetic.yaml")

TINY_IDENTITIES = 16
# id00001 has no face folder (the corpus' faceless rule at this size), so val has 5 usable
# identities; each split has at least two identities of each gender (for the `g` lists).
TINY_RANGES = ["dataset.split_ranges.val=[id00001, id00006]", "dataset.split_ranges.test=[id00007, id00011]",
               "dataset.split_ranges.train=[id00012, id00016]"]


def tiny_opts(root: str) -> list[str]:
    """The --opts that point the synthetic config at the tiny corpus under `root`."""
    return [f"dataset.audio_data_dir={root}/wav", f"dataset.image_data_dir={root}/VGG_ALL_FRONTAL",
            f"dataset.meta_file={root}/vox1_meta.csv", f"dataset.list_dir={root}/lists",
            f"dataset.lmdb_dir={root}/lmdb", f"dataset.synthetic.root={root}",
            f"dataset.synthetic.identities={TINY_IDENTITIES}", "dataset.num_workers=0",
            "dataset.image_size=112", "dataset.store_image_size=112", "training.batch_size=4", "training.compile=false",
            "training.amp=off",
            *TINY_RANGES]


def tiny_config(root: str, *extra: str):
    """The synthetic config pointed at a corpus under `root`, with the tiny corpus' split ranges."""
    return load_config(SYNTHETIC, tiny_opts(root) + list(extra))


def short_run_opts(root: str, output_dir: str) -> list[str]:
    """An 80-identity corpus under `root` and a 400-iteration schedule of the synthetic method (about two minutes)."""
    return [f"dataset.audio_data_dir={root}/wav", f"dataset.image_data_dir={root}/VGG_ALL_FRONTAL",
            f"dataset.meta_file={root}/vox1_meta.csv", f"dataset.list_dir={root}/lists",
            f"dataset.lmdb_dir={root}/lmdb", f"dataset.synthetic.root={root}", "dataset.synthetic.identities=80",
            "dataset.split_ranges.val=[id00001, id00010]", "dataset.split_ranges.test=[id00011, id00040]",
            "dataset.split_ranges.train=[id00041, id00080]", f"output_dir={output_dir}", "exp_name=short",
            "training.max_iter=400", "training.lr_steps=[300]", "training.bcr_start_iter=300", "training.ie_start_iter=200",
            "training.ie_refresh_iter=50", "training.val_start=200", "training.val_iter=200",
            "training.save_iter=200", "testing.bootstrap=50", "training.compile=false", "training.amp=off"]


def load_test_script():
    """test.py as a module, loaded by path (`test` is also the standard library's regression-test package)."""
    if "test_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("test_script", os.path.join(ROOT, "test.py"))
        sys.modules["test_script"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["test_script"])
    return sys.modules["test_script"]


def save_config(cfg, path: str) -> None:
    """A resolved config as a YAML file (what a test hands to an entry point)."""
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
