"""Shared fixtures: spawned gloo worlds, one per size for the whole test session.

Each rank pays seconds (and ~500 MB) importing diffusers, so every distributed test borrows
these worlds instead of spawning its own.
"""

from __future__ import annotations

import pytest

from suite.worlds.launch import LocalWorld


def _world(n: int):
    world = LocalWorld(n, device="cpu", threads_per_rank=1, collective_timeout_s=120)
    world.start()
    return world


@pytest.fixture(scope="session")
def world1():
    world = _world(1)
    yield world
    world.close()


@pytest.fixture(scope="session")
def world2():
    world = _world(2)
    yield world
    world.close()


@pytest.fixture(scope="session")
def world3():
    world = _world(3)  # an odd world: uneven tensor-parallel shares
    yield world
    world.close()


@pytest.fixture(scope="session")
def world4():
    world = _world(4)  # 4 ranks on 2 cores: for correctness, never for timing
    yield world
    world.close()


@pytest.fixture(scope="session")
def fake_world():
    world = LocalWorld(1, device="cpu", threads_per_rank=1, collective_timeout_s=120, fake=True)
    world.start()
    yield world
    world.close()
