"""Process settings for the CPU this runs on: environment switches that libraries read once, when they load or
first compute, so they are set first. Only the standard library here: importing numpy or torch would be too late."""
from __future__ import annotations

import os

# Kernels oneDNN keeps per process. Every batch draws its voice crops' length anew (101 frame counts in the demo),
# each length has its own forward and backward kernels for every convolution, and at the default of 1024 they are
# evicted before their length comes round again (bench/cpu_training.py --kernel-cache).
CPU_KERNEL_CACHE = 16384

# numpy's AVX-512 kernels, by the names of numpy >= 2.4 and of earlier versions (a name numpy does not know is
# ignored with an ImportWarning).
NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL"


def keep_cpu_kernels(capacity: int = CPU_KERNEL_CACHE) -> None:
    """Enlarge oneDNN's kernel cache and PyTorch's own cache of oneDNN kernels, unless the environment sizes them.
    Both are read when the process runs its first CPU convolution: call this before."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(capacity))


def cpu_identity(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, int, set[str]]:
    """(vendor, family, flags) of the first processor; ('', -1, set()) where the file is not there (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return "", -1, set()
    family = fields.get("cpu family", "")
    return fields.get("vendor_id", ""), int(family) if family.isdigit() else -1, set(fields.get("flags", "").split())


def numpy_sorts_without_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """On AMD's family 19h with AVX-512 (Zen 4) switch numpy's AVX-512 kernels off for this process, unless
    NPY_DISABLE_CPU_FEATURES is set; True where it did. Zen 4 microcodes the compressing store numpy's AVX-512
    sort is built on: a 20k-score row sorts in 17 ns per score that way against 4.3 ns with numpy's AVX2 sort,
    and the retrieval lists sort every query's row (docs/benchmarks.md). numpy reads the switch when it loads:
    call this before anything imports it."""
    vendor, family, flags = cpu_identity(cpuinfo)
    if vendor != "AuthenticAMD" or family != 0x19 or "avx512f" not in flags or "NPY_DISABLE_CPU_FEATURES" in os.environ:
        return False
    os.environ["NPY_DISABLE_CPU_FEATURES"] = NUMPY_AVX512
    return True
