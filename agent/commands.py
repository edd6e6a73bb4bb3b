"""The subcommands that run the agent's parts: run, check, teardown, snapshot.

Argument parsing stays in cli.py and the composition in app.py; each function
here loads settings, sets up logging and calls into them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agent.app import App, build_source
from agent.archive.access import open_store
from agent.archive.writer import LEASE_NAME, agent_identity
from agent.errors import ServiceError, UsageError
from agent.logs import configure_logging
from agent.scheduler import request_snapshot, wait_for_answer
from agent.settings import Settings, load_settings
from connectors.base import CheckResult
from connectors.storage.lease import ArchiveLease


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(Path(args.config))
    configure_logging(settings.log_format, settings.log_level)
    return settings


def run_command(args: argparse.Namespace) -> int:
    return App(_settings(args)).run()


def check_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    source = build_source(settings)
    try:
        results = source.checks()
    finally:
        source.close()
    results += _archive_checks(settings)
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}")
    failed = [r for r in results if not r.ok and r.fatal]
    if failed:
        first = failed[0]
        error = ServiceError if any(r.service for r in failed) else UsageError
        raise error(f"{len(failed)} check(s) failed; first: {first.name}: {first.detail}")
    return 0


def _archive_checks(settings: Settings) -> list[CheckResult]:
    from connectors.storage.probe import probe_conditional_put

    return [probe_conditional_put(open_store(settings))]


def teardown_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not args.yes:
        raise UsageError("teardown drops the replication slot and publication: add --yes")
    if settings.source.type != "postgres":
        print("nothing to tear down for a MySQL/MariaDB source (no server-side state)")
        return 0
    from connectors.postgres.teardown import teardown

    for line in teardown(settings, settings.state_dir):
        print(line)
    return 0


def snapshot_command(args: argparse.Namespace) -> int:
    """An on-demand snapshot: asks the running agent, or takes one itself.

    Never two writers: if the archive lease is live and ours (the agent on
    this state_dir), the agent is asked through a request file; if it is free
    this command takes the lease; if another agent holds it, exit 3.
    """
    settings = _settings(args)
    store = open_store(settings)
    agent_id = agent_identity(settings.state_dir)
    lease = ArchiveLease(store, LEASE_NAME, agent_id, 60.0)
    holder = lease.current()
    if holder is not None and holder.owner_id == agent_id and holder.live(time.time()):
        request_id = request_snapshot(settings.state_dir)
        print(f"asked the running agent for a snapshot (request {request_id})", flush=True)
        outcome = wait_for_answer(settings.state_dir, request_id, lease)
    else:
        outcome = App(settings).snapshot_now()  # LeaseHeld (exit 3) if someone else writes
    rows = sum(outcome.rows.values())
    print(
        f"snapshot {outcome.snapshot_id} complete at position {outcome.position}: "
        f"{rows} rows in {len(outcome.rows)} tables, {outcome.bytes} bytes"
    )
    for table, n in sorted(outcome.rows.items()):
        print(f"  {table}: {n} rows")
    return 0
