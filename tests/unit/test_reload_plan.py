"""agent/reload.py: which changed keys apply live, by a rebuild, or only by a restart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from agent.reload import changed_keys, keep_running_value, plan_reload
from agent.settings import Settings


def settings(**over: Any) -> Settings:
    doc: dict[str, Any] = {
        "source": {"type": "postgres", "dsn": "postgresql://cv@127.0.0.1:5432/shop"},
        "archive": {"url": "file:///var/lib/changevault/archive"},
        "encryption": {"recipients": ["/etc/changevault/archive.pub"]},
        "state_dir": "/var/lib/changevault/state",
        "kafka": {"bootstrap_servers": ["k:9092"], "replication_factor": 1,
                  "min_insync_replicas": 1},
    }
    for dotted, value in over.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return Settings.model_validate(doc)


def test_nothing_changed() -> None:
    plan = plan_reload(settings(), settings())
    assert not plan.changed and plan.settings == settings()


def test_keys_sorted_by_kind_and_only_safe_values_taken() -> None:
    old = settings()
    new = settings(retention="7d", log_level="debug", archive__segment_max_age="5s",
                   source__slot="other", kafka__topic_prefix="elsewhere",
                   kafka__security={"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                    "username": "u", "password": "p2"})
    plan = plan_reload(old, new)
    assert sorted(plan.live) == ["log_level", "retention"]
    assert sorted(plan.rebuild) == ["archive.segment_max_age", "kafka.security"]
    assert sorted(plan.restart) == ["kafka.topic_prefix", "source.slot"]
    s = plan.settings
    assert s.retention == timedelta(days=7) and s.log_level == "debug"
    assert s.archive.segment_max_age == timedelta(seconds=5)
    assert s.kafka is not None and s.kafka.security is not None
    assert s.kafka.topic_prefix == "changevault" and s.source.slot == "changevault"


def test_a_rotated_secret_is_a_change_and_a_section_added_is_one_restart_key() -> None:
    old = settings()
    rotated = old.model_copy(update={"source": old.source.model_copy(
        update={"password": SecretStr("new-secret")})})
    assert changed_keys(old, rotated) == ["source.password"]
    no_kafka = old.model_copy(update={"kafka": None})
    plan = plan_reload(no_kafka, old)
    assert plan.restart == ["kafka"] and plan.settings.kafka is None


def test_origin_is_not_configuration_and_a_failed_live_change_can_be_undone() -> None:
    old = settings()
    moved = old.model_copy(update={"origin": str(Path("/elsewhere.yaml"))})
    assert changed_keys(old, moved) == []
    plan = plan_reload(old, settings(metrics_listen="127.0.0.1:9999"))
    assert plan.live == ["metrics_listen"]
    assert keep_running_value(plan.settings, old, "metrics_listen") == old
