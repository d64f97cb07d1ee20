"""A fake world (one process emulating each rank) logs what a real world of the same size logs."""

from __future__ import annotations

import pytest

from suite import parallel
from suite.distributed.comm import OPS
from suite.config.experiment import ConfigError, parse_config
from suite.worlds.launch import RunSkipped


def _spec(strategy: str, axis: str, world_mode: str, workload: str = "tiny-pixart-alpha"):
    raw = {
        "experiment": "t",
        "workloads": [workload],
        "resolutions": [256],
        "settings": {
            "steps": 2,
            "batch": 2,
            "repeats": 1,
            "warmup_runs": 0,
            "world_mode": world_mode,
        },
        "strategies": [{"name": strategy, "degrees": {axis: 2}}],
    }
    return parse_config(raw).runs[0]


def _ledger(results) -> list[list[tuple]]:
    """Per rank: the sorted (op, axis, bytes) of every logged collective."""
    return [
        sorted(
            zip(
                [OPS[o] for o in r.events["op"]],
                r.events["axis"].tolist(),
                r.events["nbytes"].tolist(),
                strict=True,
            )
        )
        for r in results
    ]


def _two_rank_strategies() -> list[tuple[str, str]]:
    return [(s.name, s.axes[0]) for s in parallel.REGISTRY.values() if s.axes and "+" not in s.name]


@pytest.mark.parametrize("strategy, axis", _two_rank_strategies())
def test_fake_world_logs_the_bytes_of_a_real_world(world2, fake_world, strategy, axis):
    try:
        real_spec, fake_spec = _spec(strategy, axis, "real"), _spec(strategy, axis, "fake")
    except ConfigError as e:
        pytest.skip(f"{strategy} cannot run this workload at degree 2: {e.problems[0]}")
    try:
        real = world2.run(real_spec)
    except RunSkipped as e:  # a library strategy that cannot run this model (its own reason)
        pytest.skip(f"{strategy}: {e}")
    fake = fake_world.run(fake_spec)
    assert [r.rank for r in fake] == [0, 1]
    assert _ledger(fake) == _ledger(real)
    assert all(r.latents is None for r in fake)  # emulated outputs are never kept
    # compute ran at the real per-rank shapes: every step took time
    assert all((r.steps["t_end"] > r.steps["t_start"]).all() for r in fake)


def test_fake_world_runs_more_ranks_than_cores(fake_world):
    (spec,) = parse_config(
        {
            "experiment": "t",
            "workloads": ["tiny-pixart-alpha"],
            "resolutions": [256],
            "settings": {
                "steps": 2,
                "batch": 8,
                "repeats": 1,
                "warmup_runs": 0,
                "world_mode": "fake",
            },
            "strategies": [{"name": "data", "world_sizes": [8]}],
        }
    ).runs
    results = fake_world.run(spec)
    assert [r.rank for r in results] == list(range(8))
    # one output gather per rank; its size is the whole batch of latents, 8 x 4 x 32 x 32 fp32
    assert all(len(r.events) == 1 and r.events["nbytes"][0] == 8 * 4 * 32 * 32 * 4 for r in results)
