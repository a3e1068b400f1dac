"""test.py on your own files: a voice against faces, a face against voices, or a list of your own pairs.

    python test.py --cfg CFG --voice clip.wav --faces a.jpg b.jpg [--output out.json] [--plot out.png]
    python test.py --cfg CFG --face x.jpg --voices v1.wav v2.flac [--output out.json] [--plot out.png]
    python test.py --cfg CFG --pairs FILE [--root DIR] --output out.csv

A thin layer over evaluation/matcher.py: it writes only what --output and --plot name (nothing into
the run folder, no features cache). Files that cannot be used are named with the reason; the
others are still scored.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Callable, TextIO

import numpy as np
from easydict import EasyDict

from data.lists import ListError
from data.user_files import modality_of
from evaluation.matcher import Note, Skipped, UnusableFile, VoiceFaceMatcher, ranks_within
from evaluation.metrics import normalise
from utils.files import WriteError, atomic_write

OTHER = {"voice": "face", "face": "voice"}


def make_output_folders(args: argparse.Namespace) -> None:
    """Before any work: the folders of --output and --plot (test.py has checked that neither names an input)."""
    for flag, path in (("--output", args.output), ("--plot", args.plot)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot make the folder of {flag} {path}: {e.strerror or e}") from None


def run(args: argparse.Namespace, cfg: EasyDict, checkpoint: str) -> dict:
    """Score the files the arguments name with the checkpoint's encoders; returns what --output holds."""
    make_output_folders(args)
    sys.stdout.reconfigure(errors="backslashreplace")  # a file name that is not UTF-8 is printed, not a traceback
    matcher = VoiceFaceMatcher.load(cfg, checkpoint, args.opts, detect_faces=args.detect_face,
                                    model_from_config=args.model_from_config)
    print(f"checkpoint: {checkpoint}")
    if args.pairs:
        return score_pairs(matcher, args.pairs, args.root, args.output)
    modality, query, candidates = ("voice", args.voice, args.faces) if args.voice else ("face", args.face, args.voices)
    return rank_candidates(matcher, modality, query, candidates, args.output, args.plot)


def _report_skipped(skipped: list[Skipped]) -> None:
    for entry in skipped:
        print(f"skipped {entry.path}: {entry.reason}")


def _report_notes(notes: list[Note], most: int = 20) -> None:
    for entry in notes[:most]:
        print(f"note {entry.path}: {entry.note}")
    if len(notes) > most:
        print(f"... and {len(notes) - most} more notes")


def _warn(matcher: VoiceFaceMatcher, names: list[str]) -> str | None:
    """Print, once and before any score, what the checkpoint's training means for these files; None if nothing."""
    warning = matcher.training_note(names)
    if warning:
        print(f"warning: {warning}")
    return warning or None


def rank_candidates(matcher: VoiceFaceMatcher, modality: str, query: str, candidates: list[str],
                    output: str | None = None, plot: str | None = None) -> dict:
    """Rank `candidates` (files of the other modality) by their cosine with `query`; print, write, draw."""
    notes: list[Note] = []
    (query_item,) = matcher.read([query], modality, notes=notes)  # an unusable query stops here, naming the file
    skipped: list[Skipped] = []
    items = list(matcher.read(candidates, OTHER[modality], skipped, notes))
    _report_skipped(skipped)
    if not items:
        raise UnusableFile(f"none of the {len(candidates)} {OTHER[modality]} files can be used")
    _report_notes(notes)
    warning = _warn(matcher, [query] + [path for path, _ in items])
    _, query_embedding = matcher.embed_arrays([query_item], modality)
    paths, embeddings = matcher.embed_arrays(items, OTHER[modality])
    scores = matcher.match(query_embedding[0], embeddings).numpy()
    ranks = ranks_within(np.zeros(len(scores), np.int64), scores)
    order = np.argsort(ranks)
    result = {"query": query,
              "candidates": [{"path": paths[i], "score": float(scores[i]), "rank": int(ranks[i])} for i in order],
              "match": paths[order[0]],
              "skipped": [asdict(entry) for entry in skipped],
              "notes": [asdict(entry) for entry in notes],
              "warning": warning}
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
        from evaluation.plots import match_figure

        by_path = dict(items)
        ranked = [(printable(e["path"]), by_path[e["path"]], e["score"]) for e in result["candidates"]]
        written.append(match_figure((printable(query), query_item[1]), modality, ranked, plot,
                                    matcher.cfg.dataset.sample_rate))
    if written:
        print("written: " + ", ".join(written))
    return result


PROGRESS_LINES = 200_000  # a pairs file this long says how far its reading has got


@dataclass
class Pairs:
    """A pairs file's non-empty lines as flat arrays: `codes` indexes `names` (each distinct path once), line
    after line; a line's first code is its query."""
    numbers: np.ndarray  # file line number of each line
    counts: np.ndarray  # paths on each line
    codes: np.ndarray
    names: list[str]


def read_pairs(path: str) -> Pairs:
    """The non-empty lines of a pairs file (UTF-8, a BOM and CRLF allowed); each needs a query and a candidate.

    Read line by line, each distinct path kept once, so a file of millions of lines takes memory for its
    numbers, not its text.
    """
    numbers, counts, codes, code_of = [], [], [], {}
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise ListError(f"{path}, line {number}: not UTF-8 text (byte {e.start + 1} of the line)") from None
                tokens = line.split()
                if not tokens:
                    continue
                if len(tokens) < 2:
                    raise ListError(f"{path}, line {number}: expected a query and at least one candidate, "
                                    f"found only '{tokens[0]}'")
                numbers.append(number)
                counts.append(len(tokens))
                codes.extend(code_of.setdefault(token, len(code_of)) for token in tokens)
                if number % PROGRESS_LINES == 0:
                    print(f"{path}: {number} lines read", flush=True)
    except OSError as e:
        raise ListError(f"cannot read the pairs file {path}: {e.strerror or e}") from None
    if not numbers:
        raise ListError(f"{path}: the pairs file is empty")
    return Pairs(np.array(numbers, np.int64), np.array(counts, np.int64), np.array(codes, np.int64), list(code_of))


def locate(names: list[str], first_lines: np.ndarray, root: str | None) -> tuple[list[str], list[Skipped]]:
    """Where each path of a pairs file is, and the skipped ones: with --root, a path that leaves it (by `..`, an
    absolute path or a symbolic link) is refused, naming the line it first appears on."""
    if not root:
        return names, []
    inside = os.path.realpath(root)
    located = [os.path.join(root, name) for name in names]
    skipped = [Skipped(path, f"outside --root {root} (line {line})") for path, line in zip(located, first_lines)
               if os.path.commonpath([inside, os.path.realpath(path)]) != inside]
    return located, skipped


def score_pairs(matcher: VoiceFaceMatcher, pairs: str, root: str | None, output: str) -> dict:
    """Score every line of a pairs file (a query, then its candidates) into the CSV `output`.

    Each file is embedded once, as a voice or a face by its name's suffix; a pair with an unusable
    file is left out, and the candidates of a line are ranked among those left (1 = best).
    """
    read = read_pairs(pairs)
    counts, code_of_token = read.counts, read.codes
    line_of_token = np.repeat(np.arange(len(counts)), counts)
    first_token = np.unique(code_of_token, return_index=True)[1]  # names are numbered in order of appearance
    located, skipped = locate(read.names, read.numbers[line_of_token[first_token]], root)
    refused = {entry.path for entry in skipped}
    modalities = [modality_of(name) for name in read.names]
    skipped += [Skipped(path, "neither an audio nor an image file, by its name") for path, modality
                in zip(located, modalities) if modality is None]
    notes: list[Note] = []
    row_of: dict[str, int] = {}
    embeddings = []
    for modality in ("voice", "face"):
        files = list(dict.fromkeys(path for path, m in zip(located, modalities)  # two names of one file: once
                                   if m == modality and path not in refused))
        if len(files) > 100:
            print(f"embedding {len(files)} {modality} files", flush=True)
        done, block = matcher.embed_arrays(matcher.read(files, modality, skipped, notes), modality)
        row_of.update(zip(done, range(len(row_of), len(row_of) + len(done))))
        embeddings.append(block.numpy())
    _report_skipped(skipped)
    _report_notes(notes)
    warning = _warn(matcher, list(row_of))
    unit = normalise(np.concatenate(embeddings))
    token_rows = np.array([row_of.get(path, -1) for path in located], np.int64)[code_of_token]

    # One entry per (line, candidate), scored and ranked as flat arrays.
    first = np.cumsum(counts) - counts  # the query's position in the tokens, per line
    is_query = np.zeros(len(code_of_token), bool)
    is_query[first] = True
    candidate = np.flatnonzero(~is_query)
    line = np.repeat(np.arange(len(counts)), counts - 1)
    query = first[line]
    keep = (token_rows[query] >= 0) & (token_rows[candidate] >= 0)
    line, query, candidate = line[keep], query[keep], candidate[keep]
    scores = np.einsum("nd,nd->n", unit[token_rows[query]], unit[token_rows[candidate]])
    ranks = ranks_within(line, scores)
    names = np.array(read.names, dtype=object)
    result = {"line": read.numbers[line], "query": names[code_of_token[query]],
              "candidate": names[code_of_token[candidate]], "score": scores, "rank": ranks, "skipped": skipped,
              "notes": notes, "warning": warning}

    def write_csv(f: TextIO) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["line", "query", "candidate", "score", "rank"])
        writer.writerows(zip(result["line"].tolist(), result["query"].tolist(), result["candidate"].tolist(),
                             [f"{s:.8f}" for s in scores.tolist()], ranks.tolist()))

    _write(output, write_csv)
    dropped = f"; {len(skipped)} files skipped" if skipped else ""
    print(f"{pairs}: {len(scores)} pairs on {len(np.unique(line))} of its {len(counts)} lines scored{dropped}")
    print(f"written: {output}")
    return result


def printable(name: str) -> str:
    """A file name as text: the bytes of a name that is not UTF-8 (surrogate escapes) shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write(path: str, write: Callable[[TextIO], object]) -> None:
    with atomic_write(path, newline="") as f:
        write(f)
