"""Collectives as NCCL runs them (analysis.collectives): the published curves reproduced where
they were measured, and what changes with the group size, the topology and a shared link."""

import math

import pytest
import yaml

from analysis.collectives import (
    COLLECTIVES_FILE,
    Topology,
    busbw_factor,
    collective_s,
    load_collectives,
)
from analysis.hardware import load_profile

GIB = 1024**3


@pytest.fixture(scope="module")
def data():
    return load_collectives()


def test_every_curve_point_names_its_source():
    raw = yaml.safe_load(COLLECTIVES_FILE.read_text())
    for name, c in raw["link_classes"].items():
        for op, curve in c["busbw"].items():
            for pt in curve["points"]:
                src = str(pt.get("source", ""))
                assert len(src) > 10, f"{name}.{op} point {pt} has no source"
    assert "tuning.cc" in raw["nccl_latency_us"]["source"]


def test_at_the_measured_group_size_the_time_is_the_measurement(data):
    # nvswitch-a100 all_reduce, 8 GPUs, 1 GiB: 231.45 GB/s busbw (mscclpp docs/performance-ndmv4.md)
    topo = Topology(gpus_per_node=8, nodes=1, intra="nvswitch-a100")
    t = collective_s(topo, data, "all_reduce", GIB, list(range(8)))
    assert t == pytest.approx(GIB * busbw_factor("all_reduce", 8) / 231.45e9, rel=1e-9)


def test_fewer_ranks_cost_fewer_latency_hops_and_fewer_bytes_on_the_wire(data):
    topo = Topology(gpus_per_node=8, nodes=1, intra="nvswitch-a100")
    small8 = collective_s(topo, data, "all_reduce", 1024, list(range(8)))
    small2 = collective_s(topo, data, "all_reduce", 1024, [0, 1])
    # NCCL's ring LL latency: 6.6 us + 2(p-1) x 0.6 us over NVLink (tuning.cc): 15.0 us at 8
    # ranks, 12 hops fewer at 2; what the 1 KiB measurement (16.96 us: 0.106 GB/s busbw) spent
    # beyond its latency is wire time, scaled by the busbw factors (1 at 2 ranks, 1.75 at 8)
    wire8 = 1024 * 1.75 / 0.106e9 - 15.0e-6
    assert small8 - small2 == pytest.approx(12 * 0.6e-6 + wire8 * (1 - 1 / 1.75), rel=1e-6)
    big8 = collective_s(topo, data, "all_gather", GIB, list(range(8)))
    big2 = collective_s(topo, data, "all_gather", GIB, [0, 1])
    assert big2 / big8 == pytest.approx((1 / 2) / (7 / 8), rel=0.01)  # (p-1)/p of the bytes


def test_a_group_across_sockets_pays_the_socket_link():
    l40 = load_profile("8xL40-PCIe4")
    inside = collective_s(l40.topology, load_collectives(), "all_gather", 64e6, [0, 1, 2, 3])
    across = collective_s(l40.topology, load_collectives(), "all_gather", 64e6, [0, 1, 4, 5])
    assert across > 1.5 * inside
    # four pairs that each straddle the sockets share the socket link: each is slower than one
    one = collective_s(
        l40.topology, load_collectives(), "send", 64e6, [3, 4], [3, 4, 5, 6, 7, 0, 1, 2]
    )
    shared = collective_s(l40.topology, load_collectives(), "send", 64e6, [0, 4], [0, 4])
    assert shared > 2 * one


def test_a_shared_nic_is_split_between_the_groups_that_cross_it(data):
    eth = Topology(gpus_per_node=8, nodes=2, intra="nvswitch-a100", inter_node="eth100-tcp")
    ib = Topology(
        gpus_per_node=8, nodes=2, intra="nvswitch-a100", inter_node="ib-hdr", nics_per_node=8
    )
    ring16 = list(range(16))
    # one 16-rank ring crosses the node's NIC twice: the NIC carries one ring's edge
    one_ring = collective_s(eth, data, "all_reduce", 256e6, ring16)
    # eight 2-rank groups (rank i with i + 8) all cross at once: an eighth of the NIC each
    pairs = collective_s(eth, data, "all_reduce", 256e6, [0, 8])
    assert pairs > 4 * one_ring / (busbw_factor("all_reduce", 16) / busbw_factor("all_reduce", 2))
    # with a NIC per GPU (rails) the 16-rank ring is no longer bound by one NIC
    assert collective_s(ib, data, "all_reduce", 256e6, ring16) < one_ring / 4


def test_profiles_name_known_link_classes(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text(
        "device: A100-SXM-80GB  # test\ngpus_per_node: 8  # test\nnodes: 1  # test\n"
        "intra_node_link: nvlink3\ntopology:\n  intra: nvswitch-z9\n"
    )
    with pytest.raises(ValueError, match="nvswitch-z9.*known: nvswitch-a100"):
        load_profile(bad)


def test_the_overlap_slowdown_is_the_files_central_estimate(data):
    assert data.overlap_slowdown == pytest.approx(0.19)
    assert not math.isnan(data.overlap_slowdown)


def test_gpu_profiles_run_eager_by_default_and_take_other_execution_modes():
    from analysis.hardware import with_execution

    a100 = load_profile("8xA100-80GB-NVLink")
    assert a100.execution.mode == "eager" and not a100.execution.graphs
    graphs = with_execution(a100, "cuda_graphs")
    assert graphs.execution.graphs and graphs.execution.op_host_s == 0.0
    with pytest.raises(ValueError, match="allowed: eager, cuda_graphs, compile"):
        with_execution(a100, "jit")
    with pytest.raises(ValueError, match="not a GPU profile"):
        with_execution(load_profile("local-cpu"), "cuda_graphs")
