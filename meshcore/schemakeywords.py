"""How one plain JSON Schema node compares to another, keyword by keyword (for meshcore.schemacompat).

The structural work (following $ref, splitting allOf, anyOf and oneOf, proving
recursive schemas) lives in meshcore.schemacompat; once both sides are plain
nodes, what remains is a table of keywords, each with the one question "does
the reader's constraint admit everything the writer's admits?": types with
integer inside number, the numeric, string, array and object bounds (integer
bounds normalised: ``> 0`` is ``>= 1`` for integers), multipleOf by decimal
division, pattern and format compared as written, properties against the
other side's additionalProperties (open and closed content models), and
prefixItems/items index by index. Every answer is a sentence starting with the
JSON pointer of the place in the new schema.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "$comment", "$anchor", "$dynamicAnchor", "$defs", "definitions", "title", "description",
        "default", "examples", "deprecated", "readOnly", "writeOnly", "contentEncoding", "contentMediaType",
        "contentSchema",
    }
)  # fmt: skip
HANDLED = frozenset(
    {
        "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties", "items",
        "prefixItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
        "maxLength", "pattern", "format", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
        "$ref", "allOf", "anyOf", "oneOf",
    }
)  # fmt: skip
_GROUPS = (frozenset({"contains", "minContains", "maxContains"}), frozenset({"if", "then", "else"}))
ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
_NUMERIC = frozenset({"number", "integer"})


def _esc(key: str | int) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def constraining(node: dict[str, Any]) -> bool:
    return any(k not in ANNOTATIONS for k in node)


def type_set(node: dict[str, Any]) -> frozenset[str]:
    t = node.get("type")
    if t is None:
        return ALL_TYPES
    return frozenset([t] if isinstance(t, str) else t)


def covered(t: str, accepted: frozenset[str]) -> bool:
    return t in accepted or (t == "integer" and "number" in accepted)


def finite(node: dict[str, Any]) -> list[Any] | None:
    """The values a node admits when it lists them (const, enum, or a null/boolean type), else None."""
    if "const" in node:
        return [node["const"]]
    if "enum" in node:
        return list(node["enum"])
    kinds = type_set(node)
    if kinds <= {"null", "boolean"}:
        return ([None] if "null" in kinds else []) + ([True, False] if "boolean" in kinds else [])
    return None


def show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def merge(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One node for the conjunction of ``parts`` when it admits at least as much (keys apart, groups unsplit)."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k in out and not same(out[k], v):
                return None
            out[k] = v
    for group in _GROUPS:
        if sum(1 for p in parts if group & p.keys()) > 1:
            return None
    return out


class Unsure(Exception):
    """The checker cannot show the inclusion; the message says why."""


def _constrains(schema: Any) -> bool:
    return schema is False or (isinstance(schema, dict) and constraining(schema))


def same(a: Any, b: Any) -> bool:
    """Equal as JSON texts: Python's True == 1 must not make two schemas the same."""
    return a is b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def canon(value: Any) -> str:
    """JSON equality as JSON Schema means it: 1 == 1.0, but true != 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _bound(node: dict[str, Any], inclusive: str, exclusive: str, sign: int, integers: bool) -> tuple[Any, bool] | None:
    """The tighter of a node's inclusive and exclusive bound on one side: (value, exclusive)."""
    found = [(node[k], k == exclusive) for k in (inclusive, exclusive) if isinstance(node.get(k), int | float)]
    if not found:
        return None
    value, excl = max(found, key=lambda b: (sign * b[0], b[1]))
    if integers:  # an integer-only writer: > 0.5 is >= 1, < 9.5 is <= 9
        d = Decimal(str(value))
        if sign > 0:
            value = int(d.to_integral_value(ROUND_FLOOR)) + 1 if excl else int(d.to_integral_value(ROUND_CEILING))
        else:
            value = int(d.to_integral_value(ROUND_CEILING)) - 1 if excl else int(d.to_integral_value(ROUND_FLOOR))
        excl = False
    return value, excl


def _kinds(types: frozenset[str]) -> str:
    return "any type" if types == ALL_TYPES else " or ".join(sorted(types)) or "no type"


def _shown(bound: tuple[Any, bool] | None, sign: int) -> str:
    if bound is None:
        return "none"
    return f"{'>' if sign > 0 else '<'}{'' if bound[1] else '='} {bound[0]}"


def _divides(step: Any, multiple: Any) -> bool:
    try:
        quotient = Decimal(str(multiple)) / Decimal(str(step))
    except (InvalidOperation, ZeroDivisionError):
        return False
    return quotient == quotient.to_integral_value()


class KeywordRules:
    """Keyword comparisons of a writer node with a reader node; ``sub`` recurses into subschemas."""

    w: str
    r: str
    report_reader: bool

    def at(self, pw: str, pr: str) -> str:
        """The pointer to report: into the new schema."""
        return pr if self.report_reader else pw

    def sub(self, w: Any, pw: str, r: Any, pr: str, depth: int) -> list[str]:
        raise NotImplementedError

    def plain(self, w: dict[str, Any], pw: str, r: dict[str, Any], pr: str, depth: int) -> list[str]:
        here = self.at(pw, pr)
        out: list[str] = []
        for key in sorted(r):
            if key not in HANDLED and key not in ANNOTATIONS and not same(w.get(key), r[key]):
                out.append(f"{here}/{_esc(key)}: cannot prove compatible: '{key}' differs and is not understood")
        tw, tr = type_set(w), type_set(r)
        lost = sorted(t for t in tw if not covered(t, tr))
        if lost:
            out.append(f"{here}/type: type changed from {_kinds(tw)} to {_kinds(tr)}")
        common = frozenset(t for t in tw if covered(t, tr))
        if "enum" in r or "const" in r:
            key = "enum" if "enum" in r else "const"
            out.append(
                f"{here}/{key}: the {self.r} schema allows only listed values; the {self.w} schema allows others"
            )
        if common & _NUMERIC:
            out += self.numbers(w, r, here, integers_only=not ({"number"} & tw))
        if "string" in common:
            out += self.bounds(w, r, here, "minLength", "maxLength")
            out += self.same(w, r, here, ("pattern", "format"))
        if "array" in common:
            out += self.bounds(w, r, here, "minItems", "maxItems")
            if r.get("uniqueItems") and not w.get("uniqueItems"):
                out.append(f"{here}/uniqueItems: the {self.r} schema requires unique items; the {self.w} does not")
            out += self.arrays(w, pw, r, pr, depth)
        if "object" in common:
            out += self.bounds(w, r, here, "minProperties", "maxProperties")
            out += self.objects(w, pw, r, pr, depth)
        return out

    def same(self, w: dict[str, Any], r: dict[str, Any], here: str, keys: tuple[str, ...]) -> list[str]:
        return [
            f"{here}/{k}: {k} {show(r[k])} of the {self.r} schema differs from the {self.w} schema's "
            f"{show(w[k]) if k in w else '(none)'}"
            for k in keys
            if k in r and not same(w.get(k), r[k])
        ]

    def bounds(self, w: dict[str, Any], r: dict[str, Any], here: str, low: str, high: str) -> list[str]:
        out = []
        if low in r and w.get(low, 0) < r[low]:
            out.append(f"{here}/{low}: {low} raised from {w.get(low, 0)} to {r[low]}")
        if high in r and (high not in w or w[high] > r[high]):
            out.append(f"{here}/{high}: {high} lowered from {w.get(high, 'none')} to {r[high]}")
        return out

    def numbers(self, w: dict[str, Any], r: dict[str, Any], here: str, integers_only: bool) -> list[str]:
        out = []
        for side, inclusive, exclusive, sign in (
            ("lower", "minimum", "exclusiveMinimum", 1),
            ("upper", "maximum", "exclusiveMaximum", -1),
        ):
            bw, br = _bound(w, inclusive, exclusive, sign, integers_only), _bound(r, inclusive, exclusive, sign, False)
            if br is None:
                continue
            ok = bw is not None and (sign * bw[0] > sign * br[0] or (bw[0] == br[0] and (bw[1] or not br[1])))
            if not ok:
                key = exclusive if br[1] else inclusive
                out.append(
                    f"{here}/{key}: {side} bound tightened from {_shown(bw, sign)} ({self.w}) "
                    f"to {_shown(br, sign)} ({self.r})"
                )
        if "multipleOf" in r:
            step_w = w.get("multipleOf", 1 if integers_only else None)
            if step_w is None or not _divides(r["multipleOf"], step_w):
                out.append(
                    f"{here}/multipleOf: multipleOf {r['multipleOf']} does not divide the {self.w} schema's {step_w}"
                )
        return out

    def arrays(self, w: dict[str, Any], pw: str, r: dict[str, Any], pr: str, depth: int) -> list[str]:
        out: list[str] = []
        pre_w, pre_r = w.get("prefixItems", []), r.get("prefixItems", [])
        items_w, items_r = w.get("items", True), r.get("items", True)
        longest = w.get("maxItems")
        for i in range(max(len(pre_w), len(pre_r))):
            if longest is not None and i >= longest:
                return out
            sw, qw = (pre_w[i], f"{pw}/prefixItems/{i}") if i < len(pre_w) else (items_w, f"{pw}/items")
            sr, qr = (pre_r[i], f"{pr}/prefixItems/{i}") if i < len(pre_r) else (items_r, f"{pr}/items")
            if sw is False:
                return out
            out += self.sub(sw, qw, sr, qr, depth + 1)
        if longest is None or longest > max(len(pre_w), len(pre_r)):
            out += self.sub(items_w, f"{pw}/items", items_r, f"{pr}/items", depth + 1)
        return out

    def objects(self, w: dict[str, Any], pw: str, r: dict[str, Any], pr: str, depth: int) -> list[str]:
        out: list[str] = []
        here = self.at(pw, pr)
        pat_w, pat_r = w.get("patternProperties", {}), r.get("patternProperties", {})
        if not same(pat_w, pat_r):
            return [f"{here}/patternProperties: cannot prove compatible: patternProperties changed"]
        props_w, props_r = w.get("properties", {}), r.get("properties", {})
        add_w, add_r = w.get("additionalProperties", True), r.get("additionalProperties", True)
        required_w = set(w.get("required", ()))
        for name in sorted(set(r.get("required", ())) - required_w):
            out.append(f"{here}/required: '{name}' is required by the {self.r} schema but not by the {self.w} schema")
        for name in sorted(set(props_w) | set(props_r)):
            sw, qw = self._property(props_w, pat_w, add_w, name, pw)
            sr, qr = self._property(props_r, pat_r, add_r, name, pr)
            if name not in props_w and sw is True and _constrains(sr):
                out.append(
                    f"{self.at(qw, qr)}: '{name}' is constrained by the {self.r} schema, but the {self.w} schema "
                    "allows it with any value (open content model)"
                )
            elif name not in props_r and sr is False and sw is not False:
                out.append(
                    f"{self.at(qw, qr)}: '{name}' is allowed by the {self.w} schema but refused by the "
                    f"{self.r} schema (additionalProperties is false)"
                )
            else:
                out += self.sub(sw, qw, sr, qr, depth + 1)
        if add_w is True and add_r is not True and _constrains(add_r):
            out.append(
                f"{here}/additionalProperties: the {self.r} schema restricts properties the {self.w} schema leaves open"
            )
        else:
            out += self.sub(add_w, f"{pw}/additionalProperties", add_r, f"{pr}/additionalProperties", depth + 1)
        return out

    @staticmethod
    def _property(
        props: dict[str, Any], patterns: dict[str, Any], additional: Any, name: str, ptr: str
    ) -> tuple[Any, str]:
        if name in props:
            return props[name], f"{ptr}/properties/{_esc(name)}"
        matching = []
        for pattern, schema in patterns.items():
            try:
                if re.search(pattern, name):
                    matching.append(schema)
            except re.error as exc:
                raise Unsure(f"pattern {pattern!r} cannot be evaluated") from exc
        if matching:
            return {"allOf": matching}, f"{ptr}/properties/{_esc(name)}"
        return additional, f"{ptr}/properties/{_esc(name)}"
