"""Evaluate a trained model on the test lists: the paper's results table.

    python test.py --cfg CFG [--features FILE] [--opts key=value ...]
    python test.py --cfg CFG --compare RUN [RUN ...] [--output cmp.json]

Without --features: embed every file the split's lists name with the checkpoint
`testing.checkpoint` (ours or the released `checkpoint_best.pth.tar`), caching
the embeddings at `testing.extracted_features_path` (compact `.npz` by default;
a path ending in `.pt` writes the released format), then evaluate. With
--features: evaluate a features file in either format, no model needed.

    python test.py --cfg CFG --voice clip.wav --faces a.jpg b.jpg [--output out.json] [--plot out.png]
    python test.py --cfg CFG --face x.jpg --voices v1.wav v2.flac [--output out.json] [--plot out.png]
    python test.py --cfg CFG --pairs FILE [--root DIR] --output out.csv

With --voice, --face or --pairs: score your own files with that checkpoint instead (evaluation/own_files.py).

Writes `testing.result_path` (one `list value` line per list, in %), a JSON
beside it with every value, its 95% interval and the provenance of the
embeddings, and PNG plots (ROC curves, score histograms).

    python test.py --inspect CHECKPOINT [--json] [--output FILE.json]

With --inspect: print a checkpoint's method state (ours or the released one): its layout, the iteration it
was saved at, the IE counters and weights and whether the weights are normalised, and for ours the training
switches it was trained with (evaluation/inspect_checkpoint.py). No config needed.

With --compare: evaluate each RUN (a run folder or a folder of seed<k> runs) on
the lists of CFG where not done yet and compare them against the first RUN
(evaluation/compare.py).
"""
from __future__ import annotations

import argparse
import sys

from config import OPTS_HELP
from utils.cpu import numpy_sorts_without_avx512

EXAMPLES = """examples:
  python test.py --cfg config/synthetic.yaml                  # the demo run's checkpoint_best
  python test.py --cfg config/authors_checkpoint.yaml         # the authors' released checkpoint
  python test.py --cfg config/cfg.yaml --opts testing.checkpoint=/path/to/checkpoint_best.pth.tar
  python test.py --cfg config/cfg.yaml --features features_test.pt
  python test.py --cfg config/synthetic.yaml --voice clip.wav --faces a.jpg b.jpg --plot match.png
  python test.py --cfg config/synthetic.yaml --compare experiments/synthetic_aasm experiments/synthetic --output cmp.json
  python test.py --inspect experiments/synthetic/checkpoint_best.pth.tar   # layout, iteration, IE weights

writes, in <output_dir>/<exp_name>/: features_<split>.npz (the embeddings cache), results_<split>.txt,
results_<split>.json (values, 95% intervals, list checksums, provenance), results_<split>_roc.png and
results_<split>_scores.png; it prints the results table in the README's format. --voice, --face and
--pairs write only what --output and --plot name."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", help="YAML config, e.g. config/cfg.yaml or config/synthetic.yaml (required "
                                      "but with --inspect)")
    parser.add_argument("--features", help="evaluate this features file (released .pt or compact .npz) instead of a model")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help=OPTS_HELP)
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="compare runs (run folders, or folders of seed<k> runs), the first the baseline")
    parser.add_argument("--output", metavar="FILE",
                        help="--compare: JSON (a plot beside it); --voice/--face: JSON; --pairs: CSV; --inspect: JSON")
    parser.add_argument("--inspect", metavar="CHECKPOINT",
                        help="print the method state a checkpoint holds (layout, iteration, IE weights, switches)")
    parser.add_argument("--json", action="store_true", help="--inspect: print the numbers as JSON")
    parser.add_argument("--model-from-config", action="store_true",
                        help="build the encoders from the config's models.* (and dataset.sample_rate / image_size), "
                             "not from the settings the checkpoint records")
    add_own_file_arguments(parser)
    return parser


def add_own_file_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags for own files (the module docstring shows them in use; evaluation/own_files.py scores them)."""
    group = parser.add_argument_group("your own files (instead of the test lists)")
    group.add_argument("--voice", metavar="AUDIO", help="a recording to match against --faces")
    group.add_argument("--faces", nargs="+", metavar="IMAGE", help="candidate photos for --voice")
    group.add_argument("--face", metavar="IMAGE", help="a photo to match against --voices")
    group.add_argument("--voices", nargs="+", metavar="AUDIO", help="candidate recordings for --face")
    group.add_argument("--pairs", metavar="FILE", help="lines `query candidate...` (the test-list format) to score")
    group.add_argument("--root", metavar="DIR", help="folder the relative paths of --pairs start from")
    group.add_argument("--plot", metavar="PNG", help="draw the query and its candidates with their scores")
    group.add_argument("--detect-face", action="store_true",
                       help="crop the most confident frontal face of each photo first (dlib's HOG detector; "
                            "a photo without one is skipped)")


def own_files_requested(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
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


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --inspect stands alone, every other use needs --cfg."""
    args = parser.parse_args(argv)
    if args.inspect:
        others = [flag for flag, value in (("--cfg", args.cfg), ("--compare", args.compare),
                                           ("--features", args.features), ("--opts", args.opts), ("--voice", args.voice),
                                           ("--face", args.face), ("--pairs", args.pairs)) if value]
        if others:
            parser.error(f"--inspect reads one checkpoint; it does not go with {', '.join(others)}")
    elif not args.cfg:
        parser.error("the following arguments are required: --cfg (or --inspect CHECKPOINT)")
    elif args.json:
        parser.error("--json goes with --inspect")
    elif args.features and args.compare:
        parser.error("--features evaluates one features file; --compare evaluates runs' checkpoints: give one")
    return args


if __name__ == "__main__":
    parse_arguments(build_parser())  # --help and usage errors answer before the imports below (seconds of torch)
    numpy_sorts_without_avx512()  # on Zen 4 only; numpy reads the switch when the imports below load it

# The evaluation's imports, after the command line is known to be valid (flake8: E402 by design). Torch and the
# encoders are imported where a command embeds files: scoring a compact features file needs neither.
import os
from typing import TYPE_CHECKING

from config import load_config, require
from data.lists import ListError, evaluation_lists, list_path
from data.provenance import changed_lists
from evaluation.features import read_features
from evaluation.protocol import (FIGURE_SUFFIXES, OUTPUT_SUFFIXES, Result, evaluate, figure_paths, format_table,
                                 write_outputs)
from utils.run_folder import run_dir
from utils.errors import UserError

if TYPE_CHECKING:
    from evaluation.inspect_checkpoint import MethodState


def result_path_of(cfg) -> str:
    return cfg.testing.result_path or os.path.join(run_dir(cfg), f"results_{cfg.testing.split}.txt")


def check_outputs(args: argparse.Namespace, cfg) -> None:
    """Before any work: no output is one of the inputs (it would be overwritten), and each output's folder exists
    or can be made."""
    named = [args.cfg, args.features, args.voice, args.face, args.pairs, *(args.faces or []), *(args.voices or []),
             cfg.testing.checkpoint]
    lists = [list_path(cfg.dataset.list_dir, t.name)
             for t in evaluation_lists(cfg.testing.split, cfg.dataset.match_n, cfg.dataset.list_dir)]
    inputs = {os.path.realpath(p): p for p in named + lists if p}
    stem = os.path.splitext(result_path_of(cfg))[0]
    results = [("testing.result_path", stem + suffix) for suffix in OUTPUT_SUFFIXES + FIGURE_SUFFIXES]
    outputs = [("--output", args.output), ("--plot", args.plot), *([] if args.compare else results)]
    for option, path in outputs:
        if not path:
            continue
        if os.path.realpath(path) in inputs:
            raise UserError(f"{option} {path}: is an input of this run ({inputs[os.path.realpath(path)]}) "
                            "and would be overwritten; name another file")
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"{option} {path}: cannot be written: {folder} is not a writable folder")


def main(argv: list[str] | None = None) -> list[Result] | dict | MethodState:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.inspect:
        from evaluation import inspect_checkpoint

        return inspect_checkpoint.run(args.inspect, args.output, args.json)
    cfg = load_config(args.cfg, args.opts)
    if not args.features:
        from evaluation import own_files
        from evaluation.list_features import checkpoint_of, model_features
        from models.settings import explicit_settings
        from utils.distributed import check_device

        explicit = explicit_settings(args.opts, args.model_from_config)  # model settings to take from the config
        check_device(cfg.device)
    check_outputs(args, cfg)
    if args.compare:
        from evaluation.compare import compare

        return compare(cfg, args.compare, args.output,
                       lambda c, lists: model_features(c, lists, checkpoint_of(c), explicit), args.cfg)
    if own_files_requested(args, parser):
        own_files.run(args, cfg, checkpoint_of(cfg))
        return []
    require(cfg, "dataset.list_dir")
    split = cfg.testing.split
    checkpoint = None if args.features else checkpoint_of(cfg)
    lists = evaluation_lists(split, cfg.dataset.match_n, cfg.dataset.list_dir)
    paths = [list_path(cfg.dataset.list_dir, t.name) for t in lists]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ListError(f"list file not found: {missing[0]} ({len(missing)} of the {len(lists)} test lists "
                                f"missing); generate them with `python -m data.prepare --cfg {args.cfg}` or unzip "
                                "the authors' gen_list.zip into the folder of config key dataset.list_dir")
    for path in changed_lists(cfg.dataset.list_dir, paths):
        print(f"warning: {path} differs from the checksum data.prepare recorded in "
              f"{os.path.join(cfg.dataset.list_dir, 'lists.sha256')} (edited since?); run data.prepare to check it "
              "against the stores and record it", file=sys.stderr)
    if args.features:
        features = read_features(args.features)
        features.source = {"features_file": os.path.abspath(args.features), **features.source}
    else:
        features = model_features(cfg, lists, checkpoint, explicit)
    result_path = result_path_of(cfg)
    figures = os.path.splitext(result_path)[0]
    results = evaluate(features, cfg.dataset.list_dir, lists, cfg.testing.bootstrap, cfg.testing.ci_seed, figures)
    table = format_table(results, f"{cfg.exp_name}, {split} split")
    print(table)
    written = write_outputs(results, table, result_path, features.source, cfg) + figure_paths(results, figures)
    print("written: " + ", ".join(written))
    return results


if __name__ == "__main__":
    try:
        main()
    except (UserError, FileNotFoundError) as error:
        sys.exit(f"test.py: {error}")
