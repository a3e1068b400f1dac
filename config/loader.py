"""One config loader: YAML file + `--opts key=value` overrides, validated against DEFAULTS.

Every key a config may hold is listed in DEFAULTS with its default value; the
type of that value is the key's type. A config file only has to name what it
changes, and may name a `base:` config (a path relative to the file) whose
values it overrides; bases may have bases of their own. Unknown keys and values of the wrong type are errors that name the key
(and the closest valid key for a misspelling).
"""
from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import re
from typing import IO, Any, Callable, Iterable

import yaml
from easydict import EasyDict

from utils.errors import ConfigError

log = logging.getLogger("config")

# Keys whose default is None take a value of this type (None stays allowed).
NULLABLE_TYPES: dict[str, type] = {
    "dataset.split_file": str,
    "dataset.store_image_size": int,
    "dataset.synthetic.root": str,
    "models.face.pretrained": str,
    "models.voice.pretrained": str,
    "testing.checkpoint": str,
    "testing.extracted_features_path": str,
    "testing.result_path": str,
    "training.resume": str,
    "training.bcr_regauge_margin": float,
}

DEFAULTS: dict[str, Any] = {
    "exp_name": "aasm",
    "output_dir": "experiments",  # a run writes to <output_dir>/<exp_name>/
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "dataset": {
        "audio_data_dir": "",
        "image_data_dir": "",
        "meta_file": "",
        "list_dir": "",
        "lmdb_dir": "",
        # VoxCeleb1 ID ranges (inclusive) of each split; ids outside every range are unused.
        "split_ranges": {
            "val": ["id10001", "id10116"],
            "test": ["id10117", "id10309"],
            "train": ["id10310", "id11251"],
        },
        "split_file": None,  # CSV `VoxCeleb1 ID,split` that replaces split_ranges
        "list_seed": 0,
        "match_n": [2],  # 1:N matching lists to write (2 = the standard 1:2 lists)
        "image_size": 112,
        "store_image_size": None,  # pre-resize faces in the LMDB store; None keeps the JPEG
        "sample_rate": 16000,
        "clip_seconds": 10.0,
        "num_workers": 4,
        # The embedded corpus: when `root` is set, data.prepare generates it there first.
        # off_archetype_fraction: the share of identities whose face is drawn apart from their voice's
        # attributes (docs/data.md); 0 writes the corpus as before.
        "synthetic": {"root": None, "identities": 300, "seed": 0, "off_archetype_fraction": 0.0},
    },
    "models": {
        "embedding_dim": 128,
        "face": {
            "units": [3, 8, 36, 3],  # IR-152; IR-50 [3, 4, 14, 3], IR-100 [3, 13, 30, 3]
            "widths": [64, 128, 256, 512],
            "se": False,
            "head_hidden": 256,
            "pretrained": None,  # face.evoLVe backbone checkpoint
        },
        "voice": {
            "layers": [3, 4, 6, 3],
            "filters": [16, 32, 64, 128],
            "n_mels": 40,
            "head_hidden": 128,
            "pretrained": None,  # voxceleb_trainer baseline_lite_ap.model
        },
    },
    "training": {
        "batch_size": 20,
        "max_iter": 27000,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0001,
        "lr_steps": [6888, 9888],
        "lr_gamma": 0.1,
        "crop_seconds": [2.5, 5.0],
        "temperature": 0.5,
        "bcr_anchor_margin": 0.15,  # m_u: BCR screens anchors with π_i above it
        "bcr_margin": 0.2,  # m_l
        "bcr_hinge": True,  # true: the hinge variant of BCR's raw score; false: the circle variant
        "bcr_start_iter": 6888,  # the total loss includes λ·BCR from this iteration on
        "bcr_weight": 10.0,  # λ
        "ie_start_iter": 6440,  # IE refreshes its weights from this iteration on ...
        "ie_refresh_iter": 920,  # ... at every multiple of this
        "ie_enabled": True,  # false: BCR averaged over all rows, no IE weights
        "bcr_enabled": True,  # false: AaSM alone (no BCR term, so IE has nothing to weight)
        # The release's open readings (docs/method.md#open-readings); config/presets/ holds the release's and
        # the predecessor's choices. full | none (the release: BCR and IE only in the logged loss) |
        # no_candidate_cosines (C_ij = cos(q_i, q_j) held constant)
        "bcr_gradient": "full",
        "bcr_regauge_margin": 0.15,  # g of re-gauging, the release's literal; null: tied to bcr_anchor_margin
        "ie_shift": 1.0,  # the density's mean is mean(ρ) − ie_shift·σ
        "ie_normalization": "none",  # none (the release) | mean (mean 1 over identities, the predecessor) | sum
        "ie_application": "row",  # row: w_{y_i} weighs row i | batch: the release's (B,)×(B, 1) broadcast
        # coupled (the release: non-zero rows with IE, all rows without) | nonzero | all
        "bcr_row_average": "coupled",
        # How the loss is computed, with the same values and gradients: reference (losses/reference.py,
        # plain autograd), fused (losses/fused.py, a written-out gradient), auto (fused from batch 64).
        "loss_impl": "auto",
        "objective": "aasm",  # aasm: the method; infonce: symmetric InfoNCE on the same pairs, no BCR/IE
        "infonce_temperature": 0.1,
        "val_start": 6888,
        "val_iter": 6888,
        "save_iter": 6888,
        "keep_last": 3,
        # 0: stop at max_iter. N > 0: the release's rule, go on past max_iter until
        # the last N validation accuracies are non-increasing.
        "plateau_patience": 0,
        # off | bf16 | fp16: the encoders under autocast; fp16 on CUDA only, bf16 also on CPUs with native bf16
        "amp": "off",
        "channels_last": False,
        # torch.compile for the face encoder's training forward (models/pair_encoder.py): 1.14x per CPU demo
        # iteration (docs/benchmarks.md); off by default, as no GPU has run it yet
        "compile": False,
        "log_iter": 20,
        # Every log_iter: screened anchors, loose pairs, BCR's share of loss and gradient, IE weights
        # (tensorboard `diagnostics/`, summary at the end of train.log); see losses/diagnostics.py.
        "diagnostics": False,
        "resume": None,  # checkpoint path, or "auto" for the newest in the run folder
        "deterministic": False,
        # torchrun: how long a process waits in a collective for the others (rank 0 validating, saving)
        "timeout_minutes": 30.0,
    },
    "testing": {
        "split": "test",
        "checkpoint": None,  # default: <output_dir>/<exp_name>/checkpoint_best.pth.tar
        "extracted_features_path": None,  # default: <run>/features_<split>.npz (a .pt path: the released format)
        "result_path": None,  # default: <run>/results_<split>.txt
        "batch_size": 32,
        "bootstrap": 1000,
        "ci_seed": 0,
    },
}

# Former names of config keys: a config, --opts or a checkpoint's saved config that uses one still loads,
# with a warning that names the new key.
RENAMED_KEYS: dict[str, str] = {
    "training.temp": "training.temperature",
    "training.infonce_temp": "training.infonce_temperature",
    "training.m_u": "training.bcr_anchor_margin",
    "training.m_l": "training.bcr_margin",
    "training.H": "training.bcr_hinge",
    "training.regauge_iter": "training.bcr_start_iter",
    "training.regauge_weight": "training.bcr_weight",
    "training.warm_up": "training.ie_start_iter",
    "training.weight_update_iter": "training.ie_refresh_iter",
    "training.weighted_enabled": "training.ie_enabled",
    "training.bcr_detach": "training.bcr_gradient",
}
# Values of a renamed key that change on the way: {old key: {old value: new value}}.
RENAMED_VALUES: dict[str, dict] = {"training.bcr_detach": {True: "none", False: "full"}}

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
SEED_LIMIT = 2**32  # numpy's legacy seeds (and the loaders' worker seeds) are 32-bit
# The voice encoder's analysis window (n_fft of models/voice.py): a clip or crop shorter than it cannot be embedded.
VOICE_WINDOW_SAMPLES = 512
CONFIG_FOLDER = os.path.dirname(os.path.abspath(__file__))  # the shipped configs; a base may not leave it
MAX_BASE_DEPTH = 32

CHOICES: dict[str, tuple] = {
    "training.amp": ("off", "bf16", "fp16"),
    "training.loss_impl": ("auto", "fused", "reference"),
    "training.objective": ("aasm", "infonce"),
    "training.bcr_gradient": ("full", "none", "no_candidate_cosines"),
    "training.ie_normalization": ("none", "mean", "sum"),
    "training.ie_application": ("row", "batch"),
    "training.bcr_row_average": ("coupled", "nonzero", "all"),
    "testing.split": ("val", "test"),
}



def _numbers(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _at_least(low: int | float, why: str = "") -> tuple[Callable[[Any], bool], str]:
    """The rule 'every number of the value is >= low' (a list's bound holds for each element)."""
    return (lambda value: all(x >= low for x in _numbers(value)), f"at least {low}{why}")


def _above_zero(value: Any) -> bool:
    return all(x > 0 for x in _numbers(value))


def _increasing(value: list) -> bool:
    return all(a < b for a, b in zip(value, value[1:]))


SEED_RULE = (lambda value: 0 <= value < SEED_LIMIT, f"at least 0 and at most {SEED_LIMIT - 1}")
ID_RANGE_RULE = (lambda value: len(value) == 2 and all(value), "[first_id, last_id], two VoxCeleb IDs")


# What the numbers of a config must satisfy beyond their type: (test, what the message says it must be).
# NaN fails every test.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": SEED_RULE,
    "device": (lambda value: DEVICE_PATTERN.fullmatch(value) is not None, "auto, cpu, cuda or cuda:N"),
    "dataset.split_ranges.val": ID_RANGE_RULE,
    "dataset.split_ranges.test": ID_RANGE_RULE,
    "dataset.split_ranges.train": ID_RANGE_RULE,
    "dataset.list_seed": SEED_RULE,
    "dataset.match_n": _at_least(2, " (a 1:N list has a positive and N - 1 negatives)"),
    "dataset.image_size": _at_least(1),
    "dataset.store_image_size": _at_least(1),
    "dataset.sample_rate": _at_least(1),
    "dataset.clip_seconds": (_above_zero, "above 0"),
    "dataset.num_workers": _at_least(0),
    "dataset.synthetic.identities": _at_least(1),
    "dataset.synthetic.seed": SEED_RULE,
    "dataset.synthetic.off_archetype_fraction": (lambda value: 0 <= value <= 1, "between 0 and 1"),
    "models.embedding_dim": _at_least(1),
    "models.face.units": _at_least(1),
    "models.face.widths": _at_least(1),
    "models.face.head_hidden": _at_least(1),
    "models.voice.layers": _at_least(1),
    "models.voice.filters": _at_least(1),
    "models.voice.n_mels": _at_least(1),
    "models.voice.head_hidden": _at_least(1),
    "training.batch_size": _at_least(2, " (the loss needs the batch's other identities as negatives)"),
    "training.max_iter": _at_least(1),
    "training.lr": (_above_zero, "above 0"),
    "training.momentum": _at_least(0),
    "training.weight_decay": _at_least(0),
    "training.lr_steps": (lambda v: _increasing(v) and all(x >= 1 for x in v),
                          "increasing iterations, each at least 1"),
    "training.lr_gamma": (_above_zero, "above 0"),
    "training.crop_seconds": (lambda v: len(v) == 2 and 0 < v[0] < v[1],
                              "[shortest, longest] in seconds, 0 < shortest < longest"),
    "training.temperature": (_above_zero, "above 0"),
    "training.bcr_start_iter": _at_least(0),
    "training.bcr_weight": _at_least(0),
    "training.bcr_regauge_margin": _at_least(0),
    "training.ie_start_iter": _at_least(0),
    "training.ie_refresh_iter": _at_least(1),
    "training.val_start": _at_least(0),
    "training.val_iter": _at_least(1),
    "training.save_iter": _at_least(1),
    "training.keep_last": _at_least(0),
    "training.plateau_patience": _at_least(0),
    "training.log_iter": _at_least(1),
    "training.timeout_minutes": (_above_zero, "above 0"),
    "testing.batch_size": _at_least(1),
    "testing.bootstrap": _at_least(1),
    "testing.ci_seed": SEED_RULE,
}


OPTS_HELP = ("config overrides, `section.key=value` (e.g. training.lr=1e-3 dataset.num_workers=8); every key, "
             "with its default and meaning, is listed in DEFAULTS of config/loader.py; values are type-checked")


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and (prefix + k) not in NULLABLE_TYPES:
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, _flat_keys(DEFAULTS), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _as_number(value: Any, expected: type) -> Any:
    """A number written as text (YAML 1.1 reads `1e-3` as a string) as `expected`; other values unchanged."""
    if expected not in (int, float) or not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return expected(text)
    except ValueError:
        pass
    try:
        number = float(text)  # `1e4` for an integer key
    except ValueError:
        return value
    return int(number) if expected is int and math.isfinite(number) and number.is_integer() else value


def _check_type(key: str, value: Any, expected: type, source: str) -> Any:
    value = _as_number(value, expected)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: config key '{key}' expects true/false, got {value!r}")
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{source}: config key '{key}' expects an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(
            f"{source}: config key '{key}' expects {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _check_value(key: str, value: Any, default: Any, source: str) -> Any:
    expected = NULLABLE_TYPES.get(key, type(default) if default is not None else None)
    if value is None:
        if default is None or key in NULLABLE_TYPES:
            return None
        raise ConfigError(f"{source}: config key '{key}' may not be null (expected {expected.__name__})")
    if expected is None:
        return value
    if value is False and "off" in CHOICES.get(key, ()):
        value = "off"  # YAML 1.1 reads a bare `off` as false
    value = _check_type(key, value, expected, source)
    if expected is list and default:  # a list of numbers or of strings, like its default
        value = [_check_type(f"{key}[{i}]", v, type(default[0]), source) for i, v in enumerate(value)]
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{source}: config key '{key}' must be one of {CHOICES[key]}, got {value!r}")
    test, rule = RULES.get(key, (None, ""))
    if test is not None and not test(value):
        raise ConfigError(f"{source}: config key '{key}' must be {rule}, got {value!r}")
    if not all(math.isfinite(x) for x in _numbers(value) if isinstance(x, float)):
        raise ConfigError(f"{source}: config key '{key}' expects finite numbers, got {value!r}")
    return value


def renamed(tree: dict, source: str, warn: bool = True) -> dict:
    """`tree` (a nested config dict) with every key of RENAMED_KEYS under its new name, one warning per old key."""
    tree = dict(tree)
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.split(".")
        values = tree.get(section)
        if not isinstance(values, dict) or old_key not in values:
            continue
        new_key = new.split(".")[1]
        if new_key in values:
            raise ConfigError(f"{source}: config keys '{old}' and '{new}' are the same key (its former and "
                              f"its new name): give '{new}' only")
        if warn:
            log.warning("%s: config key '%s' is now '%s'; the old name still works", source, old, new)
        value = values[old_key]
        if isinstance(value, bool):  # the only old values that change, for now
            value = RENAMED_VALUES.get(old, {}).get(value, value)
        tree[section] = {new_key if k == old_key else k: value if k == old_key else v for k, v in values.items()}
    return tree


def _merge(base: dict, update: dict, defaults: dict, source: str, prefix: str = "") -> None:
    if not prefix:
        update = renamed(update, source)
    for k, v in update.items():
        key = prefix + k
        if k not in defaults:
            raise _unknown_key(key, source)
        default = defaults[k]
        if isinstance(default, dict) and key not in NULLABLE_TYPES:
            if v is None:  # `training:` with every key commented out: nothing to change
                continue
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: config key '{key}' is a section, got {v!r}")
            _merge(base[k], v, default, source, key + ".")
        else:
            base[k] = _check_value(key, v, default, source)


class _ConfigLoader(yaml.SafeLoader):
    """YAML without aliases (a few bytes of nested aliases expand to gigabytes: the "billion laughs") and
    without a key written twice in one mapping (YAML keeps the last one silently)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not supported in configs: write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' written twice in one section (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line, column) and what."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    if "constructor for the tag" in problem:
        problem += " (configs hold plain values: no !!python or other tags)"
    return where + " ".join(problem.split())


def _load_yaml(text: str | IO[str]) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)


def _parse_opt(opt: str) -> dict:
    """One `key=value` override as a nested dict."""
    if "=" not in opt:
        raise ConfigError(f"--opts: expected key=value, got '{opt}'")
    key, raw = opt.split("=", 1)
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--opts '{opt}': the value is not valid YAML: {_yaml_problem(e)}") from None
    tree: dict = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            user = _load_yaml(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) file: byte {e.start} cannot be read") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}, {_yaml_problem(e)}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return user


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def config_chain(path: str, _children: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(file, keys) of a config and its `base:` ancestors, the farthest base first, `base` removed.

    A base is a YAML file named relative to the file that names it, or a list of them, merged in order
    (a config and a preset of config/presets/); the project's own configs (config/) have their bases in config/.
    """
    user = _read_yaml(path)
    bases = user.pop("base", None)
    if bases is None:
        return [(path, user)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: config key 'base' expects a path to a config file or a list of them, "
                          f"got {bases!r}")
    visited = (*_children, path)
    chain: list[tuple[str, dict]] = []
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        trail = " -> ".join((*visited, base_path))
        if any(os.path.realpath(p) == os.path.realpath(base_path) for p in visited):
            raise ConfigError(f"{path}: 'base' makes a cycle: {trail}")
        if os.path.isabs(base) or os.path.splitext(base_path)[1] not in (".yaml", ".yml"):
            raise ConfigError(f"{path}: 'base' must name a .yaml file relative to this file: {trail}")
        if _inside(visited[0], CONFIG_FOLDER) and not _inside(base_path, CONFIG_FOLDER):
            raise ConfigError(f"{path}: 'base' points outside {CONFIG_FOLDER}: {trail}")
        if len(visited) >= MAX_BASE_DEPTH:
            raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} configs in the 'base' chain: {trail}")
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: base config not found: {base_path}")
        chain += config_chain(base_path, visited)
    return chain + [(path, user)]


def _check_relations(cfg: dict) -> None:
    """Rules between keys, on the merged config."""
    d, t = cfg["dataset"], cfg["training"]
    rate = d["sample_rate"]
    for key, seconds in (("dataset.clip_seconds", d["clip_seconds"]), ("training.crop_seconds", t["crop_seconds"][0])):
        if seconds * rate < VOICE_WINDOW_SAMPLES:
            raise ConfigError(f"config key '{key}' is {seconds} s, {int(seconds * rate)} samples at "
                              f"dataset.sample_rate {rate}: the voice encoder needs at least {VOICE_WINDOW_SAMPLES}")
    if t["crop_seconds"][1] > d["clip_seconds"]:
        raise ConfigError(f"config key 'training.crop_seconds' {t['crop_seconds']} reaches beyond "
                          f"dataset.clip_seconds {d['clip_seconds']} (the stored clips)")


def load_config(path: str, opts: Iterable[str] = ()) -> EasyDict:
    """Read a YAML config (over its `base:` chain), apply `key=value` overrides in order, validate, fill defaults."""
    cfg = copy.deepcopy(DEFAULTS)
    for source, user in config_chain(path):
        _merge(cfg, user, DEFAULTS, source)
    for opt in opts:
        _merge(cfg, _parse_opt(opt), DEFAULTS, "--opts")
    _check_relations(cfg)
    return EasyDict(cfg)


def require(cfg: EasyDict, *keys: str) -> None:
    """Each config key (dotted) is set, not left empty: else a ConfigError naming the first that is not."""
    for key in keys:
        value: Any = cfg
        for part in key.split("."):
            value = value[part]
        if value in ("", None):
            raise ConfigError(f"config key '{key}' is not set: give it in the config file or as --opts {key}=...")


def setting(tree: dict, key: str):
    """The value at a dotted key of a nested dict (a config, a checkpoint's record), None where absent."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def seed_configs(cfg: EasyDict, seeds: list[int] | None) -> list[EasyDict]:
    """The config itself without seeds (--seeds not given), else one copy per seed whose run folder is <run>/seed<k>."""
    if seeds is None:
        return [cfg]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated or min(seeds) < 0:
        what = f"{', '.join(map(str, repeated))} given twice" if repeated else f"{min(seeds)} is negative"
        raise ConfigError(f"--seeds: {what}; give distinct seeds of at least 0 (each trains into <run>/seed<k>/)")
    return [EasyDict({**copy.deepcopy(cfg), "seed": seed, "exp_name": f"{cfg.exp_name}/seed{seed}"}) for seed in seeds]
