"""May a new JSON Schema version replace the old ones? Compatibility as Confluent Schema Registry defines it.

Reading is validation: data written under schema W can be read by schema R when
every instance W accepts, R accepts too (W ⊆ R). So:

- backward: the new schema reads data written with the previous one (old ⊆ new);
- forward:  the previous schema reads data written with the new one (new ⊆ old);
- full:     both; the ``_transitive`` modes check against every earlier version,
  the others against the latest only; ``none`` checks nothing.

Deciding W ⊆ R exactly is hard for JSON Schema in general, so the checker is
*sound*: it says compatible only when it has shown the inclusion, and otherwise
returns reasons, each a sentence starting with the JSON pointer of the place in
the new schema. It understands type (integer ⊆ number), enum and const,
properties, required, additionalProperties (open and closed content models),
patternProperties (when unchanged), items and prefixItems, the numeric, string,
array and object bounds, multipleOf, pattern and format (compared as written),
local ``$ref``/``$defs`` (recursive schemas too), allOf, anyOf, and oneOf when
its alternatives are unchanged or visibly disjoint. Any other keyword in the
reader schema must be unchanged, or the answer is "cannot prove: incompatible".
Constraints the writer adds beyond these are ignored, which only makes the
writer look larger and so keeps the answer sound.

Following Confluent, adding a property to an *open* object (additionalProperties
absent or true) is not backward compatible: old data may already carry that
name with any value. Close the object, or add the property as ``true``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import jsonschema_rs

from meshcore.schemakeywords import (
    ANNOTATIONS,
    KeywordRules,
    Unsure,
    canon,
    constraining,
    covered,
    finite,
    merge,
    same,
    show,
    type_set,
)


class Compatibility(StrEnum):
    BACKWARD = "backward"
    BACKWARD_TRANSITIVE = "backward_transitive"
    FORWARD = "forward"
    FORWARD_TRANSITIVE = "forward_transitive"
    FULL = "full"
    FULL_TRANSITIVE = "full_transitive"
    NONE = "none"


def check_compatibility(new: Any, previous: Sequence[Any], mode: Compatibility) -> list[str]:
    """Reasons ``new`` may not follow ``previous`` (versions 1..n, oldest first) under ``mode``; [] if it may."""
    if mode is Compatibility.NONE or not previous:
        return []
    transitive = mode.endswith("_transitive")
    against = list(enumerate(previous, 1))
    if not transitive:
        against = against[-1:]
    reasons: list[str] = []
    for number, old in against:
        if same(old, new):
            continue
        if mode.startswith(("backward", "full")):
            reasons += [f"backward against v{number}: {r}" for r in _Checker(old, new, "old", "new", True).run()]
        if mode.startswith(("forward", "full")):
            reasons += [f"forward against v{number}: {r}" for r in _Checker(new, old, "new", "old", False).run()]
    return reasons


def readable(writer: Any, reader: Any) -> list[str]:
    """Reasons some data valid under ``writer`` is refused by ``reader`` ([] when none can be); pointers into reader."""
    return _Checker(writer, reader, "writer", "reader", True).run()


MAX_DEPTH = 64
MAX_STEPS = 20_000


class _Checker(KeywordRules):
    """One inclusion question, writer ⊆ reader, with both documents' roots for $ref."""

    def __init__(self, writer: Any, reader: Any, wname: str, rname: str, report_reader: bool) -> None:
        self.roots = (writer, reader)
        self.w, self.r = wname, rname
        self.report_reader = report_reader
        self.assumed: set[tuple[int, int]] = set()
        self._keep: list[tuple[Any, Any]] = []  # nodes behind ``assumed`` ids stay alive
        self.steps = 0
        self._registries: list[jsonschema_rs.Registry | None] = [None, None]

    def run(self) -> list[str]:
        try:
            return self.sub(self.roots[0], "", self.roots[1], "", 0)
        except (
            TypeError,
            ValueError,
            LookupError,
            AttributeError,
            RecursionError,
            jsonschema_rs.ReferencingError,
        ) as exc:
            # a schema that did not pass check_schema: never call it compatible
            return [f"/: cannot prove compatible: {type(exc).__name__}: {exc}"]

    def deref(self, side: int, node: Any, ptr: str) -> tuple[Any, str, str | None]:
        """Follow a bare local $ref (siblings only annotations); returns (node, pointer, followed ref)."""
        followed = None
        for _ in range(32):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                break
            if any(k not in ANNOTATIONS and k != "$ref" for k in node):
                break
            followed = node["$ref"]
            node, ptr = self.resolve(side, followed)
        return node, ptr, followed

    def resolve(self, side: int, ref: str) -> tuple[Any, str]:
        if not ref.startswith("#"):
            raise Unsure(f"reference {ref!r} is not local")
        ptr = ref[1:]
        node = self.roots[side]
        for raw in ptr.split("/")[1:] if ptr else []:
            key = urllib.parse.unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise Unsure(f"reference {ref!r} does not resolve")
        return node, ptr

    def sub(self, w: Any, pw: str, r: Any, pr: str, depth: int) -> list[str]:
        try:
            return self._sub(w, pw, r, pr, depth)
        except Unsure as exc:
            return [f"{self.at(pw, pr) or '/'}: cannot prove compatible: {exc}"]

    def _sub(self, w: Any, pw: str, r: Any, pr: str, depth: int) -> list[str]:
        if depth > MAX_DEPTH:
            raise Unsure("the schemas nest too deeply to compare")
        w, pw, wref = self.deref(0, w, pw)
        r, pr, rref = self.deref(1, r, pr)
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Unsure("the schemas are too complex to compare")
        if wref is not None or rref is not None:
            pair = (id(w), id(r))
            if pair in self.assumed:
                return []  # a recursive schema: assume the pair we are already proving (coinduction)
            self.assumed.add(pair)
            self._keep.append((w, r))
        here = self.at(pw, pr) or "/"
        if r is True or (isinstance(r, dict) and not constraining(r)) or w is False:
            return []
        if r is False:
            return [f"{here}: the {self.r} schema accepts no value here but the {self.w} schema does"]
        if w is True:
            w = {}  # no constraint: what the reader constrains below is what it refuses
        if same(w, r) and '"$ref"' not in json.dumps(w):
            return []
        if self.empty(w):
            return []  # the writer admits nothing
        values = finite(w)
        if values is not None:
            return self.values_fit(values, w, pw, r, pr)
        # the reader is a conjunction: the writer must fit every part
        if "$ref" in r or "allOf" in r:
            own = {k: v for k, v in r.items() if k not in ("$ref", "allOf")}
            out = self.sub(w, pw, own, pr, depth + 1)
            if "$ref" in r:
                target, tp = self.resolve(1, r["$ref"])
                out += self.sub(w, pw, target, tp, depth + 1)
            for i, part in enumerate(r.get("allOf", [])):
                out += self.sub(w, pw, part, f"{pr}/allOf/{i}", depth + 1)
            return out
        # each rule below is a sufficient condition: the first that proves the inclusion wins,
        # otherwise the reasons of the first rule that applied are given
        found: list[str] | None = None
        for rule in (self.writer_parts, self.same_one_of, self.writer_alternatives, self.reader_alternatives):
            reasons = rule(w, pw, r, pr, depth)
            if reasons == []:
                return []
            if found is None:
                found = reasons
        return self.plain(w, pw, r, pr, depth) if found is None else found

    def writer_parts(self, w: dict[str, Any], pw: str, r: Any, pr: str, depth: int) -> list[str] | None:
        """The writer is a conjunction: one node admitting at least as much, or any single part, must fit."""
        if "$ref" not in w and "allOf" not in w:
            return None
        parts: list[Any] = [{k: v for k, v in w.items() if k not in ("$ref", "allOf")}]
        if "$ref" in w:
            parts.append(self.deref(0, {"$ref": w["$ref"]}, pw)[0])
        parts += w.get("allOf", [])
        dicts = [p for p in parts if isinstance(p, dict)]
        merged = merge(dicts) if len(dicts) == len(parts) else None
        if merged is not None:
            return self.sub(merged, pw, r, pr, depth + 1)
        attempts = [self.sub(p, pw, r, pr, depth + 1) for p in parts]
        return [] if any(not a for a in attempts) else min(attempts, key=len)

    def same_one_of(self, w: dict[str, Any], pw: str, r: Any, pr: str, depth: int) -> list[str] | None:
        """Both sides pick exactly one of the same alternatives: compare what is left."""
        if "oneOf" not in r or "oneOf" not in w or not self.same_alternatives(w["oneOf"], pw, r["oneOf"], pr, depth):
            return None
        rest_w = {k: v for k, v in w.items() if k != "oneOf"}
        rest_r = {k: v for k, v in r.items() if k != "oneOf"}
        return self.sub(rest_w, pw, rest_r, pr, depth + 1) if constraining(rest_r) else []

    def writer_alternatives(self, w: dict[str, Any], pw: str, r: Any, pr: str, depth: int) -> list[str] | None:
        """Every alternative of the writer (with the writer's own constraints) must fit; None: no alternatives."""
        for key in ("anyOf", "oneOf"):
            if key in w:
                own = {k: v for k, v in w.items() if k != key}
                out = []
                for i, alt in enumerate(w[key]):
                    both = merge([own, alt]) if isinstance(alt, dict) else None
                    out += self.sub(both if both is not None else alt, f"{pw}/{key}/{i}", r, pr, depth + 1)
                if out and constraining(own) and not self.sub(own, pw, r, pr, depth + 1):
                    return []
                return out
        return None

    def reader_alternatives(self, w: dict[str, Any], pw: str, r: Any, pr: str, depth: int) -> list[str] | None:
        """The writer must fit one alternative of the reader; None: the reader has none."""
        for key in ("anyOf", "oneOf"):
            if key in r:
                own = {k: v for k, v in r.items() if k != key}
                out = self.sub(w, pw, own, pr, depth + 1) if constraining(own) else []
                if key == "oneOf" and not self.disjoint(r[key]):
                    return [*out, f"{self.at(pw, pr)}/oneOf: cannot prove each value matches exactly one alternative"]
                if not any(not self.sub(w, pw, alt, f"{pr}/{key}/{i}", depth + 1) for i, alt in enumerate(r[key])):
                    out.append(
                        f"{self.at(pw, pr) or '/'}: no alternative of the {self.r} {key} accepts all {self.w} values"
                    )
                return out
        return None

    def empty(self, node: Any, depth: int = 0) -> bool:
        """True when the writer's node visibly admits no value at all."""
        node = self.deref(0, node, "")[0]
        if node is False:
            return True
        if not isinstance(node, dict) or depth > 8:
            return False
        if node.get("type") == [] or node.get("enum") == []:
            return True
        if any(self.empty(p, depth + 1) for p in node.get("allOf", ())):
            return True
        return any(key in node and all(self.empty(p, depth + 1) for p in node[key]) for key in ("anyOf", "oneOf"))

    def values_fit(self, values: list[Any], w: Any, pw: str, r: Any, pr: str) -> list[str]:
        """The writer admits at most these values: ask the real validator which of them each side takes."""
        check_w, check_r = self.validator(0, w), self.validator(1, r)
        where = self.at(pw, pr) or "/"
        return [
            f"{where}: value {show(v)} allowed by the {self.w} schema is refused by the {self.r} schema"
            for v in values
            if check_w.is_valid(v) and not check_r.is_valid(v)
        ]

    def validator(self, side: int, node: Any) -> jsonschema_rs.Draft202012Validator:
        """A validator for one node of one side's document, its local $refs resolved in that document."""
        if self._registries[side] is None:
            root = self.roots[side]
            if isinstance(root, dict):
                root = {k: v for k, v in root.items() if k != "$id"}
            self._registries[side] = jsonschema_rs.Registry([(_DOCS[side], root)])
        return jsonschema_rs.Draft202012Validator(
            _absolute_refs(node, _DOCS[side]), registry=self._registries[side], validate_formats=True
        )

    def same_alternatives(self, ws: list[Any], pw: str, rs: list[Any], pr: str, depth: int) -> bool:
        if len(ws) != len(rs):
            return False
        for i, (a, b) in enumerate(zip(ws, rs, strict=True)):
            if self.sub(a, f"{pw}/oneOf/{i}", b, f"{pr}/oneOf/{i}", depth + 1):
                return False
            swapped = _Checker(self.roots[1], self.roots[0], self.r, self.w, True)
            if swapped.sub(b, f"{pr}/oneOf/{i}", a, f"{pw}/oneOf/{i}", depth + 1):
                return False
        return True

    def disjoint(self, alternatives: list[Any]) -> bool:
        """True when no value can match two of these (distinct types, or a required discriminator's values)."""
        nodes = [n for n in (self.deref(1, a, "")[0] for a in alternatives) if n is not False]
        if len(nodes) < 2:
            return True
        if not all(isinstance(n, dict) for n in nodes):
            return False
        for i, x in enumerate(nodes):
            for y in nodes[i + 1 :]:
                if not (self._types_apart(x, y) or self._values_apart(x, y) or self._discriminated(x, y)):
                    return False
        return True

    @staticmethod
    def _types_apart(x: dict[str, Any], y: dict[str, Any]) -> bool:
        tx, ty = type_set(x), type_set(y)
        return not any(covered(t, ty) or (t == "number" and "integer" in ty) for t in tx)

    @staticmethod
    def _values_apart(x: dict[str, Any], y: dict[str, Any]) -> bool:
        vx, vy = finite(x), finite(y)
        if vx is None or vy is None:
            return False
        return not ({canon(v) for v in vx} & {canon(v) for v in vy})

    def _discriminated(self, x: dict[str, Any], y: dict[str, Any]) -> bool:
        if not (type_set(x) <= {"object"} and type_set(y) <= {"object"}):
            return False  # required and properties say nothing about values that are not objects
        px, py = x.get("properties", {}), y.get("properties", {})
        for name in set(x.get("required", ())) & set(y.get("required", ())):
            a, b = self.deref(1, px.get(name), "")[0], self.deref(1, py.get(name), "")[0]
            if isinstance(a, dict) and isinstance(b, dict) and self._values_apart(a, b):
                return True
        return False


_DOCS = ("urn:meshscope:writer", "urn:meshscope:reader")
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def _absolute_refs(node: Any, base: str) -> Any:
    """A copy of a node whose local $refs name its document (``base``) in the registry."""
    if isinstance(node, list):
        return [_absolute_refs(v, base) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str) and v.startswith("#"):
            out[k] = base + v
        elif k in _DATA_KEYWORDS:
            out[k] = v
        elif k != "$id":
            out[k] = _absolute_refs(v, base)
    return out
