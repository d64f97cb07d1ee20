"""Calibration: alpha-beta fits recover known costs; profiles written load back."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.hardware import load_profile
from suite.commands.calibrate import ComputeRates, fit_alpha_beta, size_ladder, write_profile


def test_fit_recovers_alpha_and_beta_exactly():
    n = np.array([2.0**k for k in range(10, 29, 2)])
    t = 50e-6 + n / 2e9  # 50 us, 2 GB/s
    alpha, beta = fit_alpha_beta(n, t)
    assert alpha == pytest.approx(50e-6, rel=1e-9) and beta == pytest.approx(1 / 2e9, rel=1e-9)


def test_fit_is_robust_to_noise_in_relative_terms():
    rng = np.random.default_rng(0)
    n = np.array([2.0**k for k in range(10, 29, 2)])
    t = (100e-6 + n / 1e9) * rng.uniform(0.95, 1.05, len(n))
    alpha, beta = fit_alpha_beta(n, t)
    assert alpha == pytest.approx(100e-6, rel=0.1) and beta == pytest.approx(1e-9, rel=0.1)


def test_size_ladder_matches_nccl_tests_x4_steps():
    assert size_ladder("1K-256M") == tuple(2**k for k in range(10, 29, 2))
    assert size_ladder("1K-4K") == (1024, 4096)


def test_written_profile_loads_with_its_fits(tmp_path):
    rows = [
        {"op": op, "group_size": p, "nbytes": n, "rank": r, "time_s": 1e-4 + n / 1e9 * (1 + r)}
        for op in ("all_gather", "send")
        for p in ((2, 4) if op == "all_gather" else (2,))
        for n in (1024, 1 << 20, 1 << 24)
        for r in range(p)
    ]
    path = tmp_path / "cal.yaml"
    write_profile(path, "cal", rows, ComputeRates(0.09, 0.07, 0.065, "x"), 1, "cpu: test")
    prof = load_profile(path)
    assert prof.measured and prof.cpu_cores and prof.device.achieved
    assert prof.device.throughput("float32") == pytest.approx(0.065)
    # the slowest rank (rank p-1) defines the op time: beta = p / 1e9
    assert prof.fits[("all_gather", 4)].beta_s_per_byte == pytest.approx(4e-9, rel=1e-6)
    assert prof.fits[("recv", 2)] == prof.fits[("send", 2)]
    assert prof.contention(4, 1) == max(1.0, 4 / prof.cpu_cores)
