"""faults.json, the demo's fault requests: what chaos writes, up reads back; anything else in it asks for nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscope.demofaults import read_faults, write_faults

A, B = "aws:us-east-1", "gcp:europe-west1"


def test_what_chaos_writes_up_reads_and_one_kind_leaves_the_other(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    assert read_faults(path) == {"isolated": {}, "held_down": {}}  # no file: no fault
    write_faults(path, isolated={A: 100.0})
    write_faults(path, held_down={B: 200})
    assert read_faults(path) == {"isolated": {A: 100.0}, "held_down": {B: 200.0}}
    write_faults(path, isolated={})
    assert read_faults(path) == {"isolated": {}, "held_down": {B: 200.0}}
    assert not (tmp_path / "faults.tmp").exists()


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("", {}),  # empty: nothing
        ("{not json", {}),
        ("[1, 2]", {}),  # not an object
        ('{"isolated": [1]}', {}),  # a kind that is not an object
        ('{"isolated": {"x": "soon"}}', {}),  # a time that is not a number
        ('{"isolated": {"x": true}}', {}),  # a boolean is no time either
        ('{"held_down": {"x": Infinity, "y": NaN}}', {}),  # nor is forever
        ('{"held_down": {"x": 1%s}}' % ("0" * 400), {}),  # nor a number beyond any float
        ('{"isolated": {"x": 5}, "other": {"y": 1}}', {"isolated": {"x": 5.0}}),  # unknown kinds ignored
    ],
)
def test_a_damaged_file_asks_for_nothing_it_cannot_read(tmp_path: Path, text: str, read: dict[str, Any]) -> None:
    path = tmp_path / "faults.json"
    path.write_text(text)
    assert read_faults(path) == {"isolated": {}, "held_down": {}, **read}
    write_faults(path, held_down={A: 1.0})  # a damaged file is replaced, not a reason to fail
    assert read_faults(path)["held_down"] == {A: 1.0}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["isolated", "held_down", "x"]), JSON, max_size=3))
def test_any_json_reads_as_regions_and_times_only(tmp_path_factory: pytest.TempPathFactory, doc: Any) -> None:
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    path.write_text(json.dumps(doc))
    faults = read_faults(path)
    assert set(faults) == {"isolated", "held_down"}
    for entries in faults.values():
        assert all(isinstance(k, str) and type(v) is float and math.isfinite(v) for k, v in entries.items())
    raw = {kind: v for kind, v in doc.items() if kind != "x" and isinstance(v, dict)}
    for kind, entries in raw.items():  # every finite number is kept, nothing else
        assert faults[kind] == {k: float(v) for k, v in entries.items() if type(v) in (int, float) and _finite(v)}


def _finite(number: float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False
