"""bench/device_check.py as CI runs it: --tiny, on whatever device there is; without CUDA it names the parts it
skipped and exits 0."""
import os
import subprocess
import sys

import torch

from helpers import ROOT


def test_device_check_runs_tiny_and_names_what_it_skipped(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "device_check.py"), "--tiny",
                             "--work", str(tmp_path)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout
    for part in ("train", "loader", "extract"):
        assert f"| {part} | part total |" in table
    assert "it/s" in table and "items/s" in table and "reterival_f2v_test" in table and "FAILED" not in table
    if not torch.cuda.is_available():
        assert "skipped without CUDA: parity, torchrun, cudnn" in table
        assert table.count("skipped: needs CUDA") == 3
