"""Argument parsing and exit codes only; the work happens elsewhere.

Every subcommand of CONTRACT.md is registered here. Errors from the
`agent.errors` hierarchy become one line on stderr and their exit code; any
other exception is exit 1 with one line (a traceback only with
CV_TRACEBACK=1, never by default, because tracebacks can carry
values).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import __version__
from agent.errors import ChangevaultError, NotYetAvailable, UsageError

Handler = Callable[[argparse.Namespace], int]

# subcommand -> "module:function"; imported lazily so `--help` stays fast and a
# backend's driver only matters if that backend is used.
HANDLERS: dict[str, str] = {
    "keys": "agent.crypto.keyfiles:keys_command",
    "check": "agent.commands:check_command",
    "run": "agent.commands:run_command",
    "events": "agent.history:events_command",
    "verify": "agent.archive.verify:verify_command",
    "teardown": "agent.commands:teardown_command",
    "snapshot": "agent.commands:snapshot_command",
    "status": "agent.status:status_command",
    "expire": "agent.archive.retention:expire_command",
    "restore": "agent.restore.command:restore_command",
}

# Subcommands registered for their options whose feature has not landed yet:
# they refuse with exit 2 and say so, never pretend to work.
PENDING: dict[str, str] = {
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting with 2 itself."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, help="configuration file (YAML)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="changevault",
        description="Change capture with encrypted delivery and point-in-time restore.",
    )
    parser.add_argument("--version", action="version", version=f"changevault {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    keys = sub.add_parser("keys", help="manage key files")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_Parser)
    keys_sub.required = True
    gen = keys_sub.add_parser(
        "generate",
        help="write archive.pub/.key, signing.key/.pub and keyhash.key into DIR",
    )
    gen.add_argument("--out", type=Path, required=True, metavar="DIR")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")

    p = sub.add_parser("check", help="validate configuration, connections and prerequisites")
    _config(p)

    p = sub.add_parser("run", help="capture changes until SIGTERM/SIGINT")
    _config(p)

    p = sub.add_parser("snapshot", help="take a base snapshot into the archive now")
    _config(p)

    p = sub.add_parser("restore", help="rebuild tables as they were at a point in time")
    _config(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", dest="to_time", metavar="TIME", help="ISO 8601; no offset = UTC")
    target.add_argument("--to-position", metavar="POS", help="LSN, GTID set or file:offset")
    target.add_argument("--before-tx", metavar="TX", help="stop just before this source.txid")
    p.add_argument("--target-dsn", required=True, metavar="DSN")
    p.add_argument("--target-schema", metavar="NAME")
    p.add_argument("--tables", metavar="T1,T2")
    p.add_argument("--entity", metavar="TABLE.COLUMN=VALUE")
    p.add_argument("--preview", action="store_true", help="write nothing; show the differences")
    p.add_argument("--in-place", action="store_true", help="write into the source-named tables")
    p.add_argument("--yes", action="store_true", help="confirm --in-place")
    p.add_argument("--private-key", type=Path, metavar="FILE")

    p = sub.add_parser("events", help="print decrypted change events as JSON lines")
    _config(p)
    p.add_argument("--from", dest="from_time", metavar="TIME")
    p.add_argument("--to", dest="to_time", metavar="TIME")
    p.add_argument("--tables", metavar="T1,T2")
    p.add_argument("--from-kafka", action="store_true")
    p.add_argument("--private-key", type=Path, metavar="FILE")

    p = sub.add_parser("verify", help="check the archive's chain, signatures and continuity")
    _config(p)
    p.add_argument("--decrypt", action="store_true", help="also open every segment")
    p.add_argument("--private-key", type=Path, metavar="FILE")

    p = sub.add_parser("status", help="positions, checkpoint, lag, last snapshot, archive size")
    _config(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("expire", help="apply retention (needs credentials that may delete)")
    _config(p)

    p = sub.add_parser("teardown", help="drop the replication slot and publication we created")
    _config(p)
    p.add_argument("--yes", action="store_true", help="confirm")
    return parser


def _handler(command: str) -> Handler:
    if command in PENDING:
        raise NotYetAvailable(f"{command}: not available in this version: {PENDING[command]}")
    module_name, func = HANDLERS[command].split(":")
    module = importlib.import_module(module_name)
    handler: Handler = getattr(module, func)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _handler(args.command)(args)
    except ChangevaultError as exc:
        print(f"changevault: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("CV_TRACEBACK") == "1":
            raise
        print(f"changevault: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
