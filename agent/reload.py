"""What a configuration reload (SIGHUP) may change while `run` keeps its position.

`plan_reload(running, new)` compares two validated `Settings` key by key and
sorts every changed key into one of three kinds:

- live: applied in place (logging, the metrics listener, the snapshot
  schedule, retention);
- rebuild: applied by ending the current pipeline cleanly and building a new
  one from the durable checkpoint — the same path as any crash-only retry, so
  nothing is lost (archive segment limits, source and Kafka credentials);
- restart: everything else (the source, the archive location, keys, topics):
  changing them under a running capture would change what it means, so the
  running value is kept and the key is reported.

The plan's `settings` is the configuration to run with from now on: the new
values of live and rebuild keys, the running values of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent.settings import Settings

# Dotted keys (or key prefixes: "kafka.security" covers all of its fields).
LIVE_KEYS = ("log_level", "log_format", "metrics_listen", "snapshot_interval", "retention")
REBUILD_KEYS = (
    "archive.segment_max_bytes",
    "archive.segment_max_age",
    "source.password",
    "source.password_file",
    "source.tls",
    "kafka.security",
)


@dataclass(frozen=True)
class ReloadPlan:
    settings: Settings
    live: list[str] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.live or self.rebuild or self.restart)


def changed_keys(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the leaf fields that differ (a section added or removed is one key)."""
    keys: list[str] = []
    for name, info in type(old).model_fields.items():
        if info.exclude:
            continue  # `origin`: where it was read from, not configuration
        a, b = getattr(old, name), getattr(new, name)
        path = f"{prefix}{name}"
        if isinstance(a, BaseModel) and isinstance(b, BaseModel) and type(a) is type(b):
            keys += changed_keys(a, b, path + ".")
        elif a != b:  # SecretStr compares by value, so a rotated secret shows
            keys.append(path)
    return keys


def _kind(key: str) -> str:
    def under(prefixes: tuple[str, ...]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    if under(LIVE_KEYS):
        return "live"
    if under(REBUILD_KEYS):
        return "rebuild"
    return "restart"


def _get(model: BaseModel, path: str) -> Any:
    value: Any = model
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _with_value(model: BaseModel, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    if not rest:
        return model.model_copy(update={head: value})
    return model.model_copy(update={head: _with_value(getattr(model, head), rest, value)})


def plan_reload(running: Settings, new: Settings) -> ReloadPlan:
    plan = ReloadPlan(settings=running)
    merged: Settings = running
    for key in changed_keys(running, new):
        kind = _kind(key)
        getattr(plan, kind).append(key)
        if kind != "restart":
            merged = _with_value(merged, key, _get(new, key))
    return ReloadPlan(merged, plan.live, plan.rebuild, plan.restart)


def keep_running_value(settings: Settings, running: Settings, key: str) -> Settings:
    """`settings` with `key` put back to its running value (a live change that failed)."""
    result: Settings = _with_value(settings, key, _get(running, key))
    return result
