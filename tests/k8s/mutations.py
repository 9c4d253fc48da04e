"""Breakages the checks must catch: each is applied to a copy of a rendered overlay, in memory.

(description, overlay, check that must report it, mutation). A check named here that stays
silent on its breakage fails `make k8s-check`, so a check that stops biting is noticed.
"""

from __future__ import annotations


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def container(objects: list[dict], deployment: str) -> dict:
    return find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def trigger(objects: list[dict]) -> dict:
    return find(objects, "ScaledObject", "jobstack-worker")["spec"]["triggers"][0]["metadata"]


def _set_env(objects: list[dict], deployment: str, name: str, value: str) -> None:
    env = container(objects, deployment)["env"]
    next(e for e in env if e["name"] == name)["value"] = value


MUTATIONS = [
    ("api without readinessProbe", "production", "probes",
     lambda o: container(o, "jobstack-api").pop("readinessProbe")),
    ("worker without livenessProbe", "production", "probes",
     lambda o: container(o, "jobstack-worker").pop("livenessProbe")),
    ("worker without startupProbe", "local", "probes",
     lambda o: container(o, "jobstack-worker").pop("startupProbe")),
    ("api readinessProbe on /healthz", "production", "probes",
     lambda o: container(o, "jobstack-api")["readinessProbe"]["httpGet"].update(path="/healthz")),
    ("worker without a memory limit", "production", "resources",
     lambda o: container(o, "jobstack-worker")["resources"]["limits"].pop("memory")),
    ("api without a CPU limit", "local", "resources",
     lambda o: container(o, "jobstack-api")["resources"]["limits"].pop("cpu")),
    ("RabbitmqCluster without limits", "production", "resources",
     lambda o: find(o, "RabbitmqCluster", "jobstack-rabbitmq")["spec"]["resources"].pop("limits")),
    ("worker image :latest", "production", "images",
     lambda o: container(o, "jobstack-worker").update(image="ghcr.io/your-org/jobstack:latest")),
    ("production image a placeholder", "production", "images",
     lambda o: container(o, "jobstack-api").update(image="ghcr.io/your-org/jobstack:0.1.0")),
    ("api image without a tag", "local", "images",
     lambda o: container(o, "jobstack-api").update(image="jobstack")),
    ("RabbitmqCluster image off the .env pin", "production", "images",
     lambda o: find(o, "RabbitmqCluster", "jobstack-rabbitmq")["spec"].update(image="rabbitmq:4.1.0-management")),
    ("api root filesystem writable", "production", "security",
     lambda o: container(o, "jobstack-api")["securityContext"].update(readOnlyRootFilesystem=False)),
    ("worker may escalate privileges", "local", "security",
     lambda o: container(o, "jobstack-worker")["securityContext"].pop("allowPrivilegeEscalation")),
    ("worker terminationGracePeriodSeconds 25 = SHUTDOWN_GRACE_SECS", "production", "shutdown",
     lambda o: find(o, "Deployment", "jobstack-worker")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=25)),
    ("api terminationGracePeriodSeconds 40 (preStop + grace + flush, without the teardown)", "production", "shutdown",
     lambda o: find(o, "Deployment", "jobstack-api")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=40)),
    ("SHUTDOWN_GRACE_SECS raised to 40", "local", "shutdown",
     lambda o: find(o, "ConfigMap", "jobstack-config")["data"].update(SHUTDOWN_GRACE_SECS="40")),
    ("KEDA queueName jobstack.job", "production", "keda",
     lambda o: trigger(o).update(queueName="jobstack.job")),
    ("AMQP_PREFIX acme with the trigger left on jobstack.jobs", "production", "keda",
     lambda o: find(o, "ConfigMap", "jobstack-config")["data"].update(AMQP_PREFIX="acme")),
    ("KEDA over AMQP (blind to running jobs)", "production", "keda",
     lambda o: trigger(o).update(protocol="amqp")),
    ("KEDA host in another namespace", "production", "keda",
     lambda o: trigger(o).update(host="http://jobstack-rabbitmq.default.svc:15672/")),
    ("worker Deployment keeps replicas under KEDA", "production", "keda",
     lambda o: find(o, "Deployment", "jobstack-worker")["spec"].update(replicas=1)),
    ("AMQP_URL ending in '/' (the empty vhost)", "production", "secrets",
     lambda o: _set_env(o, "jobstack-worker", "AMQP_URL", "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@jobstack-rabbitmq:5672/")),
    ("AMQP_URL referring to a later variable", "local", "secrets",
     lambda o: container(o, "jobstack-api")["env"].sort(key=lambda e: e["name"] != "AMQP_URL")),
    ("a Secret committed", "local", "secrets",
     lambda o: o.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oops"}, "data": {}})),
    ("DATABASE_URL from a key CloudNativePG does not make", "production", "secrets",
     lambda o: next(e for e in container(o, "jobstack-api")["env"] if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"].update(key="url")),
    ("api HPA up to 20 replicas (200 connections)", "production", "autoscaling",
     lambda o: find(o, "HorizontalPodAutoscaler", "jobstack-api")["spec"].update(maxReplicas=20)),
    ("local consumer_timeout near a job message's hold", "local", "broker",
     lambda o: find(o, "ConfigMap", "jobstack-rabbitmq-config")["data"].update({"rabbitmq.conf": "consumer_timeout = 30000\n"})),
    ("RabbitmqCluster with 2 nodes", "production", "replication",
     lambda o: find(o, "RabbitmqCluster", "jobstack-rabbitmq")["spec"].update(replicas=2)),
    ("PostgreSQL replication asynchronous (CloudNativePG's default)", "production", "replication",
     lambda o: find(o, "Cluster", "jobstack-db")["spec"]["postgresql"].pop("synchronous")),
    ("synchronous replication that gives way (dataDurability preferred)", "production", "replication",
     lambda o: find(o, "Cluster", "jobstack-db")["spec"]["postgresql"]["synchronous"].update(dataDurability="preferred")),
    ("no PodDisruptionBudget for RabbitMQ", "production", "replication",
     lambda o: o.remove(find(o, "PodDisruptionBudget", "jobstack-rabbitmq"))),
    ("RabbitMQ anti-affinity only preferred", "production", "replication",
     lambda o: find(o, "RabbitmqCluster", "jobstack-rabbitmq")["spec"]["affinity"].update(podAntiAffinity={
         "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
             "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "jobstack-rabbitmq"}}}}]})),
    ("KEDA without a fallback", "production", "keda",
     lambda o: find(o, "ScaledObject", "jobstack-worker")["spec"].pop("fallback")),
    ("KEDA target 8 with a prefetch window of 16", "production", "keda",
     lambda o: trigger(o).update(value="8")),
    ("worker minReplicaCount 1", "production", "keda",
     lambda o: find(o, "ScaledObject", "jobstack-worker")["spec"].update(minReplicaCount=1)),
    ("no PodDisruptionBudget for the worker", "production", "keda",
     lambda o: o.remove(find(o, "PodDisruptionBudget", "jobstack-worker"))),
    ("api without topology spread", "production", "spread",
     lambda o: find(o, "Deployment", "jobstack-api")["spec"]["template"]["spec"].pop("topologySpreadConstraints")),
    ("worker spread on a selector that is not its own", "local", "spread",
     lambda o: [t["labelSelector"]["matchLabels"].update({"app.kubernetes.io/name": "jobstack-api"})
                for t in find(o, "Deployment", "jobstack-worker")["spec"]["template"]["spec"]["topologySpreadConstraints"]]),
    ("the worker's PodMonitor without its job relabelling (job jobstack/jobstack-worker)", "production", "jobs",
     lambda o: find(o, "PodMonitor", "jobstack-worker")["spec"]["podMetricsEndpoints"][0].pop("relabelings")),
    ("the api's job relabelled to jobstack-api", "production", "jobs",
     lambda o: find(o, "ServiceMonitor", "jobstack-api")["spec"]["endpoints"][0]["relabelings"][0].update(replacement="jobstack-api")),
    ("the worker back on the operator's administrator user", "production", "broker_users",
     lambda o: [e["valueFrom"]["secretKeyRef"].update(name="jobstack-rabbitmq-default-user")
                for e in container(o, "jobstack-worker")["env"] if e["name"] in ("AMQP_USERNAME", "AMQP_PASSWORD")]),
    ("KEDA's user tagged administrator", "production", "broker_users",
     lambda o: find(o, "User", "jobstack-keda")["spec"].update(tags=["administrator"])),
    ("the api may publish job events", "production", "broker_users",
     lambda o: find(o, "Permission", "jobstack-api")["spec"]["permissions"].update(write="^jobstack\\..*")),
    ("the worker cannot bind the dead-letter queue", "production", "broker_users",
     lambda o: find(o, "Permission", "jobstack-worker")["spec"]["permissions"].update(write="^jobstack\\.(jobs|api\\.events|control|dlx|events)$")),
    ("a misspelt Permission field (permission)", "production", "schemas",
     lambda o: find(o, "Permission", "jobstack-api")["spec"].update(permission={})),
    ("no ScheduledBackup", "production", "backups",
     lambda o: o.remove(find(o, "ScheduledBackup", "jobstack-db-nightly"))),
    ("WAL not archived", "production", "backups",
     lambda o: find(o, "Cluster", "jobstack-db")["spec"]["plugins"][0].update(isWALArchiver=False)),
    ("the archiver pointed at an ObjectStore that does not exist", "production", "backups",
     lambda o: find(o, "Cluster", "jobstack-db")["spec"]["plugins"][0]["parameters"].update(barmanObjectName="backups")),
    ("a misspelt ObjectStore field (retention)", "production", "schemas",
     lambda o: find(o, "ObjectStore", "jobstack-backups")["spec"].update(retention="30d")),
    ("an alert changed in the PrometheusRule only", "production", "rules",
     lambda o: find(o, "PrometheusRule", "jobstack")["spec"]["groups"][0]["rules"][0].update({"for": "10m"})),
    ("a misspelt PrometheusRule field (rule)", "production", "schemas",
     lambda o: find(o, "PrometheusRule", "jobstack")["spec"]["groups"][0].update(rule=[])),
    ("no default-deny NetworkPolicy", "production", "network",
     lambda o: o.remove(find(o, "NetworkPolicy", "default-deny"))),
    ("the api cut off from PostgreSQL", "production", "network",
     lambda o: find(o, "NetworkPolicy", "jobstack-api")["spec"]["egress"].pop(0)),
    ("PostgreSQL open to every pod on 5432", "production", "network",
     lambda o: find(o, "NetworkPolicy", "jobstack-db")["spec"]["ingress"][0].pop("from")),
    ("the management API open to every namespace", "production", "network",
     lambda o: find(o, "NetworkPolicy", "jobstack-rabbitmq")["spec"]["ingress"][1].update({"from": [{"namespaceSelector": {}}]})),
    ("no DNS", "production", "network",
     lambda o: o.remove(find(o, "NetworkPolicy", "dns"))),
    ("an Ingress path / (exposes /metrics)", "production", "ingress",
     lambda o: find(o, "Ingress", "jobstack-api")["spec"]["rules"][0]["http"]["paths"].append(
         {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "jobstack-api", "port": {"name": "http"}}}})),
    ("an Ingress without TLS", "production", "ingress",
     lambda o: find(o, "Ingress", "jobstack-api")["spec"].pop("tls")),
    ("an Ingress path that is no api route", "production", "ingress",
     lambda o: find(o, "Ingress", "jobstack-api")["spec"]["rules"][0]["http"]["paths"][0].update(path="/job")),
    ("namespace without Pod Security Admission", "production", "admission",
     lambda o: find(o, "Namespace", "jobstack")["metadata"].pop("labels")),
    ("PodMonitor on a port the worker lacks", "production", "monitors",
     lambda o: find(o, "PodMonitor", "jobstack-worker")["spec"]["podMetricsEndpoints"][0].update(port="metrics")),
    ("no OTLP endpoint in production", "production", "telemetry",
     lambda o: find(o, "ConfigMap", "jobstack-config")["data"].update(OTEL_EXPORTER_OTLP_ENDPOINT="")),
    ("Service targetPort renamed", "local", "services",
     lambda o: find(o, "Service", "jobstack-api")["spec"]["ports"][0].update(targetPort="web")),
    ("a misspelt Deployment field (imagePullPolice)", "production", "schemas",
     lambda o: container(o, "jobstack-api").update(imagePullPolice="Always")),
    ("a misspelt RabbitmqCluster field (replica)", "production", "schemas",
     lambda o: find(o, "RabbitmqCluster", "jobstack-rabbitmq")["spec"].update(replica=3)),
    ("ScaledObject minReplicaCount above maxReplicaCount (a CEL rule)", "production", "schemas",
     lambda o: find(o, "ScaledObject", "jobstack-worker")["spec"].update(minReplicaCount=20)),
    ("CloudNativePG instances as a string", "production", "schemas",
     lambda o: find(o, "Cluster", "jobstack-db")["spec"].update(instances="3")),
]
