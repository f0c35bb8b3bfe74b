//! keel's objectives: the public ones promised at the gateway, and our own internal ones.

use crate::spec::{Audience, Indicator, MethodGroup, Methods, Service, Slo, Target, Threshold};

/// gRPC codes that are the server's fault. Client errors (`INVALID_ARGUMENT`, `NOT_FOUND`,
/// `UNAUTHENTICATED`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED` from the rate limits,
/// `FAILED_PRECONDITION`, `ALREADY_EXISTS`, `ABORTED` on a version conflict) and `CANCELLED` (the
/// client left) spend no budget.
pub const SERVER_FAULT_CODES: &[&str] = &[
    "UNAVAILABLE",
    "INTERNAL",
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "DATA_LOSS",
];

/// `method` labels of the calls every server answers that are not traffic: health checks and
/// reflection (`grpc.health.v1.Health`, `grpc.reflection.v1.ServerReflection`).
pub const NOT_TRAFFIC: &[&str] = &["Check", "Watch", "ServerReflectionInfo"];

/// CRUD: every method of the public document service.
pub const DOCUMENTS: MethodGroup = MethodGroup {
    grpc_service: "keel.v1.DocumentService",
    methods: &[
        "CreateDocument",
        "GetDocument",
        "ListDocuments",
        "UpdateDocument",
        "DeleteDocument",
    ],
};

/// Every method of the public inference service. `Generate` streams: its duration is the time
/// to the response headers (the upstream's stream has started), not to the last chunk.
pub const INFERENCE: MethodGroup = MethodGroup {
    grpc_service: "keel.v1.InferenceService",
    methods: &["Generate", "Complete", "Embed"],
};

/// Auth's token paths: the calls that issue tokens, and the key lookups every gateway's token
/// verification depends on.
pub const AUTH_TOKEN_PATHS: &[MethodGroup] = &[
    MethodGroup {
        grpc_service: "keel.auth.v1.Authentication",
        methods: &["Login", "VerifyMfa", "Refresh", "StepUp"],
    },
    MethodGroup {
        grpc_service: "keel.auth.v1.KeyDirectory",
        methods: &["GetVerificationKey", "ListVerificationKeys"],
    },
];

/// Postproc's durable consumers (the `*_CONSUMER` constants of `services/postproc`).
pub const POSTPROC_CONSUMERS: &[&str] = &[
    "postproc-documents",
    "postproc-usage",
    "postproc-moderation",
    "postproc-audit",
];

/// Every objective, public first.
pub const SLOS: &[Slo] = &[
    Slo {
        name: "gateway-availability",
        service: Service::Gateway,
        audience: Audience::Public,
        target: Target::basis_points(9990),
        indicator: Indicator::Availability(Methods::Served),
        summary: "99.9 % of the public gateway's calls are answered without a server fault (calls shed at capacity count as faults)",
        first_checks: &[
            "Errors by code and the server-fault ratio by method on the gateway dashboard.",
            "Circuit breakers (`keel_breaker_state`): an open `inference` or `models` breaker means the fault is downstream; check the inference and auth dashboards.",
            "Shed calls (`keel_rpc_shed_total`): the gateway is at `KEEL_GATEWAY_MAX_IN_FLIGHT`; add instances or find what holds slots (long streams).",
            "`keel_ready`: an instance that is not ready is failing a dependency check (Redis, auth, inference).",
        ],
    },
    Slo {
        name: "gateway-documents-latency",
        service: Service::Gateway,
        audience: Audience::Public,
        target: Target::basis_points(9500),
        indicator: Indicator::Latency {
            methods: Methods::Only(&[DOCUMENTS]),
            threshold: Threshold::millis(300),
        },
        summary: "95 % of document (CRUD) calls through the gateway complete within 300 ms",
        first_checks: &[
            "p95 by method on the gateway dashboard: one method or all of them.",
            "The gateway's own time (`keel_rpc_overhead_seconds`): if it is small, the time is spent in inference and its Postgres shard.",
            "The inference dashboard's duration by method, then the shards' Postgres (locks, connection pool).",
        ],
    },
    Slo {
        name: "gateway-inference-latency",
        service: Service::Gateway,
        audience: Audience::Public,
        target: Target::basis_points(9500),
        indicator: Indicator::Latency {
            methods: Methods::Only(&[INFERENCE]),
            threshold: Threshold::millis(2000),
        },
        summary: "95 % of inference calls (Generate until its stream starts, Complete, Embed) through the gateway complete within 2 s",
        first_checks: &[
            "Time to first token by model version on the inference dashboard: one slow upstream model?",
            "Model breakers and fallbacks: a fallback chain adds the failed attempt's time.",
            "The answer cache's hit ratio: a Redis outage (breaker `redis:cache` open) sends every call to the models.",
        ],
    },
    Slo {
        name: "internal-auth-token-availability",
        service: Service::Auth,
        audience: Audience::Internal,
        target: Target::basis_points(9995),
        indicator: Indicator::Availability(Methods::Only(AUTH_TOKEN_PATHS)),
        summary: "internal: 99.95 % of auth's token-path calls (login, MFA, refresh, step-up, key lookups) succeed or fail only on the client's side; every gateway call depends on them",
        first_checks: &[
            "Token paths by method and code on the auth dashboard.",
            "Auth's Postgres shards and Redis (sessions, revocations): `keel_ready` of the auth instances.",
            "Argon2 work: logins queue behind the password semaphore under a login storm (DEADLINE_EXCEEDED).",
        ],
    },
    Slo {
        name: "internal-gateway-documents-latency",
        service: Service::Gateway,
        audience: Audience::Internal,
        target: Target::basis_points(9500),
        indicator: Indicator::Latency {
            methods: Methods::Only(&[DOCUMENTS]),
            threshold: Threshold::millis(100),
        },
        summary: "internal: 95 % of document (CRUD) calls through the gateway complete within 100 ms, well inside the public 300 ms",
        first_checks: &[
            "As for gateway-documents-latency; this one burns first, so there is time before the public objective does.",
        ],
    },
    Slo {
        name: "internal-postproc-delivery",
        service: Service::Postproc,
        audience: Audience::Internal,
        target: Target::basis_points(9990),
        indicator: Indicator::Delivery {
            consumers: POSTPROC_CONSUMERS,
        },
        summary: "internal: 99.9 % of the events postproc's consumers settle are applied, not dead-lettered",
        first_checks: &[
            "Messages by consumer and outcome on the postproc dashboard: which consumer dead-letters.",
            "The dead letters (`keelctl dlq list`, `keelctl dlq show <sequence>`): each one stores why it failed.",
            "Postgres shards of postproc and inference's retrieval index (the documents consumer indexes there first).",
        ],
    },
];

/// The objectives measured on one service.
pub fn of(service: Service) -> impl Iterator<Item = &'static Slo> {
    SLOS.iter().filter(move |s| s.service == service)
}
