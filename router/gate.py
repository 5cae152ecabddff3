"""Governance at a relay: who may publish, read, join and administer, and what events must look like.

The gate turns the governance version the relay enforces into decisions: per
event at the origin (policy, then schema; a refusal leaves a drop record), per
subscriber and durable group (a read check applied to every event delivered,
events from the mesh included), and for the admin API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meshcore import flowrecord as fk
from meshcore.auth import Authenticator, Principal
from meshcore.document import SchemaViolation
from meshcore.governance import Governance
from meshcore.policy import Action, Decision
from router.envelope import Event
from router.hop import Subject
from router.subscription import GroupStore

ReadGate = Callable[[str], bool]
"""Whether a topic may be read; None stands for "everything subscribed to"."""


@dataclass(frozen=True)
class Refusal:
    """Why an event may not be published: 403 (a policy rule) or 422 (its schema), with the details."""

    status: int
    error: str
    details: dict[str, Any]


RecordRefused = Callable[[Subject, str, str], None]
"""Leaves the drop record of a refused event: (what it was, the status, who sent it)."""


class Gate:
    """Decisions from the governance version ``current()`` returns (it changes without a restart)."""

    def __init__(
        self,
        region: str,
        auth: Authenticator,
        groups: GroupStore,
        current: Callable[[], Governance],
        record_refused: RecordRefused,
    ) -> None:
        self.region = region
        self.auth = auth
        self.groups = groups
        self.current = current
        self.record_refused = record_refused
        self._group_gates: dict[str, ReadGate | None] = {}

    def changed(self) -> None:
        """A new governance version: forget the read checks derived from the old one."""
        self._group_gates.clear()

    def group_changed(self, group: str) -> None:
        self._group_gates.pop(group, None)

    def read_gate(self, principal: Principal | None) -> ReadGate | None:
        """The per-event read check of a subscriber (None: everything it subscribed to is readable)."""
        policy = self.current().policy
        if not policy.enforcing or principal is None:
            return None
        return policy.read_gate(principal, self.region)

    def group_gate(self, group: str) -> ReadGate | None:
        """A durable group receives what its owner may read."""
        if group not in self._group_gates:
            info = self.groups.groups.get(group)
            owner = self.auth.by_name.get(info.owner) if info and info.owner else None
            if owner is None and info is not None and info.owner:
                owner = Principal(info.owner)
            self._group_gates[group] = self.read_gate(owner)
        return self._group_gates[group]

    def authorize(self, principal: Principal, action: Action, resource: str) -> Decision:
        return self.current().policy.decide(principal, action, resource, self.region)

    def may_subscribe(self, principal: Principal, pattern: str) -> Decision:
        """Whether anything ``pattern`` matches may be read (the per-event gate does the rest)."""
        return self.current().policy.decide_subscription(principal, pattern, self.region)

    def may_administer(self, principal: Principal, resource: str) -> Decision:
        """Admins by role always may (so a policy cannot lock everyone out); others when a rule allows it."""
        if principal.has_role("admin") and not principal.anonymous:
            return Decision(True, None, f"{principal.name} has the admin role")
        if not self.current().policy.enforcing:
            return Decision(False, None, "without a policy only principals with the admin role may change governance")
        return self.authorize(principal, Action.ADMIN, resource)

    def check(self, events: list[Event], principal: Principal) -> list[Refusal | None]:
        """Policy and schema for each event at its origin; refused ones leave a drop record.

        An accepted event whose topic a schema governs carries the version it was checked against
        in its ``dataschema`` attribute.
        """
        gov = self.current()
        out: list[Refusal | None] = []
        for ev in events:
            decision = gov.policy.decide(principal, Action.PUBLISH, ev.topic, self.region)
            if not decision.allowed:
                out.append(Refusal(403, decision.reason, {"rule": decision.rule}))
                # the governance artifact behind a refusal: for a policy denial, the deciding rule
                ref = f"policy:{decision.rule or 'default-deny'}"
                self.record_refused(Subject.of_event(ev)._replace(dataschema=ref), fk.POLICY_DENIED, principal.name)
                continue
            body = ev.body
            named = body.get("dataschema") if isinstance(body.get("dataschema"), str) else None
            try:
                governed = gov.schemas.subject_for(ev.topic) if "data_base64" in body else None
                if governed is not None:
                    reason = "a governed topic takes JSON data; this event's data is bytes (data_base64)"
                    raise SchemaViolation("", reason, named or governed.latest.uri)
                uri = gov.schemas.validate(ev.topic, body.get("data"), named)
            except SchemaViolation as exc:
                details = {"pointer": exc.pointer, "reason": exc.reason, "dataschema": exc.schema_version}
                out.append(Refusal(422, str(exc), details))
                subject = Subject.of_event(ev)._replace(dataschema=exc.schema_version[:2048])
                self.record_refused(subject, fk.SCHEMA_REJECTED, principal.name)
                continue
            if uri is not None and named != uri:
                body["dataschema"] = uri
                ev.encoded = orjson.dumps(body)
                ev.size = len(ev.encoded)
            out.append(None)
        return out
