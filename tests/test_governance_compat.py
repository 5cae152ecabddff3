"""JSON Schema compatibility: table-driven per mode, plus properties (reflexive, sound on sampled data)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.schemacompat import Compatibility, check_compatibility, readable

B, F, FULL = Compatibility.BACKWARD, Compatibility.FORWARD, Compatibility.FULL


def order(closed: bool = True, **changes: Any) -> dict[str, Any]:
    """An order schema; ``changes`` replace properties (None removes one), plus ``required=[...]``."""
    props: dict[str, Any] = {
        "id": {"type": "string", "maxLength": 64},
        "qty": {"type": "integer", "minimum": 1, "maximum": 100},
        "status": {"enum": ["new", "paid", "sent"]},
        "price": {"type": "number"},
    }
    required = changes.pop("required", ["id", "qty"])
    for name, schema in changes.items():
        if schema is None:
            props.pop(name)
        else:
            props[name] = schema
    return {"type": "object", "properties": props, "required": required, "additionalProperties": not closed}


def q(**kw: Any) -> dict[str, Any]:
    return {**order()["properties"]["qty"], **kw}


NOTE = {"type": "string", "default": ""}
# (case, old, new, backward compatible, forward compatible); full = both
CASES: list[tuple[str, Any, Any, bool, bool]] = [
    ("field added with a default, closed object", order(), order(note=NOTE), True, False),
    ("field added with a default, open object", order(False), order(False, note=NOTE), False, True),
    (
        "field added as required without default, closed",
        order(),
        order(note={"type": "string"}, required=["id", "qty", "note"]),
        False,
        False,
    ),
    (
        "field added as required without default, open",
        order(False),
        order(False, note={"type": "string"}, required=["id", "qty", "note"]),
        False,
        True,
    ),
    ("field removed, closed object", order(), order(status=None), False, True),
    ("field removed, open object", order(False), order(False, status=None), True, False),
    ("type changed", order(), order(qty={"type": "string"}), False, False),
    ("type widened integer -> number", order(), order(qty=q(type="number")), True, False),
    ("type narrowed number -> integer", order(), order(price={"type": "integer"}), False, True),
    ("type widened to a list of types", order(), order(price={"type": ["number", "null"]}), True, False),
    ("enum narrowed", order(), order(status={"enum": ["new", "paid"]}), False, True),
    ("enum widened", order(), order(status={"enum": ["new", "paid", "sent", "lost"]}), True, False),
    ("const changed", order(status={"const": "new"}), order(status={"const": "paid"}), False, False),
    ("const widened to an enum", order(status={"const": "new"}), order(), True, False),
    ("required added", order(), order(required=["id", "qty", "status"]), False, True),
    ("required removed", order(), order(required=["id"]), True, False),
    ("minimum tightened", order(), order(qty=q(minimum=5)), False, True),
    ("maximum tightened", order(), order(qty=q(maximum=50)), False, True),
    ("minimum loosened", order(), order(qty=q(minimum=0)), True, False),
    ("maxLength tightened", order(), order(id={"type": "string", "maxLength": 32}), False, True),
    ("minLength added", order(), order(id={"type": "string", "maxLength": 64, "minLength": 3}), False, True),
    ("pattern added", order(), order(id={"type": "string", "maxLength": 64, "pattern": "^o-"}), False, True),
    ("format added", order(), order(id={"type": "string", "maxLength": 64, "format": "uuid"}), False, True),
    (
        "integer bounds written two ways",
        order(qty=q(minimum=1)),
        order(qty=q(minimum=None, exclusiveMinimum=0)),
        True,
        True,
    ),
    (
        "multipleOf refined",
        order(price={"type": "number", "multipleOf": 0.05}),
        order(price={"type": "number", "multipleOf": 0.01}),
        True,
        False,
    ),
    ("closed object opened", order(), order(False), True, False),
    ("open object closed", order(False), order(), False, True),
    (
        "additionalProperties schema widened",
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        True,
        False,
    ),
    ("boolean as an enum", {"type": "boolean"}, {"enum": [True, False]}, True, True),
    ("annotations only", order(), {**order(), "title": "Order", "description": "an order"}, True, True),
]


def _ids(cases: list[tuple[str, Any, Any, bool, bool]]) -> list[str]:
    return [c[0] for c in cases]


@pytest.mark.parametrize(("case", "old", "new", "backward", "forward"), CASES, ids=_ids(CASES))
def test_each_change_in_each_mode(case: str, old: Any, new: Any, backward: bool, forward: bool) -> None:
    for mode, expected in ((B, backward), (F, forward), (FULL, backward and forward)):
        reasons = check_compatibility(new, [old], mode)
        assert (reasons == []) is expected, f"{case} / {mode}: {reasons}"
        assert all(r.split(": ", 2)[1].startswith("/") for r in reasons), reasons


NESTED_OLD: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 1},
        "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    },
    "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}},
}


def nested(path: list[str | int], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(NESTED_OLD)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


NESTED: list[tuple[str, Any, str, bool, bool]] = [
    (
        "nested field type changed",
        nested(["properties", "customer", "properties", "name"], {"type": "integer"}),
        "/properties/customer/properties/name/type",
        False,
        False,
    ),
    ("field in $defs widened", nested(["$defs", "line", "properties", "qty"], {"type": "number"}), "", True, False),
    (
        "field in $defs narrowed",
        nested(["$defs", "line", "properties", "sku"], {"type": "string", "maxLength": 8}),
        "/$defs/line/properties/sku/maxLength",
        False,
        True,
    ),
    (
        "$ref replaced by the same schema inline",
        nested(["properties", "lines", "items"], NESTED_OLD["$defs"]["line"]),
        "",
        True,
        True,
    ),
    ("minItems tightened", nested(["properties", "lines", "minItems"], 2), "/properties/lines/minItems", False, True),
    (
        "prefixItems item widened",
        nested(["properties", "pair", "prefixItems", 1], {"type": "number"}),
        "",
        True,
        False,
    ),
    ("array closed tail opened", nested(["properties", "pair", "items"], True), "", True, False),
    (
        "anyOf widens a type",
        nested(["properties", "customer", "properties", "name"], {"anyOf": [{"type": "string"}, {"type": "null"}]}),
        "",
        True,
        False,
    ),
]


@pytest.mark.parametrize(("case", "new", "pointer", "backward", "forward"), NESTED, ids=[c[0] for c in NESTED])
def test_nested_objects_arrays_and_refs(case: str, new: Any, pointer: str, backward: bool, forward: bool) -> None:
    back = check_compatibility(new, [NESTED_OLD], B)
    fwd = check_compatibility(new, [NESTED_OLD], F)
    assert (back == [], fwd == []) == (backward, forward), (back, fwd)
    if pointer:
        assert any(f": {pointer}:" in r for r in back + fwd), back + fwd


def test_reasons_are_sentences_naming_the_place() -> None:
    [reason] = check_compatibility(order(required=["id", "qty", "status"]), [order()], B)
    assert reason == "backward against v1: /required: 'status' is required by the new schema but not by the old schema"
    [reason] = check_compatibility(order(status={"enum": ["new", "paid"]}), [order()], B)
    assert reason.startswith(
        'backward against v1: /properties/status: value "sent" allowed by the old schema is refused'
    )
    [reason] = check_compatibility(order(qty=q(minimum=5)), [order()], B)
    assert reason == "backward against v1: /properties/qty/minimum: lower bound tightened from >= 1 (old) to >= 5 (new)"
    [reason] = check_compatibility(order(qty={"type": "string"}), [order()], F)
    assert reason.startswith("forward against v1: /properties/qty/type: type changed from string to integer")


def test_transitive_modes_check_every_earlier_version() -> None:
    # v1 had 'extra'; v2 dropped it (accepted under mode none); v3 only loosens qty
    v1, v2, v3 = order(extra={"type": "string"}), order(), order(qty=q(minimum=0))
    assert check_compatibility(v3, [v1, v2], B) == []
    assert check_compatibility(v3, [v1, v2], Compatibility.BACKWARD_TRANSITIVE) == [
        "backward against v1: /properties/extra: 'extra' is allowed by the old schema but refused by the new "
        "schema (additionalProperties is false)"
    ]
    # forward: v3 data must be readable by v2 alone, or by v1 and v2
    w1, w2, w3 = order(qty=q(maximum=50)), order(), order(qty=q(maximum=90))
    assert check_compatibility(w3, [w1, w2], F) == []
    assert check_compatibility(w3, [w1, w2], Compatibility.FORWARD_TRANSITIVE) == [
        "forward against v1: /properties/qty/maximum: upper bound tightened from <= 90 (new) to <= 50 (old)"
    ]
    assert len(check_compatibility(w3, [w1, w2], Compatibility.FULL_TRANSITIVE)) == 2
    assert check_compatibility(w3, [w1, w2], Compatibility.NONE) == []
    assert check_compatibility(w3, [], Compatibility.FULL_TRANSITIVE) == []


def test_one_of_is_conservative_unless_alternatives_are_disjoint() -> None:
    cat = {
        "type": "object",
        "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
        "required": ["kind"],
    }
    dog = {"type": "object", "properties": {"kind": {"const": "dog"}}, "required": ["kind"]}
    fox = {"type": "object", "properties": {"kind": {"const": "fox"}}, "required": ["kind"]}
    assert check_compatibility({"oneOf": [cat, dog, fox]}, [{"oneOf": [cat, dog]}], B) == []
    assert check_compatibility({"oneOf": [cat, dog, fox]}, [{"oneOf": [cat, dog]}], F) != []
    overlapping = {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}
    reasons = check_compatibility(overlapping, [{"type": "integer", "minimum": 0}], B)
    assert any("oneOf" in r for r in reasons), reasons
    # a discriminator says nothing about values that are not objects: 5 matches both untyped alternatives
    untyped = [{k: v for k, v in alt.items() if k != "type"} for alt in (cat, dog)]
    reasons = check_compatibility({"oneOf": untyped}, [{"type": "integer"}], B)
    assert reasons == ["backward against v1: /oneOf: cannot prove each value matches exactly one alternative"]
    # unchanged alternatives are fine even when they overlap
    assert check_compatibility({**overlapping, "title": "x"}, [overlapping], FULL) == []


def test_anything_not_understood_is_incompatible_with_a_reason() -> None:
    old = {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    new = {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["c"]}}
    reasons = check_compatibility(new, [old], B)
    assert reasons == ["backward against v1: /then: cannot prove compatible: 'then' differs and is not understood"]
    assert check_compatibility({**old, "title": "same"}, [old], FULL) == []
    assert check_compatibility({"$ref": "https://example.com/x.json"}, [{"type": "string"}], B) != []


TREE: dict[str, Any] = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"value": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        }
    },
    "$ref": "#/$defs/node",
}


def test_recursive_schemas_terminate() -> None:
    wider = copy.deepcopy(TREE)
    wider["$defs"]["node"]["properties"]["value"] = {"type": "number"}
    assert check_compatibility(wider, [TREE], B) == []
    assert check_compatibility(wider, [TREE], F) == [
        "forward against v1: /$defs/node/properties/value/type: type changed from number to integer"
    ]


# --- properties ----------------------------------------------------------------------------------

SMALL_VALUES = [None, True, 0, 1, 3, 6, 2.5, "", "a", "bb"]
leaf_schemas = st.one_of(
    st.booleans(),
    st.just({}),
    st.sampled_from(["null", "boolean", "integer", "number", "string", "object", "array"]).map(lambda t: {"type": t}),
    st.builds(
        lambda t, lo, hi: {
            "type": t,
            **({"minimum": lo} if lo is not None else {}),
            **({"maximum": hi} if hi is not None else {}),
        },
        st.sampled_from(["integer", "number"]),
        st.none() | st.integers(0, 4),
        st.none() | st.integers(2, 6),
    ),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 2)),
    st.lists(st.sampled_from(SMALL_VALUES), min_size=1, max_size=4, unique_by=repr).map(lambda vs: {"enum": vs}),
    st.sampled_from(SMALL_VALUES).map(lambda v: {"const": v}),
)


def _compound(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    objects = st.builds(
        lambda props, req, add: {
            "type": "object",
            "properties": props,
            "required": sorted(set(req)),
            **({} if add is None else {"additionalProperties": add}),
        },
        st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
        st.lists(st.sampled_from(["a", "b"]), max_size=2),
        st.none() | inner,
    )
    arrays = st.builds(lambda items, n: {"type": "array", "items": items, "maxItems": n}, inner, st.integers(0, 3))
    choices = st.builds(
        lambda k, alts: {k: alts}, st.sampled_from(["anyOf", "oneOf", "allOf"]), st.lists(inner, min_size=1, max_size=3)
    )
    return objects | arrays | choices


schemas = st.recursive(leaf_schemas, _compound, max_leaves=6)
values = st.recursive(
    st.sampled_from(SMALL_VALUES),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), c, max_size=3),
    max_leaves=6,
)


def annotate(schema: Any) -> Any:
    """The same schema with a description on every subschema: equal meaning, different text."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in ("properties", "$defs"):
            out[k] = {name: annotate(sub) for name, sub in v.items()}
        elif k in ("anyOf", "oneOf", "allOf", "prefixItems"):
            out[k] = [annotate(sub) for sub in v]
        elif k in ("items", "additionalProperties"):
            out[k] = annotate(v)
        else:
            out[k] = v
    out["description"] = "annotated"
    return out


@settings(database=None, max_examples=400, deadline=None)
@given(schemas)
def test_compatibility_is_reflexive_in_every_mode(schema: Any) -> None:
    for mode in Compatibility:
        assert check_compatibility(schema, [schema], mode) == []
    assert readable(schema, annotate(schema)) == [], annotate(schema)
    assert readable(annotate(schema), schema) == []


def behind_ref(schema: Any, wrap: bool) -> Any:
    return {"$defs": {"s": schema}, "$ref": "#/$defs/s"} if wrap else schema


@settings(database=None, max_examples=1000, deadline=None)
@given(schemas, schemas, st.booleans(), st.booleans(), st.lists(values, max_size=12))
def test_compatible_means_the_reader_accepts_what_the_writer_accepts(
    writer: Any, reader: Any, wrap_writer: bool, wrap_reader: bool, data: list[Any]
) -> None:
    writer, reader = behind_ref(writer, wrap_writer), behind_ref(reader, wrap_reader)
    reasons = readable(writer, reader)  # never raises
    if reasons:
        return
    w, r = jsonschema_rs.Draft202012Validator(writer), jsonschema_rs.Draft202012Validator(reader)
    for value in data:
        if w.is_valid(value):
            assert r.is_valid(value), (writer, reader, value)


WIDENING = ("minimum", "maximum", "maxLength", "maxItems", "required", "enum", "const", "additionalProperties")


def widening_spots(schema: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where removing a keyword can only admit more (outside oneOf, whose alternatives could start to overlap)."""
    if not isinstance(schema, dict):
        return []
    out = [(*path, k) for k in schema if k in WIDENING]
    for k, v in schema.items():
        if k == "properties":
            out += [spot for name, sub in v.items() for spot in widening_spots(sub, (*path, k, name))]
        elif k in ("anyOf", "allOf"):
            out += [spot for i, sub in enumerate(v) for spot in widening_spots(sub, (*path, k, i))]
        elif k in ("items", "additionalProperties"):
            out += widening_spots(v, (*path, k))
    return out


@settings(database=None, max_examples=400, deadline=None)
@given(schemas, st.data())
def test_dropping_one_constraint_is_backward_compatible(old: Any, data: st.DataObject) -> None:
    spots = widening_spots(old)
    if not spots:
        return
    spot = data.draw(st.sampled_from(spots))
    new = copy.deepcopy(old)
    node = new
    for key in spot[:-1]:
        node = node[key]
    del node[spot[-1]]
    assert check_compatibility(new, [old], B) == [], (old, new)
