"""Splitting the test suite into shards that separate runs take in turn (a GPU call of limited
length runs one shard): LAYERBENCH_TEST_SHARD=i/n keeps the tests whose node id hashes to shard i
of n (1-based).  The hash, not the order, decides, so a file of slow tests spreads over the shards
and every process of a pytest-xdist run keeps the same tests."""

from __future__ import annotations

import zlib

ENV = "LAYERBENCH_TEST_SHARD"


def parse_shard(text: str) -> tuple[int, int]:
    """(i, n) from "i/n", with 1 <= i <= n; ValueError naming the variable otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"{ENV} must be i/n (for example 1/2), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"{ENV}: i must be in 1..n, got {text!r}")
    return i, n


def in_shard(nodeid: str, shard: tuple[int, int]) -> bool:
    i, n = shard
    return zlib.crc32(nodeid.encode()) % n == i - 1
