"""The Helm chart, rendered and linted by the real Helm v4 engine
(helm-python-sdk, offline) and validated against Kubernetes schemas
(kubernetes-validate). The PrometheusRule is checked by promtool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from agent.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "changevault"
ALERTS = ROOT / "config" / "alerts.yaml"
KUBE_VERSIONS = ("1.29.0", "1.33.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

CUSTOM: dict[str, Any] = {
    "image": {"repository": "registry.example/changevault", "tag": "0.1.0-rc1"},
    "config": {
        "source": {
            "type": "mysql",
            "dsn": "mysql://changevault@mariadb:3306/shop",
            "tables": ["shop.customers", "shop.orders"],
            "server_id": 5401,
        },
        "kafka": {
            "bootstrap_servers": ["kafka-0:9093", "kafka-1:9093"],
            "topic_prefix": "cdc",
            "security": {
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "username": "changevault",
            },
        },
        "archive": {"url": "s3://backups/changevault", "s3_endpoint_url": "https://s3.example"},
        "retention": "90d",
        "log_format": "text",
    },
    "database": {"existingSecret": "shop-db", "passwordKey": "changevault-password"},
    "keys": {"existingSecret": "shop-keys", "extraRecipients": ["breakglass.pub"]},
    "kafkaCredentials": {"existingSecret": "kafka-user"},
    "archiveCredentials": {"existingSecret": "s3-writer"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/cv"}},
    "persistence": {"size": "50Gi", "storageClassName": "fast"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "resources": {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    },
    "nodeSelector": {"node-role/db": "true"},
    "tolerations": [{"key": "db", "operator": "Exists", "effect": "NoSchedule"}],
}
VALUE_SETS = {"default": {}, "custom": CUSTOM}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="shop", namespace="databases")
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def agent_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["changevault.yaml"])
    return config


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict_has_no_warnings(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_validates_against_kubernetes_schemas(values: dict[str, Any]) -> None:
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "ConfigMap", "Service", "ServiceAccount"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # checked below: no Kubernetes schema for CRDs
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_default_render_is_a_working_single_replica_agent() -> None:
    docs = render({})
    assert {d["kind"] for d in docs} == {"StatefulSet", "ConfigMap", "Service", "ServiceAccount"}
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["run", "-c", "/etc/changevault/changevault.yaml"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/var/lib/changevault"] == claim["metadata"]["name"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    service = one(docs, "Service")
    # Metrics of a not-ready agent (a sink down) must still be scraped.
    assert service["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_rendered_configuration_is_valid_for_the_agent(values: dict[str, Any]) -> None:
    docs = render(values)
    config = agent_config(docs)
    settings = Settings.model_validate(config)
    assert str(settings.state_dir) == "/var/lib/changevault/state"
    assert settings.metrics_listen == ":9187"
    assert settings.encryption.private_key_file is None
    # Every file the configuration names is mounted into the container.
    container = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    volumes = {v["name"]: v for v in one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    mounted = set()
    for mount in container["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")
        for item in (secret or {}).get("items", []):
            mounted.add(f"{mount['mountPath']}/{item['path']}")
    files = [*settings.encryption.recipients, settings.encryption.signing_key_file,
             settings.encryption.keyhash_key_file, settings.source.password_file]
    if settings.kafka and settings.kafka.security:
        files.append(settings.kafka.security.password_file)
    assert {str(f) for f in files if f is not None} <= mounted


def test_custom_values_reach_the_manifests() -> None:
    docs = render(CUSTOM)
    config = agent_config(docs)
    assert config["source"]["password_file"] == "/etc/changevault/secrets/db/password"
    assert config["kafka"]["security"]["password_file"] == "/etc/changevault/secrets/kafka/password"
    assert config["encryption"]["recipients"] == [
        "/etc/changevault/keys/archive.pub", "/etc/changevault/keys/breakglass.pub",
    ]
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/changevault:0.1.0-rc1"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-writer"}}]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"shop-db", "shop-keys", "kafka-user"}
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        one(docs, "Service")["spec"]["selector"].items()
    )
    # A changed configuration rolls the pod.
    default_pod = one(render({}), "StatefulSet")["spec"]["template"]["metadata"]
    custom_pod = one(docs, "StatefulSet")["spec"]["template"]["metadata"]
    assert default_pod["annotations"]["checksum/config"] != custom_pod["annotations"]["checksum/config"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_pod_security(values: dict[str, Any]) -> None:
    pod = one(render(values), "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["privileged"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    for volume in pod["volumes"]:
        assert "hostPath" not in volume
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440
            assert volume["secret"]["items"], "secrets are mounted by named items only"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_archive_key_is_never_referenced(values: dict[str, Any]) -> None:
    # Every value of every manifest (NOTES.txt and template comments may warn
    # about archive.key; no manifest may name it).
    assert "archive.key" not in yaml.safe_dump_all(render(values))
    config = agent_config(render(values))
    assert config["encryption"].get("private_key_file") is None


@pytest.mark.parametrize(
    "values, message",
    [
        ({"keys": {"signingKey": "archive.key"}}, "/keys/signingKey"),
        ({"keys": {"extraRecipients": ["archive.key"]}}, "/keys/extraRecipients"),
        ({"config": {"encryption": {"recipients": ["/x"]}}}, "/config"),
        ({"config": {"state_dir": "/tmp/state"}}, "/config"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"replicas": 2}, "replicas"),
        ({"config": {"archive": {"url": "http://example"}}}, "/config/archive/url"),
    ],
)
def test_schema_rejects_unsafe_or_chart_owned_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        helm.Chart.load(CHART).render(values, name="shop")


def test_chart_alert_rules_are_config_alerts_yaml() -> None:
    chart_copy = CHART / "files" / "alerts.yaml"
    assert chart_copy.read_bytes() == ALERTS.read_bytes(), (
        "helm/changevault/files/alerts.yaml differs from config/alerts.yaml; "
        "config/alerts.yaml is the source: cp config/alerts.yaml helm/changevault/files/"
    )
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package")
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_validation_catches_a_broken_manifest() -> None:
    """kubernetes-validate in strict mode really rejects unknown fields."""
    sts = one(render({}), "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)
