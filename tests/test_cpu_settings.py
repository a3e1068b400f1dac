"""utils/cpu.py: numpy's AVX-512 kernels off on AMD family 19h with AVX-512 only (read from a cpuinfo file), never
over the user's own setting, and test.py makes the switch before numpy loads."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT
from utils.cpu import NUMPY_AVX512, cpu_identity, numpy_sorts_without_avx512

ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "flags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")


@pytest.mark.parametrize("text, switched", [
    (ZEN4, True),
    (ZEN4.replace(" avx512f", ""), False),  # Zen 3: the same family, no AVX-512
    (ZEN4.replace("25", "26"), False),  # Zen 5
    (ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("25", "6"), False),
])
def test_numpy_avx512_is_switched_off_on_zen4_only(tmp_path, monkeypatch, text, switched):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    monkeypatch.delenv("NPY_DISABLE_CPU_FEATURES", raising=False)
    assert numpy_sorts_without_avx512(str(cpuinfo)) is switched
    assert os.environ.get("NPY_DISABLE_CPU_FEATURES") == (NUMPY_AVX512 if switched else None)


def test_the_users_own_numpy_setting_stays(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN4)
    monkeypatch.setenv("NPY_DISABLE_CPU_FEATURES", "AVX512_SPR")
    assert not numpy_sorts_without_avx512(str(cpuinfo))
    assert os.environ["NPY_DISABLE_CPU_FEATURES"] == "AVX512_SPR"


def test_no_cpuinfo_changes_nothing(tmp_path):
    assert cpu_identity(str(tmp_path / "missing")) == ("", -1, set())


def test_test_py_switches_before_numpy_loads(tmp_path):
    """In a test.py process numpy's AVX-512 kernels are off exactly where this machine is a Zen 4."""
    probe = ("import runpy, sys; sys.argv = ['test.py', '--inspect', 'missing.pth.tar']\n"
             "try:\n    runpy.run_path('test.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "import numpy, os; from numpy._core._multiarray_umath import __cpu_features__ as f\n"
             "print(os.environ.get('NPY_DISABLE_CPU_FEATURES') is not None, f.get('X86_V4', f.get('AVX512F')))")
    environment = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environment, capture_output=True, text=True,
                         check=True).stdout.split()
    vendor, family, flags = cpu_identity()
    zen4 = vendor == "AuthenticAMD" and family == 25 and "avx512f" in flags
    assert out[-2:] == [str(zen4), str(not zen4 and "avx512f" in flags)]  # numpy sees no AVX-512 where switched
