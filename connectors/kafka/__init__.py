"""Kafka I/O: topic administration, a durable producer and a topic reader (kafka-python)."""

from connectors.kafka.admin import TopicAdmin, TopicSpec, TopicState, topic_specs
from connectors.kafka.consumer import ConsumedRecord, read_topics
from connectors.kafka.producer import Delivered, ProducerTuning, RecordProducer, producer_config
from connectors.kafka.topic_names import encode_component, table_topic, transactions_topic

__all__ = [
    "ConsumedRecord",
    "Delivered",
    "ProducerTuning",
    "RecordProducer",
    "TopicAdmin",
    "TopicSpec",
    "TopicState",
    "encode_component",
    "producer_config",
    "read_topics",
    "table_topic",
    "topic_specs",
    "transactions_topic",
]
