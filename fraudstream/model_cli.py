"""`fraudstream model`: the model registry from the command line.

    fraudstream model list                       # every version, champion (*) and shadow (~) marked
    fraudstream model promote 3f2a9c0d           # the new champion: scorers and APIs switch within seconds
    fraudstream model shadow 77b0e1aa            # the challenger, scored beside the champion
    fraudstream model shadow --off
    fraudstream model history [VERSION]          # the audit trail: who did what, when

A version can be given by a unique prefix (6+ characters). Changes are recorded with
`--actor` or the operating-system user. Exit codes: 0 done (also "nothing to change"),
1 refused (unknown version, a rule of the registry, an unloadable bundle, no database),
2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from pydantic import ValidationError

from core.db.registry import (
    RegistryError,
    default_actor,
    list_models,
    model_events,
    promote,
    registry_head,
    resolve_version,
    set_shadow,
)
from core.db.urls import asyncpg_dsn, redacted
from core.runtime.stack import NotConfigured, resolve_database_url
from core.settings import Settings

T = TypeVar("T")
EXIT_REFUSED, EXIT_USAGE = 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream model", description="Inspect and change the model registry."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="every registered version, newest first")
    promote_ = actions.add_parser(
        "promote", help="make VERSION the champion (live traffic is scored with it)"
    )
    promote_.add_argument("version", help="a version or a unique prefix of one")
    shadow = actions.add_parser("shadow", help="score VERSION in shadow beside the champion, or --off")
    target = shadow.add_mutually_exclusive_group(required=True)
    target.add_argument("version", nargs="?", help="a version or a unique prefix of one")
    target.add_argument("--off", action="store_true", help="no shadow")
    history = actions.add_parser("history", help="the audit trail, newest first")
    history.add_argument("version", nargs="?", help="only this version")
    history.add_argument("--limit", type=int, default=30)
    for sub in (promote_, shadow):
        sub.add_argument("--actor", help="who is acting (default: the operating-system user)")
        sub.add_argument("--note", help="why, for the audit trail")
    return parser


def _cell(value: object, width: int) -> str:
    text = "-" if value is None else str(value)
    return text[: width - 1] + "…" if len(text) > width else text.ljust(width)


def format_models(models, champion_since) -> str:  # type: ignore[no-untyped-def]
    """The `list` table: role marks, version, registered, threshold, test AUPRC, by whom, from where."""
    if not models:
        return "no model versions are registered (fraudstream train registers one)"
    header = f"   {'version':<16}  {'registered (UTC)':<19}  {'threshold':>9}  {'test AUPRC':>10}  {'by':<12}  source"
    lines = [header, "-" * len(header)]
    for m in models:
        mark = "*" if m.champion else ("~" if m.shadow else " ")
        auprc = f"{m.test_auprc:.3f}" if m.test_auprc is not None else "-"
        lines.append(
            f"{mark}  {m.version:<16}  {m.created_at:%Y-%m-%d %H:%M:%S}  {m.threshold:>9.4f}  {auprc:>10}  "
            f"{_cell(m.registered_by, 12)}  {m.source_path or '-'}"
        )
    lines.append("")
    lines.append("* champion (scores live traffic)   ~ shadow (scored beside it, never alerts)")
    if champion_since is not None:
        lines.append(f"champion since {champion_since:%Y-%m-%d %H:%M:%S} UTC")
    return "\n".join(lines)


def format_events(events) -> str:  # type: ignore[no-untyped-def]
    if not events:
        return "no registry events"
    lines = [f"{'when (UTC)':<19}  {'version':<16}  {'action':<10}  {'by':<12}  note"]
    lines += [
        f"{e.at:%Y-%m-%d %H:%M:%S}  {e.version:<16}  {e.action:<10}  {_cell(e.actor, 12)}  {e.note or ''}"
        for e in events
    ]
    return "\n".join(lines)


async def _with_connection(database_url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        return await work(conn)
    finally:
        await conn.close()


async def _run(args: argparse.Namespace) -> str:
    database_url = resolve_database_url(Settings())
    actor = getattr(args, "actor", None) or default_actor()

    async def work(conn: asyncpg.Connection) -> str:
        if args.action == "list":
            head = await registry_head(conn)
            return format_models(await list_models(conn), head.champion.since if head.champion else None)
        if args.action == "history":
            version = await resolve_version(conn, args.version) if args.version else None
            return format_events(await model_events(conn, version=version, limit=args.limit))
        if args.action == "promote":
            version = await resolve_version(conn, args.version)
            if await promote(conn, version, actor, note=args.note):
                return f"{version} is the champion (by {actor}); scorers and APIs switch within seconds"
            return f"{version} already is the champion: nothing changed"
        version = None if args.off else await resolve_version(conn, args.version)
        if await set_shadow(conn, version, actor, note=args.note):
            return f"{version} is the shadow (by {actor})" if version else f"no shadow any more (by {actor})"
        return "nothing changed: " + (
            f"{version} already is the shadow" if version else "there was no shadow"
        )

    try:
        return await _with_connection(database_url, work)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise RegistryError(f"the database at {redacted(database_url)} cannot be used: {error}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the message (or --help)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        print(asyncio.run(_run(args)))
    except ValidationError as error:
        print(f"fraudstream model: invalid settings in the environment:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    except NotConfigured as error:
        print(f"fraudstream model: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except RegistryError as error:
        print(f"fraudstream model: {error}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
