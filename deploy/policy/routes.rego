# Policy gate over the gateway's route table (services/gateway/src/routes.rs, `ROUTES`): every
# public method must say who may call it and be rate-limited.
#
# Input (built by deploy/check from keel_gateway::routes::ROUTES and the gate's limits):
#   {"routes": [{"path": "/keel.v1.Service/Method",
#                "access": {"kind": "anonymous" | "token" | "step_up", "scope": "…"},
#                "rate_limit": {"per": "source" | "tenant_and_user",
#                               "buckets": [{"name", "per_second", "burst"}, …]}}]}
# Output: `deny`, a set of {"rule", "object", "msg"}. Rules (failing fixtures under
# fixtures/routes/fail/<rule>--*.json):
#
#   route-access      no access rule, an unknown kind, a token or step-up without a scope, or
#                     an anonymous method that is not one of the login flows
#   route-rate-limit  no rate limit, an empty or non-positive bucket, or the wrong key
#                     (anonymous methods are limited per source address, the others per tenant
#                     and user)
package keel.routes

# The only methods callable without a token: they are how a caller gets one.
login_flows := {
	"/keel.v1.AuthenticationService/Login",
	"/keel.v1.AuthenticationService/VerifyMfa",
	"/keel.v1.AuthenticationService/Refresh",
	"/keel.v1.AuthenticationService/Logout",
}

authenticated_kinds := {"token", "step_up"}

violation(rule, route, msg) := {"rule": rule, "object": object.get(route, "path", "?"), "msg": msg}

deny contains violation("route-access", r, msg) if {
	some r in input.routes
	not r.access
	msg := sprintf("%s has no access rule", [object.get(r, "path", "?")])
}

deny contains violation("route-access", r, msg) if {
	some r in input.routes
	kind := r.access.kind
	not kind in authenticated_kinds
	kind != "anonymous"
	msg := sprintf("%s has an unknown access kind %q", [r.path, kind])
}

deny contains violation("route-access", r, msg) if {
	some r in input.routes
	r.access.kind in authenticated_kinds
	object.get(r.access, "scope", "") == ""
	msg := sprintf("%s takes a token but names no scope", [r.path])
}

deny contains violation("route-access", r, msg) if {
	some r in input.routes
	r.access.kind == "anonymous"
	not r.path in login_flows
	msg := sprintf("%s is callable without authentication and is not a login flow", [r.path])
}

limited(r) if count(r.rate_limit.buckets) > 0

deny contains violation("route-rate-limit", r, msg) if {
	some r in input.routes
	not limited(r)
	msg := sprintf("%s has no rate limit", [object.get(r, "path", "?")])
}

deny contains violation("route-rate-limit", r, msg) if {
	some r in input.routes
	some b in r.rate_limit.buckets
	not b.per_second > 0
	msg := sprintf("%s: bucket %q has no positive rate", [r.path, object.get(b, "name", "?")])
}

deny contains violation("route-rate-limit", r, msg) if {
	some r in input.routes
	some b in r.rate_limit.buckets
	not b.burst > 0
	msg := sprintf("%s: bucket %q has no positive burst", [r.path, object.get(b, "name", "?")])
}

deny contains violation("route-rate-limit", r, msg) if {
	some r in input.routes
	r.access.kind == "anonymous"
	limited(r)
	r.rate_limit.per != "source"
	msg := sprintf("%s is anonymous but not limited per source address", [r.path])
}

deny contains violation("route-rate-limit", r, msg) if {
	some r in input.routes
	r.access.kind in authenticated_kinds
	limited(r)
	r.rate_limit.per != "tenant_and_user"
	msg := sprintf("%s is authenticated but not limited per tenant and user", [r.path])
}
