"""What runs: model presets, schedulers and seeded inputs. Knows nothing about parallelism.

Exports load on first use (PEP 562): `import workloads` and `workloads.presets` / `.limits`
stay free of torch and diffusers (config validation needs only them, in milliseconds), while
`workloads.build(...)` imports the heavy modules when first touched.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# export -> submodule that defines it
_EXPORTS = {
    "Workload": "build",
    "build": "build",
    "check_resolution": "limits",
    "Denoiser": "denoiser",
    "Inputs": "inputs",
    "combine_cfg": "loop",
    "denoise": "loop",
    "initial_latents": "loop",
    "scale_input": "loop",
    "PRESETS": "presets",
    "Preset": "preset",
    "get_preset": "presets",
    "SCHEDULERS": "limits",
    "make_scheduler": "schedulers",
    "ModelStats": "stats",
    "describe_presets": "stats",
    "model_stats": "stats",
}

__all__ = [
    "PRESETS",
    "SCHEDULERS",
    "Denoiser",
    "Inputs",
    "ModelStats",
    "Preset",
    "Workload",
    "build",
    "check_resolution",
    "combine_cfg",
    "denoise",
    "describe_presets",
    "get_preset",
    "initial_latents",
    "make_scheduler",
    "model_stats",
    "scale_input",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workloads' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Importing the submodule `workloads.build` would bind the package attribute `build` to the
    module (the import system sets it), hiding the function `build` that __getattr__ serves."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # static tools see the real names
    from .build import Workload, build
    from .denoiser import Denoiser
    from .inputs import Inputs
    from .limits import SCHEDULERS, check_resolution
    from .loop import combine_cfg, denoise, initial_latents, scale_input
    from .preset import Preset
    from .presets import PRESETS, get_preset
    from .schedulers import make_scheduler
    from .stats import ModelStats, describe_presets, model_stats
