"""The operator's commands: ``meshscope sql|chaos|governance|certs|token`` (each imports what it runs)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from meshcore.settings import SettingError


def client_token(token_file: str | None) -> str | None:
    """A client's bearer token: --token-file, else MESHSCOPE_TOKEN_FILE, else MESHSCOPE_TOKEN."""
    path = token_file or os.environ.get("MESHSCOPE_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise SettingError(f"cannot read the token file {path}: {exc.strerror}") from None
    return os.environ.get("MESHSCOPE_TOKEN") or None


def sql(args: argparse.Namespace) -> int:
    from collector.config import CollectorConfig
    from collector.output import render
    from collector.sqlclient import SqlFailed, run_sql

    env = dict(os.environ)
    if args.data_dir is not None:
        env["MESHSCOPE_DATA_DIR"] = args.data_dir
    config = CollectorConfig.from_env(env)
    try:
        via = args.via or os.environ.get("MESHSCOPE_DASHBOARD_URL")
        columns, rows = run_sql(config, args.query, via, cafile=args.ca or os.environ.get("MESHSCOPE_TLS_CA"))
    except SqlFailed as exc:
        print(f"meshscope sql: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(columns, rows, args.format))
    return 0


def chaos(args: argparse.Namespace) -> int:
    from meshscope.chaos import SCENARIOS, ChaosError, run, table

    names = _names(args.scenarios) or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"meshscope chaos: unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    print(f"meshscope chaos: {', '.join(names)} against the meshscope up in {args.data_dir}", flush=True)
    try:
        outcomes = asyncio.run(run(args.data_dir, names, args.events, args.isolate))
    except ChaosError as exc:
        print(f"meshscope chaos: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(table(outcomes))
    if all(o.ok for o in outcomes):
        return 0
    return 1 if any(o.result == "FAILED" for o in outcomes) else 3  # 3: some answers could not be established


def governance(args: argparse.Namespace) -> int:
    from meshscope.governance import GovernanceCommandError, apply, defaults, export, show

    relay, token, ca = defaults(args.data_dir)
    relay = args.relay or relay
    token = client_token(args.token_file) or token
    ca = args.ca or os.environ.get("MESHSCOPE_TLS_CA") or ca
    if relay is None:
        print(
            f"meshscope governance: name a relay with --relay (no meshscope up found in {args.data_dir})",
            file=sys.stderr,
        )
        return 2
    try:
        if args.gov_action == "apply":
            lines = apply(args.directory, relay, token, ca, args.dry_run, args.allow_empty)
        elif args.gov_action == "export":
            lines = export(args.directory, relay, token, ca)
        else:
            lines = show(relay, token, ca)
    except GovernanceCommandError as exc:
        print(f"meshscope governance: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _names(raw: str | None) -> list[str]:
    return list(dict.fromkeys(item.strip() for item in (raw or "").split(",") if item.strip()))


def certs(args: argparse.Namespace) -> int:
    from meshcore.certs import CERT_DAYS, CaUnusable, write_bundle
    from meshcore.tls import Identity

    regions, clients = _names(args.regions), _names(args.clients)
    if not regions and not clients:
        print("meshscope certs: name at least one of --regions and --clients", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        identities = [Identity("region", r) for r in regions] + [Identity("client", c) for c in clients]
        bundle = write_bundle(
            out,
            identities,
            hosts=_names(args.hosts),
            days=CERT_DAYS if args.days is None else args.days,
            force=args.force,
        )
    except ValueError as exc:
        print(f"meshscope certs: {exc}", file=sys.stderr)
        return 2
    except CaUnusable as exc:
        print(f"meshscope certs: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"meshscope certs: cannot write to {out}: {exc}", file=sys.stderr)
        return 1
    until = f"valid until {bundle.ca_not_after:%Y-%m-%d}"
    if bundle.ca_reused:
        print(f"reusing the CA in {out / 'ca.pem'} ({until}; --force replaces it)")
    else:
        print(f"new development CA ({until})")
    for path in bundle.written:
        print(f"wrote {path}{' (mode 0600)' if path.suffix == '.key' else ''}")
    for path in bundle.stale:
        print(f"warning: {path} was signed by the replaced CA; re-issue it", file=sys.stderr)
    return 0


def token_command(args: argparse.Namespace) -> int:
    from meshcore.auth import AuthConfigError, new_token, principal_entry
    from meshcore.names import InvalidName

    token = new_token()
    try:
        entry = principal_entry(args.name, token, _names(args.groups), _names(args.roles))
    except (InvalidName, AuthConfigError) as exc:
        print(f"meshscope token: {exc}", file=sys.stderr)
        return 2
    if args.token_file:
        path = Path(args.token_file)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            path.chmod(0o600)
        except OSError as exc:
            print(f"meshscope token: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"# token written to {path} (mode 0600); this entry goes into the principals file")
    else:
        print(f"# token (shown once; keep it secret): {token}")
        print("# this entry goes into the principals file (MESHSCOPE_AUTH_FILE); it holds only the hash")
    print(entry, end="")
    return 0
