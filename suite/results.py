"""Old path of `suite.store.results`, kept for one release (see CHANGELOG.md)."""

import warnings

from suite.store.results import *  # noqa: F403

warnings.warn(
    "suite.results moved to suite.store.results; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
