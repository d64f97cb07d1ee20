"""The hardware catalog: every profile loads, every number cites a source, numbers are sane."""

from __future__ import annotations

import re

import pytest
import yaml

from analysis.hardware import HARDWARE_DIR, available_profiles, devices, links, load_profile

EXPECTED_PROFILES = {
    "8xA100-80GB-NVLink",
    "8xH100-NVLink",
    "8xH200-NVLink",
    "8xL40-PCIe4",
    "8xL40S-PCIe4",
    "8xRTX4090-PCIe4",
    "2x8xA100-25GbE",
    "2x8xA100-100GbE",
    "2x8xH100-IB-NDR",
    "4xA100-PCIe4",
}
# A YAML line whose value is a number: `key: 12.5` with or without a trailing comment.
NUMBER_LINE = re.compile(r"^\s*[\w.-]+:\s*[-+]?\d[\d.eE+-]*\s*(#.*)?$")


def _measured(path) -> bool:
    """A profile written by `diffscale calibrate`: its numbers are fits of that run."""
    return bool((yaml.safe_load(path.read_text()) or {}).get("measured", False))


# Catalog files (datasheet numbers), not calibrated profiles.
CATALOG = [p for p in sorted(HARDWARE_DIR.glob("*.yaml")) if not _measured(p)]


def test_every_profile_loads():
    assert set(available_profiles()) >= EXPECTED_PROFILES
    for name in available_profiles():
        p = load_profile(name)
        assert p.world_size == p.gpus_per_node * p.nodes
        assert (p.inter_node is not None) == (p.nodes > 1), name
        assert p.description, name
        if not p.measured:
            assert p.device.mem_gb > 0 and p.device.mem_bandwidth_gb_s > 0, name


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.name)
def test_every_number_cites_a_source(path):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = NUMBER_LINE.match(line)
        if m:
            comment = (m.group(1) or "").lstrip("#").strip()
            assert len(comment) > 5, f"{path.name}:{i} has a number without a source: {line!r}"


def test_device_numbers():
    d = devices()
    assert set(d) >= {
        "A100-SXM-40GB",
        "A100-SXM-80GB",
        "H100-SXM",
        "H200",
        "L40",
        "L40S",
        "RTX-4090",
    }
    assert d["H100-SXM"].tflops["bf16"] == pytest.approx(989, abs=1)  # dense, not sparse 1979
    assert d["A100-SXM-80GB"].tflops["bf16"] == 312
    assert d["H200"].tflops["bf16"] == d["H100-SXM"].tflops["bf16"]  # same compute, more memory
    assert d["H200"].mem_gb > d["H100-SXM"].mem_gb
    assert d["H200"].mem_bandwidth_gb_s > d["H100-SXM"].mem_bandwidth_gb_s
    for dev in d.values():
        assert {"bf16", "fp16", "tf32", "fp32"} <= set(dev.tflops), dev.name
        assert dev.tflops["bf16"] >= dev.tflops["tf32"] >= dev.tflops["fp32"] * 0.99, dev.name
        assert 10 < dev.tflops["bf16"] < 1500, dev.name  # dense: no datasheet "with sparsity"
        assert 500 < dev.mem_bandwidth_gb_s < 6000, dev.name


def test_link_ordering():
    ln = links()
    bw = {name: link.bandwidth_gb_s for name, link in ln.items()}
    assert bw["nvlink4"] > bw["nvlink3"] > bw["pcie5"] > bw["pcie4"] > bw["pcie3"]
    assert bw["pcie5"] > bw["eth100"] > bw["eth25"] > bw["eth10"]
    assert bw["eth400"] > bw["eth200"] > bw["eth100"]
    assert bw["ib-ndr"] == 2 * bw["ib-hdr"] == bw["eth400"]  # 400 vs 200 Gb/s per port
    assert ln["nvlink4"].latency_us < ln["eth100"].latency_us
    assert ln["eth25"].shared_by_node and not ln["ib-ndr"].shared_by_node
    # one 25 GbE NIC split by 8 GPUs
    assert ln["eth25"].effective_bandwidth_gb_s(8) == pytest.approx(3.125 / 8)
