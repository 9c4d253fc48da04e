"""What one overlay renders, and what the operators add to it at run time.

`kubectl kustomize` cannot render what the operators create once they run (Secrets, Services,
pod labels); it is written down here from their source at the pinned tags
(tests/k8s/crds/README.md), so the policies can check references against it.
"""

from __future__ import annotations

import re

OUR_IMAGE = re.compile(r"(^|/)jobstack[:@]")
# The Secret `<RabbitmqCluster>-default-user` (cluster-operator v2.22.3
# internal/resource/default_user_secret.go Build, updatePorts, updateConnectionString).
RABBITMQ_SECRET_KEYS = {"username", "password", "default_user.conf", "provider", "type", "host", "port", "connection_string"}
# Its Service `<RabbitmqCluster>`: ports and labels (internal/resource/service.go, internal/metadata/label.go).
RABBITMQ_SERVICE_PORTS = {"amqp": 5672, "management": 15672, "prometheus": 15692}
# With spec.tls.secretName: these too, and the metrics only as `prometheus-tls`; amqp and
# management go with disableNonTLSListeners (internal/resource/service.go L128, L202-214, L277-290).
RABBITMQ_TLS_PORTS = {"amqps": 5671, "management-tls": 15671, "prometheus-tls": 15691}
# The Secret cert-manager writes for a Certificate: type kubernetes.io/tls, tls.key and tls.crt,
# and ca.crt when the issuer has a CA, as a CA Issuer does (cert-manager v1.21.1
# pkg/controller/certificates/issuing/internal/secret.go L153-156, L221).
CERT_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# The Secret `<Cluster>-app` (cloudnative-pg v1.30.0 pkg/specs/secrets.go CreateSecret) and the
# read-write Service `<Cluster>-rw` (api/v1/cluster_types.go ServiceReadWriteSuffix).
CNPG_APP_SECRET_KEYS = {"username", "user", "password", "dbname", "host", "port", "pgpass", "uri", "jdbc-uri", "fqdn-uri", "fqdn-jdbc-uri"}
# Instance pods carry cnpg.io/cluster=<Cluster> and expose port `metrics` (docs/src/monitoring.md).
CNPG_POD_LABEL, CNPG_METRICS_PORT = "cnpg.io/cluster", "metrics"


class Render:
    """The objects one overlay renders, with what the checks compare them to."""

    def __init__(self, name: str, objects: list[dict], pins: dict[str, str], secrets: dict | None = None, compose_rabbitmq_conf: str = ""):
        self.name, self.objects, self.pins = name, objects, pins
        # Secret name -> {key: value} that exist at run time besides the rendered objects.
        self.secrets = secrets or {}
        self.compose_rabbitmq_conf = compose_rabbitmq_conf

    def of(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def named(self, kind: str, name: str) -> dict | None:
        return next((o for o in self.of(kind) if o["metadata"]["name"] == name), None)

    def workloads(self) -> list[dict]:
        return [o for o in self.objects if o.get("kind") in ("Deployment", "StatefulSet")]

    def containers(self):
        """(workload, pod spec, container) for every container, init containers included."""
        for w in self.workloads():
            pod = w["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                yield w, pod, c

    def ours(self):
        return [(w, p, c) for w, p, c in self.containers() if OUR_IMAGE.search(c["image"])]

    def config(self) -> dict[str, str]:
        """The ConfigMap our containers read through envFrom (kustomize adds a hash to its name)."""
        names = {e["configMapRef"]["name"] for _, _, c in self.ours() for e in c.get("envFrom", []) if "configMapRef" in e}
        data: dict[str, str] = {}
        for cm in self.of("ConfigMap"):
            if cm["metadata"]["name"] in names:
                data.update(cm.get("data", {}))
        return data

    def namespace(self) -> str:
        return next((o["metadata"].get("namespace") for o in self.workloads()), "default") or "default"

    def rabbitmq_clusters(self) -> list[dict]:
        return self.of("RabbitmqCluster")

    def pg_clusters(self) -> list[dict]:
        return [o for o in self.of("Cluster") if o["apiVersion"].startswith("postgresql.cnpg.io/")]

    def services(self) -> dict[str, set[str]]:
        """Service name -> port names, rendered or made by an operator at run time."""
        out = {s["metadata"]["name"]: {p.get("name", "") for p in s["spec"]["ports"]} for s in self.of("Service")}
        for rc in self.rabbitmq_clusters():
            tls = rc["spec"].get("tls", {})
            if not tls.get("secretName"):
                out[rc["metadata"]["name"]] = set(RABBITMQ_SERVICE_PORTS)
                continue
            plain = set() if tls.get("disableNonTLSListeners") else {"amqp", "management"}
            out[rc["metadata"]["name"]] = plain | set(RABBITMQ_TLS_PORTS)
        for pg in self.pg_clusters():
            out[pg["metadata"]["name"] + "-rw"] = {"postgres"}
        return out

    def runtime_secrets(self) -> dict[str, set[str]]:
        """Secret name -> keys: the operators' (production) or the ones given (local)."""
        out = {name: set(keys) for name, keys in self.secrets.items()}
        for rc in self.rabbitmq_clusters():
            out[rc["metadata"]["name"] + "-default-user"] = RABBITMQ_SECRET_KEYS
        for pg in self.pg_clusters():
            out[pg["metadata"]["name"] + "-app"] = CNPG_APP_SECRET_KEYS
        for cert in self.of("Certificate"):
            out[cert["spec"]["secretName"]] = CERT_SECRET_KEYS
        # The Messaging Topology Operator's Secret for a User without importCredentialsSecret
        # (messaging-topology-operator v1.20.1 internal/controller/user_controller.go L66-79).
        for u in self.of("User"):
            if u["apiVersion"].startswith("rabbitmq.com/") and not u["spec"].get("importCredentialsSecret"):
                out[u["metadata"]["name"] + "-user-credentials"] = {"username", "password"}
        return out


def label(w: dict, c: dict) -> str:
    return f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
