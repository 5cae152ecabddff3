"""The governance admin API of a relay: any relay reads its region's copy, and takes changes for the authority.

Reading needs a principal; writing needs the admin role or a policy rule
allowing ``admin`` on the resource (``policies`` or ``schemas``). Each change
gets a version id from the governance authority (``router.authority``: the
relays of the home region, directly or over the mesh) and names its author
(the principal); the relay that took the change enforces it at once, every
region within seconds. A change is made on the version the relay enforces, or
on the one an ``If-Match: <version id>`` header names, and is refused (409)
when another version came first.

    GET  /v1/governance            {"enforced": id, "document": {...} | null, "history": [...]}
    PUT  /v1/governance            {"policies": [...] | null, "subjects": [...]}   replace everything
    GET  /v1/policies              {"version": id, "policies": [...] | null}
    PUT  /v1/policies              {"policies": [...] | null}                        replace the rules
    GET  /v1/schemas               {"version": id, "subjects": [{subject, compatibility, versions: n}]}
    GET  /v1/schemas/{subject}     {"subject", "compatibility", "versions": [{"version", "uri", "schema"}]}
    POST /v1/schemas/{subject}     {"schema": {...}, "compatibility"?: mode}   -> 201 the next version

Answers: 400 a document that is not valid (with the path of the fault), 409
an incompatible schema (with the reasons) or a change made on a version that
is no longer the newest (with the newest), 401/403, 503 the region's store
or the authority unreachable (the last version is still enforced).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcore.auth import Principal
from meshcore.body import BodyTimeout, BodyTooLarge, read_limited
from meshcore.document import IncompatibleSchema, InvalidDocument
from meshcore.errors import StreamUnavailable
from meshcore.governance import (
    VERSION_ID,
    GovernanceConflict,
    GovernanceContent,
    add_schema_version,
    parse_content,
    to_json,
)
from meshcore.schemacompat import Compatibility
from meshcore.schemas import Subject
from router.authority import AuthorityUnavailable, ChangeRefused
from router.relay import Relay

MAX_ADMIN_BODY = 4 << 20

PrincipalOf = Callable[[Request], Principal | None]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _subject_json(s: Subject, with_schemas: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"subject": s.pattern, "compatibility": str(s.compatibility), "versions": len(s.versions)}
    if with_schemas:
        out["versions"] = [{"version": v.version, "uri": v.uri, "schema": v.schema} for v in s.versions]
    return out


def admin_routes(relay: Relay, principal_of: PrincipalOf, unauthorized: Callable[[], Response]) -> list[Route]:
    async def body_json(request: Request) -> Any:
        try:  # refused at the limit, before it is buffered whole, and when it trickles in
            body = await read_limited(request, MAX_ADMIN_BODY, relay.config.body_timeout_s)
        except BodyTooLarge:
            raise InvalidDocument("", f"the request is larger than {MAX_ADMIN_BODY} bytes") from None
        except BodyTimeout as exc:
            raise InvalidDocument("", str(exc)) from None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InvalidDocument("", f"the body is not JSON: {exc}") from None

    async def change(
        request: Request, resources: tuple[str, ...], edit: Callable[[GovernanceContent, Any], GovernanceContent]
    ) -> Response:
        """Apply ``edit`` to the registry's content, for a principal who may administer every one of ``resources``."""
        principal = principal_of(request)
        if principal is None:
            return unauthorized()
        for resource in resources:
            decision = relay.gate.may_administer(principal, resource)
            if not decision.allowed:
                return _error(403, decision.reason, rule=decision.rule)
        if_match = request.headers.get("if-match")
        if if_match is not None:
            if_match = if_match.strip().strip('"')
            if VERSION_ID.fullmatch(if_match) is None:
                return _error(400, "If-Match must name a governance version id (7-3fa2b1c9d0e1, or none)")
        try:
            payload = await body_json(request)
            document, changed = await relay.authority.change(lambda c: edit(c, payload), principal.name, if_match)
        except IncompatibleSchema as exc:
            return _error(409, "the new schema is incompatible", reasons=list(exc.reasons), path=exc.path)
        except InvalidDocument as exc:
            return _error(400, str(exc), path=exc.path)
        except GovernanceConflict as exc:
            return _error(409, str(exc), current=exc.current)
        except ChangeRefused as exc:
            extra: dict[str, Any] = {"path": exc.path} if exc.path else {}
            if exc.reasons:
                extra["reasons"] = list(exc.reasons)
            if exc.current:
                extra["current"] = exc.current
            status = 503 if exc.status in (421, 503) else exc.status
            return _error(status, f"the governance authority refused the change: {exc}", **extra)
        except (StreamUnavailable, AuthorityUnavailable) as exc:
            return JSONResponse({"error": str(exc)[:500]}, status_code=503, headers={"Retry-After": "2"})
        status = 201 if changed and request.method == "POST" else 200
        return JSONResponse(
            {"version": document.version_id, "changed": changed, "author": document.author}, status_code=status
        )

    def reader(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if principal_of(request) is None:
                return unauthorized()
            return await handler(request)

        return guarded

    @reader
    async def get_governance(request: Request) -> Response:
        try:
            document = await relay.registry.current()
            history = await relay.registry.history(50)
        except StreamUnavailable as exc:
            return JSONResponse({"error": str(exc)[:300]}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse(
            {
                "enforced": relay.gov_version,
                "authority": relay.authority.health(),
                "document": orjson.loads(to_json(document)) if document else None,
                "history": history,
            }
        )

    async def put_governance(request: Request) -> Response:
        # the whole document: policies and schemas both
        return await change(request, ("policies", "schemas"), lambda _c, payload: parse_content(payload))

    @reader
    async def get_policies(request: Request) -> Response:
        policies = relay.governance.document.content.policies if relay.governance.document else None
        return JSONResponse(
            {
                "version": relay.gov_version,
                "policies": None if policies is None else [r.to_json() for r in policies],
            }
        )

    async def put_policies(request: Request) -> Response:
        def edit(content: GovernanceContent, payload: Any) -> GovernanceContent:
            if not isinstance(payload, dict) or set(payload) != {"policies"}:
                raise InvalidDocument("", 'send {"policies": [rules] or null}')
            new = parse_content({"policies": payload["policies"]})
            return GovernanceContent(new.policies, content.subjects)

        return await change(request, ("policies",), edit)

    @reader
    async def get_schemas(request: Request) -> Response:
        subjects = relay.governance.schemas.subjects
        return JSONResponse({"version": relay.gov_version, "subjects": [_subject_json(s, False) for s in subjects]})

    @reader
    async def get_subject(request: Request) -> Response:
        pattern = request.path_params["subject"]
        subject = next((s for s in relay.governance.schemas.subjects if s.pattern == pattern), None)
        if subject is None:
            return _error(404, f"no schema subject {pattern!r}")
        return JSONResponse({"version": relay.gov_version, **_subject_json(subject, True)})

    async def post_subject(request: Request) -> Response:
        pattern = request.path_params["subject"]

        def edit(content: GovernanceContent, payload: Any) -> GovernanceContent:
            if (
                not isinstance(payload, dict)
                or "schema" not in payload
                or not set(payload) <= {"schema", "compatibility"}
            ):
                raise InvalidDocument("", 'send {"schema": {...}} and optionally "compatibility"')
            mode = payload.get("compatibility")
            try:
                compatibility = Compatibility(mode) if mode is not None else None
            except ValueError:
                choices = ", ".join(c.value for c in Compatibility)
                raise InvalidDocument("compatibility", f"{mode!r} is not one of {choices}") from None
            return add_schema_version(content, pattern, payload["schema"], compatibility)

        return await change(request, ("schemas",), edit)

    return [
        Route("/v1/governance", get_governance, methods=["GET"]),
        Route("/v1/governance", put_governance, methods=["PUT"]),
        Route("/v1/policies", get_policies, methods=["GET"]),
        Route("/v1/policies", put_policies, methods=["PUT"]),
        Route("/v1/schemas", get_schemas, methods=["GET"]),
        Route("/v1/schemas/{subject}", get_subject, methods=["GET"]),
        Route("/v1/schemas/{subject}", post_subject, methods=["POST"]),
    ]
