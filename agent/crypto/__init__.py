"""Keys, data keys, sealing and opening of messages and archive chunks, signatures.

Every construction here composes published standards (RFC 9180 HPKE, AES-GCM,
HKDF, Ed25519, HMAC-SHA256, the STREAM chunking of Hoang et al.); the byte
formats are documented in docs/keys.md and docs/decisions/0002-sealing.md.
"""
