"""MySQL/MariaDB source: row binlog with GTID resume, schema history, consistent snapshot."""

from connectors.mysql.source import MySQLSource

__all__ = ["MySQLSource"]
