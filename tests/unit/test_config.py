"""Config validation and grid expansion: every bad input is named before any process starts."""

from __future__ import annotations

import pytest

from suite.config.experiment import ConfigError, load_config, parse_config


def base(**over) -> dict:
    raw = {
        "experiment": "t",
        "workloads": ["tiny-pixart-alpha"],
        "resolutions": [256],
        "settings": {"steps": 2, "batch": 2},
        "strategies": [{"name": "none"}, {"name": "data", "world_sizes": [2]}],
    }
    raw.update(over)
    return raw


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_grid_expands_workloads_resolutions_strategies_world_sizes():
    cfg = parse_config(
        base(
            workloads=["tiny-pixart-alpha", "tiny-sdxl"],
            resolutions=[256, "256x512"],
            strategies=[{"name": "none"}, {"name": "data", "world_sizes": [1, 2]}],
        )
    )
    # 2 workloads x 2 resolutions x (none + data at 2 world sizes)
    assert len(cfg.runs) == 2 * 2 * 3
    spec = next(s for s in cfg.runs if s.strategy == "data" and s.world_size == 2)
    assert spec.degrees == (("data", 2),)
    assert spec.backend == "gloo"
    assert {(s.height, s.width) for s in cfg.runs} == {(256, 256), (256, 512)}
    # preset defaults are resolved into the spec, so the hash says what actually ran
    pixart = next(s for s in cfg.runs if s.workload == "tiny-pixart-alpha")
    assert pixart.scheduler == "dpm-solver++" and pixart.guidance == 4.5


def test_run_ids_are_stable_and_distinct():
    a, b = parse_config(base()), parse_config(base())
    assert [s.run_id for s in a.runs] == [s.run_id for s in b.runs]
    assert len({s.run_id for s in a.runs}) == len(a.runs)
    other = parse_config(base(experiment="u"))
    assert a.runs[0].config_hash == other.runs[0].config_hash
    assert a.runs[0].run_id != other.runs[0].run_id
    longer_timeout = parse_config(base(settings={"steps": 2, "batch": 2, "timeout_s": 5}))
    assert longer_timeout.runs[0].run_id == a.runs[0].run_id  # waiting longer is not a new run


def test_duplicate_runs_are_run_once():
    cfg = parse_config(base(strategies=[{"name": "none"}, {"name": "none"}]))
    assert len(cfg.runs) == 1


def test_per_entry_settings_override():
    cfg = parse_config(
        base(strategies=[{"name": "data", "world_sizes": [2], "settings": {"batch": 4}}])
    )
    assert cfg.runs[0].batch == 4 and cfg.runs[0].steps == 2


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"workloads": ["tiny-nope"]}, "workloads[0]"),
        ({"resolutions": [250]}, "multiples of 16"),
        ({"resolutions": ["big"]}, "resolutions[0]: 'big'"),
        ({"strategies": [{"name": "warp"}]}, "unknown strategy 'warp'"),
        ({"strategies": [{"name": "none", "world_sizes": [2]}]}, "world size must be 1"),
        (
            {"strategies": [{"name": "data", "degrees": {"data": 3}, "world_sizes": [2]}]},
            "product of the degrees must equal the world size",
        ),
        (
            {"strategies": [{"name": "data", "degrees": {"ulysses": 2}}]},
            "not used by strategy 'data'",
        ),
        ({"strategies": [{"name": "data", "degrees": {"warp": 2}}]}, "unknown mesh axis"),
        ({"strategies": [{"name": "data", "world_sizes": [0]}]}, "world_sizes[0]: 0"),
        ({"strategies": [{"name": "data", "options": {"x": 1}}]}, "unknown option of 'data'"),
        (
            {"strategies": [{"name": "data", "world_sizes": [4]}]},
            "batch 2 does not split over data degree 4",
        ),
        ({"settings": {"steps": 0}}, "settings.steps: 0; must be an integer >= 1"),
        ({"settings": {"dtype": "float8"}}, "allowed: float32, float16, bfloat16"),
        ({"settings": {"device": "tpu"}}, "allowed: cpu, cuda, auto"),
        ({"settings": {"colour": 1}}, "settings.colour: unknown setting"),
        ({"settings": {"scheduler": "flow-match-euler"}}, "scheduler"),
        ({"experiment": "has space"}, "experiment: 'has space'"),
        ({"extra": 1}, "extra: unknown key"),
    ],
)
def test_bad_input_names_field_value_and_allowed(override, fragment):
    problems = problems_of(base(**override))
    assert any(fragment in p for p in problems), problems


def test_all_problems_reported_at_once():
    problems = problems_of(
        base(workloads=["tiny-nope"], settings={"steps": -1}, strategies=[{"name": "warp"}])
    )
    assert len(problems) >= 3


def test_oversubscription_is_a_warning_not_an_error():
    cfg = parse_config(
        base(
            strategies=[{"name": "data", "world_sizes": [2]}],
            settings={"batch": 2, "threads_per_rank": 64},
        )
    )
    assert cfg.warnings and "oversubscribed" in cfg.warnings[0]


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_repository_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    configs = [p for p in root.rglob("*.yaml") if "hardware" not in p.parts]
    assert configs, "no experiment configs found"
    for path in configs:
        assert load_config(path).runs, path
