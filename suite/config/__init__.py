"""Experiment configs: YAML in, typed and validated `ExperimentConfig` and `RunSpec`s out.

Everything a sweep refuses is refused here, before any process starts: `settings` (the
`settings:` mapping, torch-free), `entries` (one `strategies:` entry's degrees and options),
`experiment` (the whole file and its grid) and `memory` (each run's peak memory per rank,
estimated, and the pre-spawn check). May import `suite.parallel` (the strategies' own checks),
`suite.distributed`, `suite.store` and `workloads`; importing it loads neither torch nor
diffusers.

The names below are the config's public API (`from suite.config import load_config`).
"""

from suite.config.experiment import *  # noqa: F403 - the old module's names, one list
from suite.config.experiment import __all__  # noqa: F401
