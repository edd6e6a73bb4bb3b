"""The archive: immutable sealed segments, snapshots and a signed hash-chained catalog."""
