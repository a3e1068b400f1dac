"""test.py on your own files: a voice against faces, a face against voices, or a list of your own pairs.

    python test.py --cfg CFG --voice clip.wav --faces a.jpg b.jpg [--output out.json] [--plot out.png]
    python test.py --cfg CFG --face x.jpg --voices v1.wav v2.flac [--output out.json] [--plot out.png]
    python test.py --cfg CFG --pairs FILE [--root DIR] --output out.csv

A thin layer over utils/inference.py: it writes only what --output and --plot name (nothing into
the run folder, no features cache). Files that cannot be used are named with the reason; the
others are still scored.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable, TextIO

import numpy as np
from easydict import EasyDict

from utils.files import atomic_write
from utils.metrics import ListError, normalise

if TYPE_CHECKING:
    from utils.inference import Skipped, VoiceFaceMatcher

OTHER = {"voice": "face", "face": "voice"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """test.py's flags for own files (the module docstring shows them in use)."""
    group = parser.add_argument_group("your own files (instead of the test lists)")
    group.add_argument("--voice", metavar="AUDIO", help="a recording to match against --faces")
    group.add_argument("--faces", nargs="+", metavar="IMAGE", help="candidate photos for --voice")
    group.add_argument("--face", metavar="IMAGE", help="a photo to match against --voices")
    group.add_argument("--voices", nargs="+", metavar="AUDIO", help="candidate recordings for --face")
    group.add_argument("--pairs", metavar="FILE", help="lines `query candidate...` (the test-list format) to score")
    group.add_argument("--root", metavar="DIR", help="folder the relative paths of --pairs start from")
    group.add_argument("--plot", metavar="PNG", help="draw the query and its candidates with their scores")
    group.add_argument("--detect-face", action="store_true",
                       help="crop the largest frontal face of each photo first (a photo without one is skipped)")


def requested(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """True when the arguments ask for own files; inconsistent combinations stop with a usage error."""
    modes = [flag for flag, value in (("--voice", args.voice), ("--face", args.face), ("--pairs", args.pairs))
             if value]
    if len(modes) > 1:
        parser.error(f"give one of --voice, --face and --pairs, not {' and '.join(modes)}")
    needs = {"--faces": (args.faces, "--voice"), "--voices": (args.voices, "--face"), "--root": (args.root, "--pairs"),
             "--output": (args.output, None), "--plot": (args.plot, None), "--detect-face": (args.detect_face, None)}
    for flag, (value, mode) in needs.items():
        if value and (not modes or (mode and modes[0] != mode)):
            parser.error(f"{flag} goes with {mode or 'one of --voice, --face and --pairs'}")
    if args.voice and not args.faces:
        parser.error("--voice needs candidate photos: --faces a.jpg b.jpg ...")
    if args.face and not args.voices:
        parser.error("--face needs candidate recordings: --voices v1.wav v2.flac ...")
    if args.pairs and not args.output:
        parser.error("--pairs needs --output out.csv")
    if args.plot and args.pairs:
        parser.error("--plot draws one query (--voice or --face), not a --pairs file")
    if modes and args.features:
        parser.error("--features evaluates the test lists; it does not go with your own files")
    return bool(modes)


def run(args: argparse.Namespace, cfg: EasyDict, checkpoint: str) -> dict:
    """Score the files the arguments name with the checkpoint's encoders; returns what --output holds."""
    from utils.inference import VoiceFaceMatcher  # torch and the encoders: only when files are scored

    matcher = VoiceFaceMatcher.load(cfg, checkpoint, detect_faces=args.detect_face)
    print(f"checkpoint: {checkpoint}")
    if args.pairs:
        return score_pairs(matcher, args.pairs, args.root, args.output)
    modality, query, candidates = ("voice", args.voice, args.faces) if args.voice else ("face", args.face, args.voices)
    return rank_candidates(matcher, modality, query, candidates, args.output, args.plot)


def _report_skipped(skipped: list[Skipped]) -> None:
    for entry in skipped:
        print(f"skipped {entry.path}: {entry.reason}")


def rank_candidates(matcher: VoiceFaceMatcher, modality: str, query: str, candidates: list[str],
                    output: str | None = None, plot: str | None = None) -> dict:
    """Rank `candidates` (files of the other modality) by their cosine with `query`; print, write, draw."""
    from utils.inference import UnusableFile, ranks_within

    (query_item,) = matcher.read([query], modality)  # an unusable query stops here, naming the file
    skipped: list[Skipped] = []
    items = list(matcher.read(candidates, OTHER[modality], skipped))
    _report_skipped(skipped)
    if not items:
        raise UnusableFile(f"none of the {len(candidates)} {OTHER[modality]} files can be used")
    _, query_embedding = matcher.embed_arrays([query_item], modality)
    paths, embeddings = matcher.embed_arrays(items, OTHER[modality])
    scores = matcher.match(query_embedding[0], embeddings).numpy()
    ranks = ranks_within(np.zeros(len(scores), np.int64), scores)
    order = np.argsort(ranks)
    result = {"query": query,
              "candidates": [{"path": paths[i], "score": float(scores[i]), "rank": int(ranks[i])} for i in order],
              "match": paths[order[0]],
              "skipped": [asdict(entry) for entry in skipped]}
    print(f"{modality} {query} against {len(paths)} {OTHER[modality]}s, by cosine score:")
    print(" rank    score  " + OTHER[modality])
    for entry in result["candidates"]:
        mark = "   <- match" if entry["rank"] == 1 else ""
        print(f"{entry['rank']:5d}  {entry['score']:7.4f}  {entry['path']}{mark}")
    print(f"match: {result['match']}")
    written = []
    if output:
        _write(output, lambda f: json.dump(result, f, indent=1))
        written.append(output)
    if plot:
        from utils.plots import match_figure

        by_path = dict(items)
        ranked = [(e["path"], by_path[e["path"]], e["score"]) for e in result["candidates"]]
        written.append(match_figure((query, query_item[1]), modality, ranked, plot, matcher.cfg.dataset.sample_rate))
    if written:
        print("written: " + ", ".join(written))
    return result


def read_pairs(path: str) -> tuple[list[int], list[list[str]]]:
    """(line numbers, paths) of the non-empty lines of a pairs file; each needs a query and a candidate."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ListError(f"cannot read the pairs file {path}: {e.strerror or e}") from None
    numbered = [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]
    short = next(((number, tokens) for number, tokens in numbered if len(tokens) < 2), None)
    if short:
        raise ListError(f"{path}, line {short[0]}: expected a query and at least one candidate, "
                        f"found only '{short[1][0]}'")
    if not numbered:
        raise ListError(f"{path}: the pairs file is empty")
    return [number for number, _ in numbered], [tokens for _, tokens in numbered]


def score_pairs(matcher: VoiceFaceMatcher, pairs: str, root: str | None, output: str) -> dict:
    """Score every line of a pairs file (a query, then its candidates) into the CSV `output`.

    Each file is embedded once, as a voice or a face by its name's suffix; a pair with an unusable
    file is left out, and the candidates of a line are ranked among those left (1 = best).
    """
    from data.user_files import modality_of
    from utils.inference import Skipped, ranks_within

    numbers, lines = read_pairs(pairs)
    counts = np.array([len(tokens) for tokens in lines])
    tokens = np.array([name for line in lines for name in line])  # every path, line after line
    names, name_of_token = np.unique(tokens, return_inverse=True)
    located = [os.path.join(root, name) if root else str(name) for name in names]
    modalities = [modality_of(name) for name in names]
    skipped = [Skipped(path, "neither an audio nor an image file, by its name") for path, modality
               in zip(located, modalities) if modality is None]
    row_of: dict[str, int] = {}
    embeddings = []
    for modality in ("voice", "face"):
        files = dict.fromkeys(path for path, m in zip(located, modalities) if m == modality)  # once per file
        done, block = matcher.embed_arrays(matcher.read(files, modality, skipped), modality)
        row_of.update(zip(done, range(len(row_of), len(row_of) + len(done))))
        embeddings.append(block.numpy())
    _report_skipped(skipped)
    unit = normalise(np.concatenate(embeddings))
    token_rows = np.array([row_of.get(path, -1) for path in located], np.int64)[name_of_token]

    # One entry per (line, candidate), scored and ranked as flat arrays.
    first = np.cumsum(counts) - counts  # the query's position in `tokens`, per line
    is_query = np.zeros(len(tokens), bool)
    is_query[first] = True
    candidate = np.flatnonzero(~is_query)
    line = np.repeat(np.arange(len(lines)), counts - 1)
    query = first[line]
    keep = (token_rows[query] >= 0) & (token_rows[candidate] >= 0)
    line, query, candidate = line[keep], query[keep], candidate[keep]
    scores = np.einsum("nd,nd->n", unit[token_rows[query]], unit[token_rows[candidate]])
    ranks = ranks_within(line, scores)
    result = {"line": np.asarray(numbers)[line], "query": tokens[query], "candidate": tokens[candidate],
              "score": scores, "rank": ranks, "skipped": skipped}

    def write_csv(f: TextIO) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["line", "query", "candidate", "score", "rank"])
        writer.writerows(zip(result["line"].tolist(), result["query"].tolist(), result["candidate"].tolist(),
                             [f"{s:.8f}" for s in scores.tolist()], ranks.tolist()))

    _write(output, write_csv)
    dropped = f"; {len(skipped)} files skipped" if skipped else ""
    print(f"{pairs}: {len(scores)} pairs on {len(np.unique(line))} of its {len(lines)} lines scored{dropped}")
    print(f"written: {output}")
    return result


def _write(path: str, write: Callable[[TextIO], object]) -> None:
    with atomic_write(path, newline="") as f:
        write(f)
