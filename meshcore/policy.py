"""Who may publish, subscribe, join or administer what, and where: one decision per distinct request.

A rule names principals, actions, topic patterns, optionally regions, and an
effect::

    id = "eu-orders-readers"      effect = "allow"
    principals = ["group:billing", "principal:audit-bot"]     ("*" is anyone)
    actions = ["subscribe"]       (publish | subscribe | join | admin)
    topics = ["orders.eu.>"]      (the NATS grammar of meshcore.topic)
    regions = ["gcp:europe-west1"] (where the request is made; absent: anywhere)

The resource a request names is the topic for publish and subscribe, the
durable group's name for join (what a member then reads is checked as
subscribe, topic by topic), and the governed resource, ``policies`` or
``schemas``, for admin (replacing the whole document takes both); all use the
same dot-token grammar.

With no policy document at all every request is allowed (the relay then only
authenticates). Once a policy document is loaded, even an empty one, anything no
rule allows is denied: a relay never falls open because an admin deleted the
last rule.

**Specificity.** Of the rules that match a request, the most specific one
decides, and the decision names it. A rule's specificity for a request is the
tuple below, compared left to right (bigger wins). The topic comes first: a
rule about ``secret.>`` says more about a secret topic than a rule about
``>`` says about its principal, so ``deny * secret.>`` holds against
``allow group:testers >``, and letting testers publish secrets takes a rule
as precise about the topic (``allow group:testers secret.>``), which then wins
by step 4:

1. literal tokens in its pattern that matched (``orders.eu.>`` has 2); a rule
   with several patterns takes the matching pattern that ranks highest by 1-3;
2. 1 if that pattern has no ``>``, else 0 (``orders.*.created`` beats ``orders.eu.>``);
3. the pattern's token count (``orders.*.>`` beats ``orders.>``);
4. who: 2 if it names the principal (``principal:NAME``), 1 if one of the
   principal's groups (``group:NAME``), 0 if ``*``; a rule naming several takes
   its best match;
5. 1 if the rule lists regions, else 0;
6. at equal specificity deny beats allow, and among equals of one effect the
   rule written first is named.

Decisions are cached per (principal, groups, action, topic, region) in a
bounded dict (oldest entry evicted first); a new document version builds a new
engine, which is the only invalidation there is. ``ReadGate`` answers the
per-delivered-event question "may this subscriber read topic T" with one dict
lookup once warm.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from meshcore.document import DEFAULT_LIMITS, ID_RE, Fields, InvalidDocument, Limits, child
from meshcore.names import GROUP, PRINCIPAL, REGION_ID
from meshcore.topic import InvalidTopic, matches, validate_pattern, validate_topic


class Action(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    JOIN = "join"
    ADMIN = "admin"


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Caller(Protocol):
    """Whoever makes a request: a name and group names (``meshcore.auth.Principal`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def groups(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule as written by an admin (see the module docstring for the grammar)."""

    id: str
    effect: Effect
    principals: tuple[str, ...]
    actions: tuple[Action, ...]
    topics: tuple[str, ...]
    regions: tuple[str, ...] = ()
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "effect": str(self.effect),
            "principals": list(self.principals),
            "actions": [str(a) for a in self.actions],
            "topics": list(self.topics),
        }
        if self.regions:
            out["regions"] = list(self.regions)
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request: allowed or not, the id of the rule that decided (None: the default), and why."""

    allowed: bool
    rule: str | None
    reason: str


def pattern_rank(pattern: str) -> tuple[int, int, int]:
    """Steps 2-4 of specificity: (literal tokens, 1 if no '>', token count)."""
    tokens = pattern.split(".")
    literals = sum(1 for t in tokens if t not in ("*", ">"))
    return literals, 0 if tokens[-1] == ">" else 1, len(tokens)


def parse_rules(raw: object, path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Rule, ...]:
    """Rules from a list of tables (TOML ``[[rule]]`` or JSON), refusing unknown keys, bad patterns, repeated ids."""
    if not isinstance(raw, list):
        raise InvalidDocument(path, "must be a list of rules")
    if len(raw) > limits.max_rules:
        raise InvalidDocument(path, f"holds {len(raw)} rules; the limit is {limits.max_rules}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        rule = parse_rule(item, child(path, i), limits)
        if rule.id in seen:
            raise InvalidDocument(child(child(path, i), "id"), f"rule id {rule.id!r} is used twice")
        seen.add(rule.id)
        rules.append(rule)
    return tuple(rules)


_ACTIONS = tuple(str(a) for a in Action)
_EFFECTS = tuple(str(e) for e in Effect)


def parse_rule(raw: object, path: str, limits: Limits = DEFAULT_LIMITS) -> Rule:
    f = Fields(raw, path, ("id", "effect", "principals", "actions", "topics", "regions", "description"))
    rule_id = f.text("id", pattern=ID_RE, max_length=64)
    effect = Effect(f.text("effect", choices=_EFFECTS))
    n = limits.max_items_per_field
    principals = f.texts("principals", max_items=n, max_length=limits.max_text)
    for i, who in enumerate(principals):
        _check_principal(who, child(child(path, "principals"), i))
    actions = tuple(Action(a) for a in f.texts("actions", max_items=len(_ACTIONS), choices=_ACTIONS))
    topics = f.texts("topics", max_items=n)
    for i, pattern in enumerate(topics):
        try:
            validate_pattern(pattern)
        except InvalidTopic as exc:
            raise InvalidDocument(child(child(path, "topics"), i), str(exc)) from None
    regions = f.texts("regions", required=False, max_items=n, max_length=97, pattern=REGION_ID)
    description = f.text("description", required=False, max_length=1000)
    return Rule(rule_id, effect, principals, actions, topics, regions, description)


def _check_principal(who: str, path: str) -> None:
    if who == "*":
        return
    kind, _, name = who.partition(":")
    grammar = {"principal": PRINCIPAL, "group": GROUP}.get(kind)
    if grammar is None or not grammar.fullmatch(name):
        raise InvalidDocument(
            path, f"{who!r} must be '*', 'principal:NAME' or 'group:NAME' (names as meshcore.names defines them)"
        )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A rule prepared for matching: selectors as sets, patterns most specific first."""

    rule: Rule
    order: int
    names: frozenset[str]
    groups: frozenset[str]
    anyone: bool
    regions: frozenset[str]
    patterns: tuple[tuple[tuple[int, int, int], str], ...]

    @classmethod
    def of(cls, rule: Rule, order: int) -> _Compiled:
        names = frozenset(p.partition(":")[2] for p in rule.principals if p.startswith("principal:"))
        groups = frozenset(p.partition(":")[2] for p in rule.principals if p.startswith("group:"))
        ranked = sorted(((pattern_rank(p), p) for p in rule.topics), reverse=True)
        return cls(rule, order, names, groups, "*" in rule.principals, frozenset(rule.regions), tuple(ranked))

    def who(self, principal: Caller) -> int:
        """Step 1 of specificity, or -1 when the rule does not name the principal at all."""
        if principal.name in self.names:
            return 2
        if self.groups and not self.groups.isdisjoint(principal.groups):
            return 1
        return 0 if self.anyone else -1


_Key = tuple[int, int, int, int, int, int, int]


class PolicyEngine:
    """The decisions of one policy document version; build a new engine for a new version."""

    __slots__ = ("_by_action", "_cache", "_cache_size", "enforcing", "rules")

    def __init__(self, rules: Iterable[Rule] | None, *, cache_size: int = 65_536) -> None:
        """``rules=None`` means no policy document: allow everything. Any list, even empty, enforces."""
        self.enforcing = rules is not None
        self.rules: tuple[Rule, ...] = tuple(rules or ())
        self._by_action: dict[Action, list[_Compiled]] = {a: [] for a in Action}
        for order, rule in enumerate(self.rules):
            compiled = _Compiled.of(rule, order)
            for action in rule.actions:
                self._by_action[action].append(compiled)
        self._cache: dict[tuple[str, frozenset[str], Action, str, str | None], Decision] = {}
        self._cache_size = max(1, cache_size)

    def decide(self, principal: Caller, action: Action, topic: str, region: str | None = None) -> Decision:
        """May ``principal`` do ``action`` on ``topic`` (a concrete topic or resource) at a relay in ``region``?"""
        key = (principal.name, principal.groups, action, topic, region)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decision = self._decide(principal, action, topic, region)
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = decision
        return decision

    def _decide(self, principal: Caller, action: Action, topic: str, region: str | None) -> Decision:
        if not self.enforcing:
            return _ALLOW_ALL
        try:
            validate_topic(topic)
        except InvalidTopic as exc:
            return Decision(False, None, f"denied: {exc}")
        best: _Compiled | None = None
        best_key: _Key | None = None
        for c in self._by_action.get(action, ()):
            if c.regions and region not in c.regions:
                continue
            who = c.who(principal)
            if who < 0:
                continue
            for rank, pattern in c.patterns:
                if matches(pattern, topic):
                    deny = 1 if c.rule.effect is Effect.DENY else 0
                    key = (*rank, who, 1 if c.regions else 0, deny, -c.order)
                    if best_key is None or key > best_key:
                        best, best_key = c, key
                    break
        where = f" in {region}" if region else ""
        if best is None:
            return Decision(
                False, None, f"no rule allows {principal.name!r} to {action} {topic!r}{where}: denied by default"
            )
        verb = "allows" if best.rule.effect is Effect.ALLOW else "denies"
        return Decision(
            best.rule.effect is Effect.ALLOW, best.rule.id, f"rule {best.rule.id!r} {verb} {action} on {topic!r}{where}"
        )

    def decide_subscription(self, principal: Caller, pattern: str, region: str | None = None) -> Decision:
        """Refuse a subscription up front when nothing it could match may be read.

        That is the case when no allow rule overlaps the pattern, or when one deny rule covers
        every topic of the pattern and no overlapping allow rule is at least as specific. Allowed
        here does not mean every event is readable: deliveries still go through ``read_gate``.
        """
        if not self.enforcing:
            return _ALLOW_ALL
        try:
            validate_pattern(pattern)
        except InvalidTopic as exc:
            return Decision(False, None, f"denied: {exc}")
        allows: list[tuple[tuple[int, ...], _Compiled]] = []
        denies: list[tuple[tuple[int, ...], _Compiled]] = []
        for c in self._by_action[Action.SUBSCRIBE]:
            who = c.who(principal)
            if who < 0 or (c.regions and region not in c.regions):
                continue
            regions = 1 if c.regions else 0
            if c.rule.effect is Effect.ALLOW:
                for rank, p in c.patterns:
                    if overlaps(p, pattern):
                        allows.append(((*rank, who, regions), c))
                        break
            else:
                for rank, p in c.patterns:
                    if covers(p, pattern):
                        denies.append(((*rank, who, regions), c))
                        break
        if not allows:
            return Decision(False, None, f"no rule allows {principal.name!r} to subscribe to any topic of {pattern!r}")
        if denies:
            deny_key, deny = max(denies, key=lambda d: d[0])
            if all(key < deny_key for key, _ in allows):
                return Decision(False, deny.rule.id, f"rule {deny.rule.id!r} denies every topic of {pattern!r}")
        best = max(allows, key=lambda a: a[0])[1]
        return Decision(True, best.rule.id, f"rule {best.rule.id!r} allows some topics of {pattern!r}")

    def read_gate(self, principal: Caller, region: str | None = None) -> ReadGate:
        """The per-event check for one subscriber: ``gate(topic) -> bool``."""
        return ReadGate(self, principal, region)


_ALLOW_ALL = Decision(True, None, "no policy is loaded: allowed")


def overlaps(a: str, b: str) -> bool:
    """True when some topic matches both patterns."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


def covers(a: str, b: str) -> bool:
    """True when every topic that matches pattern ``b`` also matches pattern ``a``."""
    ta, tb = a.split("."), b.split(".")
    for i, x in enumerate(ta):
        if x == ">":
            return len(tb) > i
        if i >= len(tb):
            return False
        y = tb[i]
        if y == ">":
            return False
        if x != "*" and (y == "*" or x != y):
            return False
    return len(ta) == len(tb)


class ReadGate:
    """May one subscriber read an event on this topic? One dict lookup per delivered event once warm."""

    __slots__ = ("_cache", "_engine", "_principal", "_region", "max_topics")

    def __init__(self, engine: PolicyEngine, principal: Caller, region: str | None, max_topics: int = 4096):
        self._engine = engine
        self._principal = principal
        self._region = region
        self._cache: dict[str, bool] = {}
        self.max_topics = max_topics

    def __call__(self, topic: str) -> bool:
        hit = self._cache.get(topic)
        if hit is None:
            hit = self._engine.decide(self._principal, Action.SUBSCRIBE, topic, self._region).allowed
            if len(self._cache) >= self.max_topics:
                del self._cache[next(iter(self._cache))]
            self._cache[topic] = hit
        return hit
