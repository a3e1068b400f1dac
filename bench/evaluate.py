"""Evaluation at the real test-split size: vectorised metrics against a per-line / per-query loop.

    python bench/evaluate.py [--work DIR] [--loop-lines 3000] [--loop-queries 200]

Builds the released test split's shape (189 identities, 21,850 clips, 20,076
images, 128-d random embeddings), writes the ten lists with the project's
generator (data/lists.py) and a features file in the released format, then:
1. times each list's metric vectorised (evaluation.metrics) and as a plain loop over
   lines / queries (the release's way), the loop on the first lines / queries
   only and extrapolated, both on the same subset checked to agree;
2. runs the whole `python test.py --features` process (intervals and plots
   included) on the released format and on the compact cache (`.npz`, what
   test.py writes), and reports wall time, CPU time, peak memory and the
   ratio against the loop's ten lists (target: 30x, < 10 s on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.cpu import numpy_sorts_without_avx512  # noqa: E402

numpy_sorts_without_avx512()  # as test.py does, before numpy loads: the vectorised timings are test.py's

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from data.lists import list_names, list_path, list_specs, make_list, read_list, read_retrieval_list  # noqa: E402
from data.splits import Identity  # noqa: E402
from evaluation import metrics  # noqa: E402
from evaluation.features import save_features_file  # noqa: E402

IDENTITIES, CLIPS, IMAGES, DIM = 189, 21850, 20076, 128


def test_split_files(seed: int = 0, people: int = IDENTITIES, clips: int = CLIPS,
                     images: int = IMAGES) -> tuple[list[Identity], list[str], list[str]]:
    """The released test split's shape (or a smaller one): its identities and the keys of their clips and images."""
    rng = np.random.default_rng(seed)
    identities = [Identity(f"id{10117 + i}", f"Celebrity_{i:03d}_{'xy'[i % 2]}", "mf"[rng.integers(2)], "USA", "test")
                  for i in range(people)]

    def files(total: int, minimum: int) -> np.ndarray:
        minimum = min(minimum, total // people)
        return rng.multinomial(total - minimum * people, np.full(people, 1 / people)) + minimum

    voices = [f"{p.vox_id}/{'v%010d' % (n // 8)}/{n % 8 + 1:05d}.wav"
              for p, count in zip(identities, files(clips, 20)) for n in range(count)]
    faces = [f"{p.vgg_id}/{n + 1:08d}.jpg" for p, count in zip(identities, files(images, 20)) for n in range(count)]
    return identities, voices, faces


def write_lists(work: str, identities: list[Identity], voices: list[str], faces: list[str], seed: int = 0) -> str:
    """The ten test lists of these files under `work`/lists (the project's generator); returns the folder."""
    list_dir = os.path.join(work, "lists")
    os.makedirs(list_dir, exist_ok=True)
    for spec in list_specs("test"):
        with open(list_path(list_dir, spec.name), "w") as f:
            f.write(make_list(spec, identities, voices, faces, seed))
    return list_dir


def identity_of(keys: list[str], identities: list[Identity]) -> list[int]:
    """The index of each key's identity (its first path part, VoxCeleb or VGGFace name)."""
    owner = {**{p.vox_id: i for i, p in enumerate(identities)}, **{p.vgg_id: i for i, p in enumerate(identities)}}
    return [owner[k.split("/", 1)[0]] for k in keys]


def build(work: str, seed: int = 0) -> tuple[str, str, str]:
    """Lists and a random features file of the test split's size under `work`, in the released and the compact
    format; returns (list_dir, released features, compact features)."""
    identities, voices, faces = test_split_files(seed)
    list_dir = write_lists(work, identities, voices, faces, seed)
    keys = voices + faces
    ids = identity_of(keys, identities)
    embeddings = torch.randn(len(keys), DIM, generator=torch.Generator().manual_seed(seed))
    features = os.path.join(work, "features_test.pt")
    torch.save({"name2feat": dict(zip(keys, embeddings.unbind(0))), "name2id": dict(zip(keys, ids)),
                "name2gender": {k: identities[i].gender for k, i in zip(keys, ids)}}, features)
    compact = os.path.join(work, "features_test.npz")
    save_features_file(compact, keys, embeddings, ids, [identities[i].gender for i in ids], {})
    return list_dir, features, compact


# ---------------------------------------------------------------- the loop baseline
# Written the release's way: one cosine per list line, one ranked gallery walked per query.

def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def loop_matching(embeddings: torch.Tensor, lines: np.ndarray) -> float:
    correct = 0
    for line in lines.tolist():
        cosines = [_cosine(embeddings[line[0]], embeddings[c]) for c in line[1:]]
        correct += cosines[0] >= max(cosines[1:])
    return correct / len(lines)


def loop_verification(embeddings: torch.Tensor, ids: np.ndarray, lines: np.ndarray) -> float:
    scores, labels = [], []
    for query, candidate in lines.tolist():
        scores.append(_cosine(embeddings[query], embeddings[candidate]))
        labels.append(ids[query] == ids[candidate])
    return roc_auc_score(labels, scores)


def loop_retrieval(embeddings: torch.Tensor, ids: np.ndarray, queries: np.ndarray, gallery: np.ndarray) -> float:
    unit_gallery = torch.nn.functional.normalize(embeddings[gallery], dim=1)
    gallery_ids = ids[gallery].tolist()
    precisions = []
    for query in queries.tolist():
        ranked = torch.argsort(unit_gallery @ embeddings[query], descending=True).tolist()
        hits, total = 0, 0.0
        for rank, item in enumerate(ranked, start=1):
            if gallery_ids[item] == ids[query]:
                hits += 1
                total += hits / rank
        precisions.append(total / hits)
    return sum(precisions) / len(precisions)


# ---------------------------------------------------------------- timing

def vectorised(kind: str, embeddings, ids, rows):
    if kind == "retrieval":
        queries, gallery = rows
        return float(np.nanmean(metrics.average_precisions(embeddings[queries], embeddings[gallery],
                                                           ids[queries], ids[gallery])))
    scores = metrics.line_scores(metrics.normalise(embeddings), rows)
    if kind == "matching":
        return float(metrics.matching_correct(scores).mean())
    return metrics.roc_auc(scores[:, 0], ids[rows[:, 0]] == ids[rows[:, 1]])


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def compare(list_dir: str, features_path: str, loop_lines: int, loop_queries: int) -> tuple[float, float]:
    data = torch.load(features_path, weights_only=True)
    keys = list(data["name2feat"])
    name2row = dict(zip(keys, range(len(keys))))
    tensors = torch.stack(list(data["name2feat"].values()))
    embeddings = tensors.numpy()
    ids = np.array([data["name2id"][k] for k in keys])
    print(f"{'list':<22}{'size':>7}{'vectorised s':>14}{'loop s':>10}{'ratio':>8}  loop measured on")
    total_vectorised = total_loop = 0.0
    for name in list_names("test"):
        path = list_path(list_dir, name)
        kind = {"match": "matching", "verify": "verification", "reterival": "retrieval"}[name.split("_")[0]]
        if kind == "retrieval":
            rows = read_retrieval_list(path, name2row)
            size, subset_size = len(rows[0]), min(loop_queries, len(rows[0]))
            subset = (rows[0][:subset_size], rows[1])
            loop_value, loop_time = timed(loop_retrieval, tensors, ids, *subset)
        else:
            rows = read_list(path, name2row)
            size, subset_size = len(rows), min(loop_lines, len(rows))
            subset = rows[:subset_size]
            if kind == "matching":
                loop_value, loop_time = timed(loop_matching, tensors, subset)
            else:
                loop_value, loop_time = timed(loop_verification, tensors, ids, subset)
        check = vectorised(kind, embeddings, ids, subset)
        if abs(check - loop_value) > 1e-5:
            raise AssertionError(f"{name}: loop {loop_value} and vectorised {check} disagree on the same subset")
        _, fast = timed(vectorised, kind, embeddings, ids, rows)
        loop_time *= size / subset_size  # extrapolated linearly from the subset
        total_vectorised += fast
        total_loop += loop_time
        unit = "queries" if kind == "retrieval" else "lines"
        note = f"first {subset_size} {unit}, extrapolated" if subset_size < size else f"all {unit}"
        print(f"{name:<22}{size:>7}{fast:>14.3f}{loop_time:>10.1f}{loop_time / fast:>7.0f}x  {note}")
    print(f"{'all ten lists':<29}{total_vectorised:>14.2f}{total_loop:>10.1f}{total_loop / total_vectorised:>7.0f}x")
    return total_vectorised, total_loop


def whole_process(list_dir: str, features_path: str, work: str, show: bool) -> tuple[float, float, float]:
    """Wall s, CPU s and peak resident GiB of `python test.py --features` (the released config's testing keys)."""
    command = [sys.executable, os.path.join(ROOT, "test.py"), "--cfg", os.path.join(ROOT, "config", "cfg.yaml"),
               "--features", features_path, "--opts", f"dataset.list_dir={list_dir}", f"output_dir={work}"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output}")
    if show:
        print(output.rstrip())
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="folder for the lists and features (default: a temporary folder)")
    parser.add_argument("--loop-lines", type=int, default=3000, help="lines per list the loop baseline runs")
    parser.add_argument("--loop-queries", type=int, default=200, help="retrieval queries the loop baseline runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        start = time.perf_counter()
        list_dir, features, compact = build(work)
        print(f"test split: {IDENTITIES} identities, {CLIPS} clips, {IMAGES} images, {DIM}-d random embeddings; "
              f"lists and features written in {time.perf_counter() - start:.1f} s "
              f"({os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads)\n")
        _, release = compare(list_dir, features, args.loop_lines, args.loop_queries)
        print("\nwhole `test.py --features` process (imports, load, ten lists, 95% intervals, outputs, plots):")
        for label, path in (("compact .npz", compact), ("released .pt", features)):
            wall, cpu, peak = whole_process(list_dir, path, work, show=label == "compact .npz")
            print(f"{label}: wall {wall:.1f} s (CPU {cpu:.1f} s), peak memory {peak:.2f} GiB, {release / wall:.0f}x the "
                  f"loop's ten lists ({release:.0f} s) (target: 30x, < 10 s on 2 cores); "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
