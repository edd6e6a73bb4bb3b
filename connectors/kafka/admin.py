"""Create the topics CONTRACT.md promises, with the configured durability, or refuse.

Table topics are compacted (the latest sealed row per key, plus tombstones).
The transactions topic is time-retained (`cleanup.policy=delete`,
`retention.ms` = the configured `retention`): every record has its own key,
so compaction would keep them all forever; the archive holds the long history.

The replication factor is never lowered: if the cluster has fewer brokers
than `replication_factor`, or an existing topic has fewer replicas, we refuse
with a ServiceError naming topic and factor. Some brokers (tansu) accept any
factor on a single node, so the broker count is checked here, not left to
the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from agent.errors import ServiceError, UsageError
from agent.settings import KafkaSettings
from connectors.kafka.client_config import connection_kwargs, kafka_error
from connectors.kafka.topic_names import metric_collision_key, table_topic, transactions_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    compact: bool
    retention_ms: int | None = None  # for non-compacted topics; None: broker default

    def configs(self, min_insync_replicas: int) -> dict[str, str]:
        out = {
            "cleanup.policy": "compact" if self.compact else "delete",
            "min.insync.replicas": str(min_insync_replicas),
        }
        if self.retention_ms is not None:
            out["retention.ms"] = str(self.retention_ms)
        return out


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    partitions: int
    replication_factor: int  # the smallest replica count over its partitions
    configs: dict[str, str] = field(default_factory=dict)  # empty if the broker does not say


def topic_specs(
    settings: KafkaSettings,
    database: str,
    tables: Iterable[tuple[str | None, str]],
    retention: timedelta,
) -> list[TopicSpec]:
    """Specs for `(schema, table)` pairs (schema None for MySQL) plus the transactions topic."""
    specs = [
        TopicSpec(table_topic(settings.topic_prefix, database, schema, table), compact=True)
        for schema, table in tables
    ]
    specs.append(
        TopicSpec(
            transactions_topic(settings.topic_prefix),
            compact=False,
            retention_ms=int(retention.total_seconds() * 1000),
        )
    )
    seen: dict[str, str] = {}
    for spec in specs:
        clash = seen.setdefault(metric_collision_key(spec.name), spec.name)
        if clash != spec.name:
            raise UsageError(
                f"Kafka topics {clash} and {spec.name} differ only by '.' versus '_', "
                "which Kafka refuses; rename one table or set another kafka.topic_prefix"
            )
    return specs


class TopicAdmin:
    """A KafkaAdminClient that knows our topic rules."""

    def __init__(
        self, settings: KafkaSettings, *, client_id: str = "changevault-admin", timeout: float = 15
    ) -> None:
        from kafka.admin import KafkaAdminClient

        self.settings = settings
        self._timeout_ms = int(timeout * 1000)
        try:
            self._admin: Any = KafkaAdminClient(
                **connection_kwargs(settings, client_id),
                request_timeout_ms=self._timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms,
            )
        except Exception as exc:
            raise kafka_error(settings, "connecting the admin client", exc) from None

    def broker_count(self) -> int:
        try:
            return len(self._admin.describe_cluster()["brokers"])
        except Exception as exc:
            raise kafka_error(self.settings, "describing the cluster", exc) from None

    def list_topics(self) -> list[str]:
        try:
            return sorted(self._admin.list_topics())
        except Exception as exc:
            raise kafka_error(self.settings, "listing topics", exc) from None

    def describe(self, names: Sequence[str]) -> dict[str, TopicState]:
        """State of the existing topics among `names` (missing ones are left out)."""
        from kafka.admin import ConfigResource, ConfigResourceType

        try:
            existing = set(self._admin.list_topics()) & set(names)
            if not existing:
                return {}
            described = self._admin.describe_topics(sorted(existing))
            # "all": tansu reports the configs we set as defaults, so "modified" is empty.
            configs = self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in sorted(existing)],
                config_filter="all",
            )
        except Exception as exc:
            raise kafka_error(self.settings, "describing topics", exc) from None
        by_topic = configs.get("topic", {}) if isinstance(configs, dict) else {}
        out: dict[str, TopicState] = {}
        for topic in described:
            partitions = topic["partitions"]
            out[topic["name"]] = TopicState(
                name=topic["name"],
                partitions=len(partitions),
                replication_factor=min((len(p["replica_nodes"]) for p in partitions), default=0),
                configs=_config_values(by_topic.get(topic["name"], {})),
            )
        return out

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create what is missing, check what exists; return the names created."""
        rf = self.settings.replication_factor
        brokers = self.broker_count()
        states = self.describe([s.name for s in specs])
        missing = [s for s in specs if s.name not in states]
        if missing and brokers < rf:
            raise ServiceError(
                f"cannot create Kafka topic {missing[0].name} with replication_factor {rf}: "
                f"the cluster at {','.join(self.settings.bootstrap_servers)} has {brokers} "
                "broker(s); add brokers or lower kafka.replication_factor deliberately"
            )
        for spec in specs:
            if spec.name in states:
                self._check_existing(spec, states[spec.name])
        if missing:
            self._create(missing)
        return [s.name for s in missing]

    def _create(self, specs: Sequence[TopicSpec]) -> None:
        from kafka.errors import TopicAlreadyExistsError

        request = {
            s.name: {
                "num_partitions": self.settings.partitions,
                "replication_factor": self.settings.replication_factor,
                "configs": s.configs(self.settings.min_insync_replicas),
            }
            for s in specs
        }
        try:
            resp = self._admin.create_topics(
                request, timeout_ms=self._timeout_ms, raise_errors=False, wait_for_metadata=True
            )
        except Exception as exc:
            raise kafka_error(self.settings, f"creating topic {specs[0].name}", exc) from None
        for topic in resp.get("topics", []):
            code = topic.get("error_code", 0)
            if code == 0 or code == TopicAlreadyExistsError.errno:  # a concurrent agent
                continue
            from kafka.errors import for_code

            raise ServiceError(
                f"Kafka refused to create topic {topic['name']} with replication_factor "
                f"{self.settings.replication_factor}: {for_code(code).__name__}"
                + (f" ({topic['error_message']})" if topic.get("error_message") else "")
            )
        log.info("created Kafka topics: %s", ", ".join(s.name for s in specs))

    def _check_existing(self, spec: TopicSpec, state: TopicState) -> None:
        rf = self.settings.replication_factor
        if state.replication_factor < rf:
            raise ServiceError(
                f"Kafka topic {spec.name} exists with replication factor "
                f"{state.replication_factor}, expected at least {rf}; "
                "raise it with kafka-reassign-partitions or change kafka.replication_factor"
            )
        policy = state.configs.get("cleanup.policy")
        want = "compact" if spec.compact else "delete"
        if policy is not None and want not in policy.split(","):
            raise ServiceError(
                f"Kafka topic {spec.name} exists with cleanup.policy={policy}, expected {want}"
            )
        isr = state.configs.get("min.insync.replicas")
        if isr is not None and isr.isdigit() and int(isr) < self.settings.min_insync_replicas:
            raise ServiceError(
                f"Kafka topic {spec.name} exists with min.insync.replicas={isr}, "
                f"expected at least {self.settings.min_insync_replicas}"
            )
        if state.partitions != self.settings.partitions:
            # Changing the partition count would move keys and break per-key order.
            log.warning(
                "Kafka topic %s has %d partitions, configured %d; keeping the existing count",
                spec.name,
                state.partitions,
                self.settings.partitions,
            )

    def close(self) -> None:
        self._admin.close()


def _config_values(entries: Any) -> dict[str, str]:
    """kafka-python's describe_configs entry shapes -> {name: value}."""
    out: dict[str, str] = {}
    if isinstance(entries, dict):
        for name, data in entries.items():
            value = data.get("value") if isinstance(data, dict) else data
            if value is not None:
                out[str(name)] = str(value)
    return out
