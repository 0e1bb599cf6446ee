"""The compiled test models are byte-identical to what the compiler produced before the op-module refactoring
(tests/artifact_fingerprints.py recorded their fingerprints in tests/data/artifact_fingerprints.json). A change
that is meant to alter the compiled programs re-records them (`python tests/artifact_fingerprints.py --write`)
in the same commit, saying why."""

from __future__ import annotations

import json

import pytest
from artifact_fingerprints import CACHED, FINGERPRINTS, ZOO, cached_path, measure

RECORDED = json.loads(FINGERPRINTS.read_text())


def check(name: str) -> None:
    if name not in RECORDED:
        pytest.skip(f"{name} was not in the model cache when the fingerprints were recorded")
    if name in CACHED and not cached_path(name).is_file():
        pytest.skip(f"{cached_path(name)} is not built")
    prints, _ = measure([name])
    assert prints[name] == RECORDED[name], f"{name}: the compiled artifact changed"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_artifact_is_unchanged(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", CACHED)
def test_cached_model_artifact_is_unchanged(name: str) -> None:
    check(name)


def test_the_fingerprints_cover_the_zoo_and_the_cache() -> None:
    assert set(ZOO) <= set(RECORDED)
    assert len(RECORDED) > len(ZOO)  # the small cached models were there when they were recorded
