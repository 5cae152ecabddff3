"""The policy decision engine: specificity, default deny, caching, strict rule parsing, and properties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.document import DEFAULT_LIMITS, InvalidDocument, Limits
from meshcore.policy import Action, Effect, PolicyEngine, Rule, overlaps, parse_rules


@dataclass(frozen=True, slots=True)
class Who:
    name: str
    groups: frozenset[str] = frozenset()


def rule(
    rule_id: str,
    effect: str,
    who: str,
    topics: str,
    actions: str = "publish",
    regions: str = "",
) -> Rule:
    return Rule(
        rule_id,
        Effect(effect),
        tuple(who.split()),
        tuple(Action(a) for a in actions.split()),
        tuple(topics.split()),
        tuple(regions.split()),
    )


ALICE = Who("alice", frozenset({"billing"}))
CAROL = Who("carol", frozenset({"contractors", "billing"}))
BOB = Who("bob")
EU = "gcp:europe-west1"
US = "aws:us-east-1"

RULES = [
    rule("anyone-orders", "allow", "*", "orders.>"),
    rule("no-contractors", "deny", "group:contractors", "orders.>"),
    rule("carol-orders", "allow", "principal:carol", "orders.>"),
    rule("no-eu", "deny", "*", "orders.eu.>"),
    rule("eu-created", "allow", "*", "orders.*.created"),
    rule("deep", "deny", "*", "orders.*.>"),
    rule("us-only-payments", "allow", "*", "payments.>", regions=US),
    rule("tie-allow", "allow", "*", "audit.log"),
    rule("tie-deny", "deny", "*", "audit.log"),
    rule("first", "allow", "*", "metrics.*"),
    rule("second", "allow", "*", "metrics.*"),
    rule("readers", "allow", "group:billing", "orders.> invoices.>", actions="subscribe"),
]

# (case, principal, action, topic, region, allowed, deciding rule)
DECISIONS: list[tuple[str, Who, Action, str, str | None, bool, str | None]] = [
    ("a rule naming the principal beats a group", CAROL, Action.PUBLISH, "orders.x", None, True, "carol-orders"),
    ("'*' applies to anyone", BOB, Action.PUBLISH, "orders.x", None, True, "anyone-orders"),
    (
        "a rule naming a group beats '*'",
        Who("dan", frozenset({"contractors"})),
        Action.PUBLISH,
        "orders.x",
        None,
        False,
        "no-contractors",
    ),
    ("more literal tokens win", BOB, Action.PUBLISH, "orders.eu.paid", None, False, "no-eu"),
    ("no '>' beats '>' at equal literals", BOB, Action.PUBLISH, "orders.eu.created", None, True, "eu-created"),
    ("more tokens win at equal literals", BOB, Action.PUBLISH, "orders.us.paid", None, False, "deep"),
    ("regions beat no regions (inside)", BOB, Action.PUBLISH, "payments.card", US, True, "us-only-payments"),
    ("a rule with regions applies only there", BOB, Action.PUBLISH, "payments.card", EU, False, None),
    ("a rule with regions needs a region", BOB, Action.PUBLISH, "payments.card", None, False, None),
    ("deny beats allow at equal specificity", BOB, Action.PUBLISH, "audit.log", None, False, "tie-deny"),
    ("the first of equal rules is named", BOB, Action.PUBLISH, "metrics.cpu", None, True, "first"),
    ("denied by default", BOB, Action.PUBLISH, "weather.today", None, False, None),
    ("actions are separate", BOB, Action.SUBSCRIBE, "orders.x", None, False, None),
    ("a rule with several patterns", ALICE, Action.SUBSCRIBE, "invoices.eu", None, True, "readers"),
    ("an invalid topic is denied, not an error", BOB, Action.PUBLISH, "orders..x", None, False, None),
    ("a wildcard is not a topic", BOB, Action.PUBLISH, "orders.*", None, False, None),
]


@pytest.mark.parametrize(
    ("case", "who", "action", "topic", "region", "allowed", "rule_id"), DECISIONS, ids=[d[0] for d in DECISIONS]
)
def test_the_most_specific_rule_decides(
    case: str, who: Who, action: Action, topic: str, region: str | None, allowed: bool, rule_id: str | None
) -> None:
    decision = PolicyEngine(RULES).decide(who, action, topic, region)
    assert (decision.allowed, decision.rule) == (allowed, rule_id), decision
    assert decision.reason


def test_the_principal_beats_a_group_it_is_in() -> None:
    engine = PolicyEngine([rule("g", "deny", "group:billing", ">"), rule("p", "allow", "principal:alice", ">")])
    assert engine.decide(ALICE, Action.PUBLISH, "x").rule == "p"
    assert engine.decide(Who("eve", frozenset({"billing"})), Action.PUBLISH, "x").rule == "g"


def test_without_a_policy_everything_is_allowed_and_an_empty_policy_denies_everything() -> None:
    assert PolicyEngine(None).decide(BOB, Action.ADMIN, "policies").allowed
    assert PolicyEngine(None).decide(BOB, Action.PUBLISH, "not..valid").allowed  # the relay checks topics itself
    empty = PolicyEngine([])
    decision = empty.decide(BOB, Action.PUBLISH, "orders.x")
    assert (decision.allowed, decision.rule) == (False, None)
    assert "denied by default" in decision.reason


def test_reasons_name_the_rule_and_the_request() -> None:
    engine = PolicyEngine(RULES)
    assert engine.decide(BOB, Action.PUBLISH, "orders.eu.paid", EU).reason == (
        "rule 'no-eu' denies publish on 'orders.eu.paid' in gcp:europe-west1"
    )
    assert engine.decide(BOB, Action.JOIN, "workers", EU).reason == (
        "no rule allows 'bob' to join 'workers' in gcp:europe-west1: denied by default"
    )


def test_decisions_are_cached_with_a_bound() -> None:
    engine = PolicyEngine(RULES, cache_size=2)
    first = engine.decide(BOB, Action.PUBLISH, "orders.x")
    assert engine.decide(BOB, Action.PUBLISH, "orders.x") is first
    assert engine.decide(Who("bob", frozenset({"contractors"})), Action.PUBLISH, "orders.x") is not first
    for topic in ("a", "b", "c", "d"):
        engine.decide(BOB, Action.PUBLISH, topic)
    again = engine.decide(BOB, Action.PUBLISH, "orders.x")  # evicted: decided anew, same answer
    assert again is not first and again == first


def test_a_read_gate_filters_deliveries_per_topic() -> None:
    engine = PolicyEngine(
        [
            rule("r", "allow", "group:billing", "orders.>", "subscribe"),
            rule("d", "deny", "group:billing", "orders.secret.>", "subscribe"),
        ]
    )
    gate = engine.read_gate(ALICE, EU)
    assert [gate(t) for t in ("orders.a", "orders.secret.x", "invoices.a", "orders.a")] == [True, False, False, True]
    assert PolicyEngine(None).read_gate(BOB)("anything")


def test_a_subscription_is_refused_up_front_only_when_nothing_could_be_read() -> None:
    engine = PolicyEngine([rule("r", "allow", "group:billing", "orders.eu.>", "subscribe", regions=EU)])
    assert engine.decide_subscription(ALICE, "orders.>", EU).allowed
    assert engine.decide_subscription(ALICE, "*.eu.created", EU).rule == "r"
    assert not engine.decide_subscription(ALICE, "orders.us.>", EU).allowed
    assert not engine.decide_subscription(ALICE, "orders.>", US).allowed
    assert not engine.decide_subscription(BOB, "orders.>", EU).allowed
    assert not engine.decide_subscription(ALICE, "orders.>.x", EU).allowed


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("orders.>", "orders.eu.x", True), ("orders.*", "orders.eu.x", False), ("*.eu", "orders.*", True),
     (">", "a", True), ("a.b", "a.c", False), ("a.>", "a", False), ("a.*.>", "a.b", False), ("a.*.>", "*.b.c.d", True)],
)  # fmt: skip
def test_pattern_overlap(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


GOOD = {"id": "r1", "effect": "allow", "principals": ["group:billing"], "actions": ["publish"], "topics": ["orders.>"]}


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"actoins": ["publish"]}, "rules[0].actoins", "unknown key 'actoins'"),
        ({"effect": "maybe"}, "rules[0].effect", "must be one of allow, deny"),
        ({"topics": ["orders.>.x"]}, "rules[0].topics[0]", "'>' must be the last token"),
        ({"topics": []}, "rules[0].topics", "at least one"),
        ({"principals": ["user:bob"]}, "rules[0].principals[0]", "'principal:NAME'"),
        ({"principals": ["group:bad name"]}, "rules[0].principals[0]", "'group:NAME'"),
        ({"actions": ["publish", "publish"]}, "rules[0].actions", "twice"),
        ({"actions": "publish"}, "rules[0].actions", "must be a list"),
        ({"regions": ["Not A Region"]}, "rules[0].regions[0]", "does not match"),
        ({"id": "has space"}, "rules[0].id", "does not match"),
        ({"description": 5}, "rules[0].description", "must be a string"),
    ],
)
def test_rules_are_read_strictly(change: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        parse_rules([{**GOOD, **change}], "rules")
    assert caught.value.path == path
    assert words in caught.value.reason


def test_rule_ids_are_unique_and_the_count_is_bounded() -> None:
    with pytest.raises(InvalidDocument, match=r"rules\[1\]\.id: rule id 'r1' is used twice"):
        parse_rules([GOOD, GOOD], "rules")
    with pytest.raises(InvalidDocument, match="the limit is 1"):
        parse_rules([GOOD, {**GOOD, "id": "r2"}], "rules", Limits(max_rules=1))
    [parsed] = parse_rules([{**GOOD, "regions": [EU], "description": "billing writes orders"}], "rules")
    assert parse_rules([parsed.to_json()], "rules", DEFAULT_LIMITS) == (parsed,)


# --- properties ----------------------------------------------------------------------------------

TOKENS = ["orders", "eu", "us", "created", "x"]
topics = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map(".".join)
patterns = st.builds(
    lambda tokens, tail: ".".join(tokens + ([">"] if tail else [])) or ">",
    st.lists(st.sampled_from([*TOKENS, "*"]), max_size=3),
    st.booleans(),
)
NAMES = ["alice", "bob", "carol"]
GROUPS = ["billing", "ops"]
regions = st.none() | st.sampled_from([EU, US])
principals = st.builds(Who, st.sampled_from(NAMES), st.frozensets(st.sampled_from(GROUPS)))
selectors = st.sampled_from(["*", *(f"principal:{n}" for n in NAMES), *(f"group:{g}" for g in GROUPS)])
rules = st.builds(
    lambda i, effect, who, actions, pats, regs: Rule(f"r{i}", effect, who, actions, pats, regs),
    st.integers(0, 10**6),
    st.sampled_from(Effect),
    st.lists(selectors, min_size=1, max_size=2, unique=True).map(tuple),
    st.lists(st.sampled_from(Action), min_size=1, max_size=2, unique=True).map(tuple),
    st.lists(patterns, min_size=1, max_size=2, unique=True).map(tuple),
    st.lists(st.sampled_from([EU, US]), max_size=1).map(tuple),
)
rule_sets = st.lists(rules, max_size=20, unique_by=lambda r: r.id)


@settings(database=None, max_examples=300, deadline=None)
@given(
    rule_sets,
    st.builds(Who, st.text(max_size=20), st.frozensets(st.text(max_size=8), max_size=3)),
    st.sampled_from(Action),
    st.text(max_size=40) | topics,
    st.none() | st.text(max_size=20),
)
def test_the_engine_never_raises(
    rule_set: list[Rule], who: Who, action: Action, topic: str, region: str | None
) -> None:
    decision = PolicyEngine(rule_set).decide(who, action, topic, region)
    assert isinstance(decision.allowed, bool) and decision.reason
    assert PolicyEngine(rule_set).decide_subscription(who, topic, region).reason


@settings(database=None, max_examples=200, deadline=None)
@given(principals, st.sampled_from(Action), topics, regions)
def test_one_allow_for_everyone_and_everything_allows_everything(
    who: Who, action: Action, topic: str, region: str | None
) -> None:
    engine = PolicyEngine([Rule("all", Effect.ALLOW, ("*",), tuple(Action), (">",))])
    assert engine.decide(who, action, topic, region) == engine.decide(who, action, topic, region)
    assert engine.decide(who, action, topic, region).allowed


@settings(database=None, max_examples=200, deadline=None)
@given(rule_sets, principals, st.sampled_from(Action), topics, regions)
def test_deny_by_default_once_any_rule_exists(
    rule_set: list[Rule], who: Who, action: Action, topic: str, region: str | None
) -> None:
    stranger = Who("stranger", frozenset({"nobody"}))
    only_others = [r for r in rule_set if "*" not in r.principals]
    decision = PolicyEngine(only_others).decide(stranger, action, topic, region)
    assert (decision.allowed, decision.rule) == (False, None)


@settings(database=None, max_examples=300, deadline=None)
@given(rule_sets, principals, st.sampled_from(Action), topics, regions)
def test_a_more_specific_deny_always_wins(
    rule_set: list[Rule], who: Who, action: Action, topic: str, region: str | None
) -> None:
    before = PolicyEngine(rule_set).decide(who, action, topic, region)
    exact = Rule(
        "exact-deny", Effect.DENY, (f"principal:{who.name}",), (action,), (topic,), (region,) if region else ()
    )
    after = PolicyEngine([*rule_set, exact]).decide(who, action, topic, region)
    assert not after.allowed
    if before.allowed:
        assert after.rule == "exact-deny"


@pytest.mark.parametrize(
    ("rules", "allowed", "decided_by"),
    [
        # the topic is the first measure of specificity: a deny for everyone on secret.> holds against
        # a group's allow on everything
        (
            [rule("all", "allow", "group:billing", ">"), rule("no-secrets", "deny", "*", "secret.>")],
            False,
            "no-secrets",
        ),
        # as precise about the topic, and more about the principal: the exception wins
        (
            [
                rule("no-secrets", "deny", "*", "secret.>"),
                rule("billing-secrets", "allow", "group:billing", "secret.>"),
            ],
            True,
            "billing-secrets",
        ),
        # equal in everything: deny beats allow
        ([rule("a", "allow", "group:billing", "secret.>"), rule("d", "deny", "group:billing", "secret.>")], False, "d"),
    ],
)
def test_topic_specificity_comes_before_who(rules: list[Rule], allowed: bool, decided_by: str) -> None:
    decision = PolicyEngine(rules).decide(ALICE, Action.PUBLISH, "secret.plans")
    assert (decision.allowed, decision.rule) == (allowed, decided_by)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (">", "x.y", True),
        ("secret.>", "secret.>", True),
        ("secret.>", "secret.*.x", True),
        ("secret.*", "secret.>", False),
        ("secret.*", "secret.x", True),
        ("x.y", "x.*", False),
        ("*.y", "x.y", True),
        ("a.>", "a", False),
    ],
)
def test_covers(a: str, b: str, expected: bool) -> None:
    from meshcore.policy import covers

    assert covers(a, b) is expected


def test_a_subscription_fully_denied_is_refused_up_front() -> None:
    engine = PolicyEngine(
        [
            rule("reads", "allow", "*", ">", "subscribe"),
            rule("no-secrets", "deny", "*", "secret.>", "subscribe"),
            rule("public", "allow", "*", "secret.public", "subscribe"),
        ]
    )
    assert engine.decide_subscription(BOB, "orders.>").allowed
    assert engine.decide_subscription(BOB, "secret.>").allowed  # secret.public is readable
    refused = PolicyEngine(
        [rule("reads", "allow", "*", ">", "subscribe"), rule("no", "deny", "*", "secret.>", "subscribe")]
    )
    decision = refused.decide_subscription(BOB, "secret.>")
    assert not decision.allowed and decision.rule == "no"
