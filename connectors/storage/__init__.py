"""Object stores for the archive: `file://` (default) and `s3://`, both create-only.

`open_object_store` picks the backend by URL scheme; boto3 is imported only
when an `s3://` store is opened. `ArchiveLease` keeps two agents from writing
the same archive without ever deleting an object.
"""

from connectors.storage.errors import ObjectMissing
from connectors.storage.factory import open_object_store
from connectors.storage.lease import ArchiveLease, LeaseHeld, LeaseLost, LeaseRecord
from connectors.storage.probe import probe_conditional_put

__all__ = [
    "ArchiveLease",
    "LeaseHeld",
    "LeaseLost",
    "LeaseRecord",
    "ObjectMissing",
    "open_object_store",
    "probe_conditional_put",
]
