"""The suite's shards: every test in exactly one, and a bad setting named."""

from __future__ import annotations

import pytest

import shards


def test_every_node_id_falls_in_exactly_one_shard() -> None:
    ids = [f"tests/test_x.py::test_{i}[case-{i % 7}]" for i in range(500)]
    for n in (1, 2, 3):
        counts = [sum(shards.in_shard(nodeid, (i, n)) for i in range(1, n + 1)) for nodeid in ids]
        assert counts == [1] * len(ids)
        sizes = [sum(shards.in_shard(nodeid, (i, n)) for nodeid in ids) for i in range(1, n + 1)]
        assert min(sizes) > len(ids) / n / 2  # spread, not all in one


@pytest.mark.parametrize("text", ["2", "0/2", "3/2", "a/b", "1/2/3"])
def test_a_bad_shard_names_the_variable(text: str) -> None:
    with pytest.raises(ValueError, match=shards.ENV):
        shards.parse_shard(text)
