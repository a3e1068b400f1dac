"""The run's configuration: every key with its default and rule (`loader.DEFAULTS`), the loader of the YAML
files beside this one and of `--opts`, and which keys a resumed run must keep (`resume`)."""
from config.loader import (DEFAULTS, OPTS_HELP, RENAMED_KEYS, ConfigError, load_config, renamed, require, seed_configs,
                           setting)

__all__ = ["DEFAULTS", "OPTS_HELP", "RENAMED_KEYS", "ConfigError", "load_config", "renamed", "require", "seed_configs",
           "setting"]
