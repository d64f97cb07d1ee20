"""Execution modes of a GPU (eager, CUDA graphs, torch.compile) and the per-call costs they add.

`configs/hardware/execution.yaml` holds the modes: in eager mode the host spends time on every
operator call and every collective call (fitted on the declared fit set of published rows, see
papers/validation.yaml), and kernels queue on the GPU behind it; a replayed CUDA graph spends no
host time per call but leaves a small gap between kernels. The operator model prices a segment
of compute with them (`analysis.opmodel.price`), the projection's timeline adds the host time of
each collective call (`analysis.projection.simulate`). numpy and yaml only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

EXECUTION_FILE = Path(__file__).resolve().parent.parent / "configs" / "hardware" / "execution.yaml"
MODES = ("eager", "cuda_graphs", "compile")


@dataclass(frozen=True)
class Execution:
    mode: str
    op_host_s: float = 0.0  # host time per operator call beyond the driver's launch (eager)
    collective_host_s: float = 0.0  # host time per collective call (eager)
    kernel_gap_s: float | None = None  # GPU gap between replayed kernels (graphs); None: eager

    @property
    def graphs(self) -> bool:
        return self.kernel_gap_s is not None


@cache
def load_execution(mode: str, path: Path = EXECUTION_FILE) -> Execution:
    """The execution mode `mode` of execution.yaml; ValueError naming the modes otherwise."""
    if mode not in MODES:
        raise ValueError(f"execution {mode!r} is unknown; allowed: {', '.join(MODES)}")
    raw = (yaml.safe_load(path.read_text())["modes"] or {})[mode]
    gap = raw.get("kernel_gap_us")
    return Execution(
        mode,
        float(raw.get("op_host_us", 0.0)) * 1e-6,
        float(raw.get("collective_host_us", 0.0)) * 1e-6,
        None if gap is None else float(gap) * 1e-6,
    )
