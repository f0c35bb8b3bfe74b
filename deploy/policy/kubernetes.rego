# Policy gates over rendered Kubernetes objects (`kubectl kustomize deploy/k8s/overlays/<env>`).
#
# Input: one object. Output: `deny`, a set of {"rule", "object", "msg"}; empty means admitted.
# Rules (each with a failing fixture under fixtures/kubernetes/fail/<rule>--*.yaml):
#
#   public-exposure       an Ingress, or a Service of type LoadBalancer/NodePort, without
#                         `keel.dev/auth: required` and a `keel.dev/rate-limit` annotation
#   public-backend        public exposure of anything but the gateway
#   image-digest          a container image not pinned by `@sha256:<64 hex>`
#   run-as-root           a container that may run as root (no effective runAsNonRoot: true, or
#                         runAsUser: 0)
#   privilege-escalation  allowPrivilegeEscalation not false, or privileged
#   read-only-root        a container whose root file system is writable
#   probes                a long-running workload's container without readiness and liveness
#                         probes
#   resource-limits       a container without CPU and memory requests and limits
#   secret-literal        a secret written into a manifest: an env var named like a secret
#                         (*KEY*, *SECRET*, *TOKEN*, *PASSWORD*) with a literal value or taken
#                         from a ConfigMap instead of valueFrom.secretKeyRef, a password inside
#                         a URL, such keys in a ConfigMap, or a Secret object carrying data
#
# Run by the tests of deploy/check (crate keel-deploy-check) with the regorus engine.
package keel.kubernetes

# --- the object and its pods -------------------------------------------------------------

object_name := sprintf("%s/%s", [object.get(input, "kind", "?"), object.get(input, ["metadata", "name"], "?")])

violation(rule, msg) := {"rule": rule, "object": object_name, "msg": msg}

template_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "Rollout"}

# Kinds whose pods are meant to keep running (and so must say when they are alive and ready).
long_running_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Rollout"}

pod_spec := input.spec if input.kind == "Pod"

# A Rollout with a workloadRef has no template of its own: its Deployment is checked instead.
pod_spec := input.spec.template.spec if input.kind in template_kinds

pod_spec := input.spec.jobTemplate.spec.template.spec if input.kind == "CronJob"

containers contains c if {
	some c in pod_spec.containers
}

containers contains c if {
	some c in pod_spec.initContainers
}

containers contains c if {
	some c in pod_spec.ephemeralContainers
}

security(c) := object.get(c, "securityContext", {})

# A container's setting, or else its pod's.
effective(c, field) := v if {
	v := security(c)[field]
} else := object.get(object.get(pod_spec, "securityContext", {}), field, null)

# --- public exposure ----------------------------------------------------------------------

public if input.kind == "Ingress"

public if {
	input.kind == "Service"
	input.spec.type in {"LoadBalancer", "NodePort"}
}

annotations := object.get(input, ["metadata", "annotations"], {})

rate_limited if {
	limit := object.get(annotations, "keel.dev/rate-limit", "")
	not lower(limit) in {"", "none", "off", "false"}
}

deny contains violation("public-exposure", msg) if {
	public
	object.get(annotations, "keel.dev/auth", "") != "required"
	msg := sprintf("%s is reachable from outside the cluster without the annotation keel.dev/auth: required", [object_name])
}

deny contains violation("public-exposure", msg) if {
	public
	not rate_limited
	msg := sprintf("%s is reachable from outside the cluster without a keel.dev/rate-limit annotation", [object_name])
}

# The gateway is keel's only public entry.
public_services := {"gateway"}

ingress_backends contains name if {
	name := input.spec.defaultBackend.service.name
}

ingress_backends contains name if {
	some rule in input.spec.rules
	some path in rule.http.paths
	name := path.backend.service.name
}

deny contains violation("public-backend", msg) if {
	input.kind == "Ingress"
	some name in ingress_backends
	not name in public_services
	msg := sprintf("%s routes to the Service %q: only the gateway is public", [object_name, name])
}

deny contains violation("public-backend", msg) if {
	input.kind == "Service"
	input.spec.type in {"LoadBalancer", "NodePort"}
	selected := object.get(input, ["spec", "selector", "app.kubernetes.io/name"], "")
	not selected in public_services
	msg := sprintf("%s exposes %q outside the cluster: only the gateway is public", [object_name, selected])
}

# --- images ---------------------------------------------------------------------------------

deny contains violation("image-digest", msg) if {
	some c in containers
	image := object.get(c, "image", "")
	not regex.match(`@sha256:[a-f0-9]{64}$`, image)
	msg := sprintf("%s: container %q runs %q, not pinned by digest (@sha256:<64 hex>)", [object_name, c.name, image])
}

# --- privileges -----------------------------------------------------------------------------

deny contains violation("run-as-root", msg) if {
	some c in containers
	effective(c, "runAsNonRoot") != true
	msg := sprintf("%s: container %q may run as root (runAsNonRoot is not true)", [object_name, c.name])
}

deny contains violation("run-as-root", msg) if {
	some c in containers
	effective(c, "runAsUser") == 0
	msg := sprintf("%s: container %q runs as user 0", [object_name, c.name])
}

deny contains violation("privilege-escalation", msg) if {
	some c in containers
	object.get(security(c), "allowPrivilegeEscalation", true) != false
	msg := sprintf("%s: container %q may gain privileges (allowPrivilegeEscalation is not false)", [object_name, c.name])
}

deny contains violation("privilege-escalation", msg) if {
	some c in containers
	object.get(security(c), "privileged", false) == true
	msg := sprintf("%s: container %q is privileged", [object_name, c.name])
}

deny contains violation("read-only-root", msg) if {
	some c in containers
	object.get(security(c), "readOnlyRootFilesystem", false) != true
	msg := sprintf("%s: container %q can write its root file system", [object_name, c.name])
}

# --- health and resources -------------------------------------------------------------------

deny contains violation("probes", msg) if {
	input.kind in long_running_kinds
	some c in pod_spec.containers
	some probe in ["readinessProbe", "livenessProbe"]
	not c[probe]
	msg := sprintf("%s: container %q has no %s", [object_name, c.name, probe])
}

deny contains violation("resource-limits", msg) if {
	some c in containers
	some kind in ["limits", "requests"]
	some resource in ["cpu", "memory"]
	object.get(c, ["resources", kind, resource], "") == ""
	msg := sprintf("%s: container %q has no %s %s", [object_name, c.name, resource, kind])
}

# --- secrets --------------------------------------------------------------------------------

secret_name(name) if regex.match(`(?i)(^|[_.-])(API_?KEY|KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)([_.-]|$)`, name)

# Values that may be written in the open under a secret-like name: nothing, a number, a
# duration or a boolean (KEEL_AUTH_ACCESS_TOKEN_TTL=5m), or only references to other variables
# ($(VAR), which Kubernetes expands from secretKeyRefs).
harmless(v) if v == ""

harmless(v) if regex.match(`^[0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h|d)?$`, v)

harmless(v) if lower(v) in {"true", "false"}

harmless(v) if regex.match(`^(\$\([A-Za-z_][A-Za-z0-9_]*\)[,;: ]?)+$`, v)

# A password inside a URL (scheme://user:password@host) that is not a $(VAR) reference.
credential_in_url(v) if {
	some m in regex.find_all_string_submatch_n(`[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:([^/@\s]+)@`, v, -1)
	not regex.match(`^\$\([A-Za-z_][A-Za-z0-9_]*\)$`, m[1])
}

env_vars contains [c.name, e] if {
	some c in containers
	some e in object.get(c, "env", [])
}

deny contains violation("secret-literal", msg) if {
	some [container, e] in env_vars
	secret_name(e.name)
	value := object.get(e, "value", "")
	not harmless(value)
	msg := sprintf("%s: container %q sets %s to a literal value; take it from a Secret (valueFrom.secretKeyRef)", [object_name, container, e.name])
}

deny contains violation("secret-literal", msg) if {
	some [container, e] in env_vars
	secret_name(e.name)
	e.valueFrom.configMapKeyRef
	msg := sprintf("%s: container %q takes %s from a ConfigMap; take it from a Secret (valueFrom.secretKeyRef)", [object_name, container, e.name])
}

deny contains violation("secret-literal", msg) if {
	some [container, e] in env_vars
	credential_in_url(object.get(e, "value", ""))
	msg := sprintf("%s: container %q writes a password into the URL of %s; compose it from a secretKeyRef variable, $(VAR)", [object_name, container, e.name])
}

deny contains violation("secret-literal", msg) if {
	input.kind == "ConfigMap"
	some key, value in object.get(input, "data", {})
	secret_name(key)
	not harmless(value)
	msg := sprintf("%s holds %s, named like a secret: secrets belong in a Secret", [object_name, key])
}

deny contains violation("secret-literal", msg) if {
	input.kind == "ConfigMap"
	some key, value in object.get(input, "data", {})
	credential_in_url(value)
	msg := sprintf("%s holds a password inside the URL of %s", [object_name, key])
}

deny contains violation("secret-literal", msg) if {
	input.kind == "Secret"
	count(object.get(input, "data", {})) + count(object.get(input, "stringData", {})) > 0
	msg := sprintf("%s carries secret values in the manifests; secrets are created outside the repository and referenced by name", [object_name])
}
