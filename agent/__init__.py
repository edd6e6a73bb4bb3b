"""changevault: change capture, encrypted delivery and point-in-time restore."""

__version__ = "0.1.0"
