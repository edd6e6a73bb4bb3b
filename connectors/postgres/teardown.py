"""`changevault teardown`: drop the slot and publication the agent created.

An abandoned slot keeps WAL on the primary until its disk fills, so teardown
exists; but it drops only what we made: the slot recorded in the state dir,
and a publication recorded there or carrying our COMMENT marker.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg import sql

from agent.errors import ServiceError
from agent.settings import Settings
from connectors.postgres import slots
from connectors.postgres.replication import connection_params

log = logging.getLogger(__name__)


def teardown(settings: Settings, state_dir: Path) -> list[str]:
    """Drop what we created; returns one line per action for the operator."""
    source = settings.source
    created = slots.created_objects(state_dir)
    done: list[str] = []
    try:
        conn = psycopg.connect(source.dsn, autocommit=True, **connection_params(source))
    except psycopg.OperationalError as exc:
        raise ServiceError(
            f"expected PostgreSQL at {source.redacted_dsn}, could not connect: "
            f"{str(exc).strip().splitlines()[-1:]}"
        ) from None
    with conn:
        info = slots.slot_info(conn, source.slot)
        if info is None:
            done.append(f"slot {source.slot}: not present")
        elif created.get("slot") != source.slot:
            done.append(f"slot {source.slot}: kept (not created by this agent's state dir)")
        else:
            if info.active_pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (info.active_pid,))
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (source.slot,),
            )
            done.append(f"slot {source.slot}: dropped")
        pub = source.publication
        if not slots.publication_exists(conn, pub):
            done.append(f"publication {pub}: not present")
        elif created.get("publication") == pub or slots.publication_is_ours(conn, pub):
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(pub)))
            done.append(f"publication {pub}: dropped")
        else:
            done.append(f"publication {pub}: kept (created by someone else)")
    slots.forget_created(state_dir)
    for line in done:
        log.info("teardown: %s", line)
    return done
