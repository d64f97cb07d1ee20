"""The package map in docs/architecture.md is the one the import contract and the code give."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "architecture_map", ROOT / "tools" / "architecture_map.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_map_is_up_to_date():
    tool = _tool()
    assert (ROOT / "docs" / "architecture.md").read_text() == tool.render(), (
        "docs/architecture.md is stale: run python tools/architecture_map.py"
    )


def test_the_map_lists_every_layer_and_no_upward_arrow():
    tool = _tool()
    stack = tool.layers()
    depth = {p: i for i, layer in enumerate(stack) for p in layer}
    assert stack[0] == ["suite.commands"] and stack[-1] == ["workloads"]
    assert {"suite.store", "suite.worlds", "suite.config", "analysis"} <= set(depth)
    edges = tool.arrows(list(depth))
    assert edges[("suite.commands", "analysis")] > 0  # the commands call the analysis
    upward = [(s, d) for s, d in edges if depth[d] <= depth[s]]
    assert upward == [], f"imports against the layers: {upward}"


def test_old_import_paths_still_work():
    import suite.cli
    import suite.config
    import suite.store.results
    from suite.config import RunSpec, load_config  # noqa: F401 - the old module's names

    assert suite.cli.main is suite.commands.cli.main
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import importlib

        import suite.results

        importlib.reload(suite.results)
    assert suite.results.ResultStore is suite.store.results.ResultStore
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
