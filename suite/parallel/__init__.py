"""Parallel strategies: a registry of `Strategy` entries, one module per family.

A strategy's `apply` takes the built workload and the rank's `Comm` and returns a
`Parallelized`: the denoiser to call (full latent in, full prediction out, on every rank), the
inputs this rank denoises, and how final latents are gathered. Strategies swap or wrap modules;
they never fork diffusers code, and every collective goes through `suite.comm`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from suite.comm import Comm


class Unsupported(RuntimeError):
    """Raised by `apply` when a method cannot run in this environment (e.g. a library lacks
    it on CPU); the run is stored as skipped with this reason, not as failed."""


@dataclass
class Parallelized:
    """What the runner drives on one rank after a strategy is applied."""

    denoiser: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
    inputs: Any  # workloads.Inputs this rank denoises
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda latents: latents
    modules: list[torch.nn.Module] = field(default_factory=list)  # held parameters, for memory
    warmup_steps: int = 0  # synchronous warm-up steps of the method (0: none)
    on_step: Callable[[int], None] | None = None  # told each step index before the step runs
    # A strategy that drives its own loop (PipeFusion: patch-wise, per-patch scheduler state)
    # replaces workloads.denoise; same signature: (workload, denoiser, inputs, *, before_step,
    # after_step, finalize) -> final latents, calling the hooks around each of its steps.
    loop: Callable[..., torch.Tensor] | None = None


@dataclass(frozen=True)
class Option:
    """A strategy option: its default and either the allowed values or a type with a minimum."""

    default: Any
    choices: tuple | None = None
    kind: type | None = None
    minimum: float | None = None

    def check(self, name: str, value: Any) -> str | None:
        if self.choices is not None and value not in self.choices:
            return f"option '{name}' is {value!r}; allowed: {', '.join(map(repr, self.choices))}"
        if self.kind is not None and (not isinstance(value, self.kind) or isinstance(value, bool)):
            return f"option '{name}' is {value!r}; it must be of type {self.kind.__name__}"
        if self.minimum is not None and value < self.minimum:
            return f"option '{name}' is {value!r}; it must be >= {self.minimum}"
        return None


@dataclass(frozen=True)
class Strategy:
    name: str
    axes: tuple[str, ...]  # mesh axes it may use; the first is where a plain world size goes
    families: frozenset[str]  # workload families it supports
    exact: bool  # output equals the single-device output up to floating-point rounding
    paper: str
    apply: Callable[..., Parallelized]  # (workload, comm, options) -> Parallelized
    options: dict[str, Option] = field(default_factory=dict)
    # extra checks on (RunSpec, Preset) before any process starts; returns error sentences
    validate: Callable[[Any, Any], list[str]] | None = None


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def apply(name: str, workload, comm: Comm, options: dict[str, Any]) -> Parallelized:
    """Parallelize `workload` on this rank with strategy `name`."""
    strategy = get(name)
    resolved = {k: opt.default for k, opt in strategy.options.items()} | dict(options)
    return strategy.apply(workload, comm, resolved)


def _register_all() -> None:
    """Import every module of this package: each registers its strategies on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_register_all()
