"""Connection and security settings shared by the producer, admin client and reader."""

from __future__ import annotations

from typing import Any

from agent.errors import ServiceError
from agent.settings import KafkaSecurity, KafkaSettings


def security_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    """kafka-python keyword arguments for `kafka.security`; holds the password, never log it."""
    if security is None:
        return {"security_protocol": "PLAINTEXT"}
    kwargs: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_check_hostname"] = security.check_hostname
        if security.ca_file is not None:
            kwargs["ssl_cafile"] = str(security.ca_file)
        if security.cert_file is not None:
            kwargs["ssl_certfile"] = str(security.cert_file)
        if security.key_file is not None:
            kwargs["ssl_keyfile"] = str(security.key_file)
    if security.protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = security.sasl_mechanism
        kwargs["sasl_plain_username"] = security.username
        kwargs["sasl_plain_password"] = (
            security.password.get_secret_value() if security.password is not None else None
        )
    return kwargs


def connection_kwargs(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "client_id": client_id,
        **security_kwargs(settings.security),
    }


def kafka_error(settings: KafkaSettings, action: str, exc: BaseException) -> ServiceError:
    """One line naming the brokers and what failed; kafka-python messages carry no secrets."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    brokers = ",".join(settings.bootstrap_servers)
    suffix = f": {detail}" if detail else ""
    return ServiceError(f"Kafka at {brokers}: {action} failed: {type(exc).__name__}{suffix}")
