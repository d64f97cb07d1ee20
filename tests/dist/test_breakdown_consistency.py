"""The stored breakdown adds up for every strategy: per rank and step, and per run,
0 <= exposed_comm_s <= comm_s <= step_s, compute_s + exposed_comm_s <= step_s, and the
overlapped part comm_s - exposed_comm_s is at most compute_s (suite.worlds.record measures comm_s and
exposed_comm_s as unions of intervals within the step, so this holds by construction; here on
real ledgers, with async ops in flight together and across steps).

One short run per strategy through the harness (`world.run`) and `suite.worlds.record.assemble`, as a
sweep stores them: tiny presets at 256 px, batch 1 (data: 2), 2 steps (DistriFusion 4, so that
its displaced exchange is issued in one step and waited on in the next), 1 timed loop, no
warm-up loops.
"""

from __future__ import annotations

import numpy as np
import pytest

from suite.config.experiment import parse_config
from suite.worlds.record import assemble

TOL = 1e-9  # seconds: float rounding of perf_counter differences
PIXART, SDXL = "tiny-pixart-alpha", "tiny-sdxl"

# (strategy, workload, degrees, options, steps, batch) per world size
CASES = {
    1: [("none", PIXART, {}, {}, 2, 1)],
    2: [
        ("data", PIXART, {"data": 2}, {}, 2, 2),
        ("cfg", PIXART, {"cfg": 2}, {}, 2, 1),
        ("ulysses", PIXART, {"ulysses": 2}, {}, 2, 1),
        ("ring", PIXART, {"ring": 2}, {}, 2, 1),
        ("tensor", PIXART, {"tensor": 2}, {}, 2, 1),
        ("pipefusion", PIXART, {"pipefusion": 2}, {}, 2, 1),
        ("naive_patch", SDXL, {"patch": 2}, {}, 2, 1),
        ("distrifusion", SDXL, {"patch": 2}, {}, 4, 1),
        ("distrifusion", SDXL, {"patch": 2}, {"full_sync": True}, 2, 1),
    ],
    4: [
        ("usp", PIXART, {"ring": 2, "ulysses": 2}, {}, 2, 1),
        ("cfg+ulysses", PIXART, {"cfg": 2, "ulysses": 2}, {}, 2, 1),
        ("cfg+distrifusion", SDXL, {"cfg": 2, "patch": 2}, {}, 4, 1),
    ],
}


def _spec(strategy, workload, degrees, options, steps, batch):
    entry = {"name": strategy, "options": options}
    if degrees:
        entry["degrees"] = degrees
    raw = {
        "experiment": "breakdown_consistency",
        "workloads": [workload],
        "resolutions": [256],
        "settings": {"steps": steps, "batch": batch, "repeats": 1, "warmup_runs": 0},
        "strategies": [entry],
    }
    (spec,) = parse_config(raw).runs
    return spec


def _key(case) -> str:
    strategy, workload, _, options, _, _ = case
    return f"{strategy}-{workload}" + "".join(f"-{k}" for k in options)


def _records(world, world_size):
    out = {}
    for case in CASES[world_size]:
        spec = _spec(*case)
        results = world.run(spec)
        out[_key(case)] = (results, assemble(spec, results, "runs/x"))
    return out


@pytest.fixture(scope="module")
def records(world1, world2, world4):
    return {**_records(world1, 1), **_records(world2, 2), **_records(world4, 4)}


def _adds_up(row: dict, what: str) -> None:
    step, comm, exposed, compute = (
        row[k] for k in ("step_s", "comm_s", "exposed_comm_s", "compute_s")
    )
    assert 0 <= exposed <= comm + TOL, what
    assert comm <= step + TOL, what
    assert compute + exposed <= step + TOL, what
    assert comm - exposed <= compute + TOL, what


@pytest.mark.parametrize("case", [c for cs in CASES.values() for c in cs], ids=_key)
def test_breakdown_adds_up_per_step_and_per_run(records, case):
    results, record = records[_key(case)]
    assert len(record.rank_steps) == len(results) * case[4]
    for s in record.rank_steps:
        _adds_up(s, f"rank {s['rank']} step {s['step']}")
    run = record.run
    _adds_up(run, "run")
    # per op and axis: the union within the steps, at most that rank's mean step (ranks' steps
    # differ, e.g. PipeFusion's stages: the run's step_s is a mean over ranks)
    rank_step = {
        r: np.mean([s["step_s"] for s in record.rank_steps if s["rank"] == r])
        for r in {s["rank"] for s in record.rank_steps}
    }
    for c in record.comm:
        assert 0 <= c["exposed_s"] <= c["inflight_s"] + TOL <= rank_step[c["rank"]] + 2 * TOL, c
    if case[0] == "none":
        assert run["comm_s"] == 0 and run["overlap_pct"] is None
    else:
        assert run["comm_s"] > 0 and 0 <= run["overlap_pct"] <= 100 + TOL


def test_displaced_exchange_spans_steps(records):
    # the async DistriFusion run exercises what the union is for: ops waited a step later
    results, record = records[_key(CASES[2][7])]
    ev = results[0].events
    assert (ev["wait_step"] > ev["step"]).any()
    # its summed op durations count ops in flight together each in full (more than comm_s)
    assert record.run["op_time_s"] >= record.run["comm_s"]
