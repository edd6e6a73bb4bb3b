"""Adapters to outside systems: databases, Kafka, object storage.

Everything that imports a driver lives here; `agent/` reaches it only through
the protocols in `connectors.base`.
"""
