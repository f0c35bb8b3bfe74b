//! The gateway's route table as the route policy reads it (`deploy/policy/routes.rego`).
//!
//! Access comes straight from `keel_gateway::routes::ROUTES`. The rate limit is the gate's
//! rule (services/gateway/src/gate.rs): an anonymous method is charged to its source address's
//! bucket (`limits::ANONYMOUS`, the deployment default), every other one to the tenant's and the
//! user's buckets of the caller's tier (`limits::tier_limits`). That every route really is
//! limited that way is proved end to end by `tests/tests/gateway_limits.rs`, which walks the
//! same table against a running gateway.

use keel_gateway::limits::{self, Rate};
use keel_gateway::routes::{Access, ROUTES, Route};
use serde_json::{Value, json};

/// The rows of the tier table (`limits::tier_limits`; an unknown tier gets the smallest).
pub const TIERS: &[&str] = &["free", "pro", "enterprise"];

fn bucket(name: &str, rate: Rate) -> Value {
    json!({ "name": name, "per_second": rate.per_second, "burst": rate.burst })
}

/// One route as the policy reads it.
pub fn route(r: &Route) -> Value {
    let (access, rate_limit) = match r.access {
        Access::Anonymous => (
            json!({ "kind": "anonymous" }),
            json!({ "per": "source", "buckets": [bucket("source", limits::ANONYMOUS)] }),
        ),
        Access::Token(scope) | Access::StepUp(scope) => {
            let kind = if matches!(r.access, Access::StepUp(_)) {
                "step_up"
            } else {
                "token"
            };
            let buckets: Vec<Value> = TIERS
                .iter()
                .flat_map(|tier| {
                    let l = limits::tier_limits(tier);
                    [
                        bucket(&format!("{tier}/tenant"), l.tenant),
                        bucket(&format!("{tier}/user"), l.user),
                    ]
                })
                .collect();
            (
                json!({ "kind": kind, "scope": scope }),
                json!({ "per": "tenant_and_user", "buckets": buckets }),
            )
        }
    };
    json!({ "path": r.path, "access": access, "rate_limit": rate_limit })
}

/// A route table as the policy's input.
pub fn table_of(routes: &[Route]) -> Value {
    json!({ "routes": routes.iter().map(route).collect::<Vec<_>>() })
}

/// The gateway's real route table.
pub fn table() -> Value {
    table_of(ROUTES)
}
