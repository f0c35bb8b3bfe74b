//! Admission for every public call: route lookup, access token, revocation, tenant, scope,
//! step-up.
//!
//! Order of checks (auth.md): the route must exist (fail closed); anonymous routes (login flows)
//! pass; then the bearer token is checked without any key (size, shape, header, `typ`), its key
//! found by `kid` in the local cache (fetched from auth on a miss, at a bounded rate), verified
//! with the algorithm of the key record, its claims checked and bound to the key's tenant. Then
//! the session must not be revoked (Redis, so logout and refresh-reuse take effect within a
//! second), the tenant must be active, a client-sent `keel-tenant-id` must agree, the route's
//! scope must be granted, and high-risk routes need a recent MFA (RFC 9470 challenge otherwise).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_errors::{Reason, reason_of, status};
use keel_proto::auth::key_directory_client::KeyDirectoryClient;
use keel_proto::auth::tenant_directory_client::TenantDirectoryClient;
use keel_runtime::{Admission, Caller, Gate, GateFuture};
use keel_tenancy::{GRPC_TENANT_HEADER, TenantId};
use keel_token::{Clock, KeyRecord, KeySource, KeyState, SystemClock, TokenError, Verifier};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::limits::{Decision, Limiter};
use crate::routes::{self, Access};
use crate::swr::{Lookup, Swr, Windows};

/// Cache a resolved tenant this long: tenant status changes (suspension) take effect within it
/// (plus one round trip to auth, made in the background by the first call past it).
pub const TENANT_CACHE_TTL: Duration = Duration::from_secs(5);
/// While auth cannot be reached, a tenant it confirmed within this long is still served: an
/// auth restart must not refuse every tenant's calls (the keys are served stale the same way).
const TENANT_MAX_STALENESS: Duration = Duration::from_secs(60);
/// A failed background re-read is tried again after this long (per tenant or session), so an
/// unreachable dependency costs one attempt per pause, not one per call.
const REFRESH_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Cache "no such tenant" for less time, so a tenant created a moment ago becomes usable fast.
const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(1);
/// Bound on each cache, so made-up tenants or kids cannot grow memory without limit.
const CACHE_CAPACITY: usize = 10_000;
/// Deadline for lookups in the auth service.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// A known key is re-read from auth this often, so a revocation reaches the gateway within it.
const KEY_REFRESH: Duration = Duration::from_secs(2);
/// An unknown kid is asked about again only after this long (no refetch storms per kid)...
const UNKNOWN_KID_TTL: Duration = Duration::from_secs(5);
/// ...and at most this many fetches of unknown kids happen per second overall (no storms
/// across made-up kids)...
const UNKNOWN_KID_FETCHES_PER_SECOND: u32 = 20;
/// ...while refreshes of known keys have a budget of their own, so made-up kids cannot stop the
/// gateway from learning that a real key was revoked.
const KNOWN_KEY_REFRESHES_PER_SECOND: u32 = 200;
/// A known key not confirmed by auth for this long is not used: past its refresh budget, or
/// while auth cannot be reached, the gateway refuses rather than trust a possibly revoked key.
const KEY_MAX_STALENESS: Duration = Duration::from_secs(600);
/// A session seen not revoked is trusted for this long before Redis is asked again...
const SESSION_CHECK_TTL: Duration = Duration::from_millis(500);
/// ...in the background by the first call past it, while calls keep being answered for up to
/// this long since the last check: a busy session's revocation lands within `SESSION_CHECK_TTL`
/// plus a Redis round trip, an idle one's on its next call, and no call waits on Redis for a
/// session it saw moments ago.
const SESSION_MAX_STALENESS: Duration = Duration::from_secs(2);
/// Step-up methods need an MFA no older than this (RFC 9470 `max_age`) unless the tenant's
/// policy sets its own.
pub const STEP_UP_MAX_AGE_SECS: i64 = 300;

#[derive(Clone, Debug)]
enum Resolved {
    /// With the tenant's step-up rules: scope → max age of the MFA, seconds.
    Active(Arc<HashMap<String, i64>>),
    Suspended,
    Unknown,
}

/// How recent an MFA a call needing `scope` must carry: `None` when it needs no step-up.
/// Routes marked step-up always need one (the tenant may only tighten the age); a tenant's
/// policy may add step-up to other scopes.
fn step_up_age(route_step_up: bool, scope: &str, rules: &HashMap<String, i64>) -> Option<i64> {
    match (route_step_up, rules.get(scope)) {
        (true, Some(age)) => Some((*age).min(STEP_UP_MAX_AGE_SECS)),
        (true, None) => Some(STEP_UP_MAX_AGE_SECS),
        (false, Some(age)) => Some(*age),
        (false, None) => None,
    }
}

struct KeyCache {
    entries: HashMap<String, (Instant, Option<KeyRecord>)>,
    window: Instant,
    unknown_fetches: u32,
    known_refreshes: u32,
    /// Known keys being re-confirmed in the background (one refresh per kid at a time).
    refreshing: std::collections::HashSet<String>,
}

impl KeyCache {
    /// Is `kid` a known key confirmed by auth within `KEY_MAX_STALENESS`?
    fn usable_stale(&self, kid: &str) -> bool {
        self.entries
            .get(kid)
            .is_some_and(|(at, k)| k.is_some() && at.elapsed() < KEY_MAX_STALENESS)
    }
}

impl KeySource for KeyCache {
    fn key(&self, kid: &str) -> Result<Option<KeyRecord>, TokenError> {
        Ok(self.entries.get(kid).and_then(|(_, k)| k.clone()))
    }
}

pub struct AuthGate {
    issuer_base: String,
    /// First part of the Redis keys auth writes revocations under (`KEEL_REDIS_PREFIX`).
    redis_prefix: String,
    directory: TenantDirectoryClient<Channel>,
    key_directory: KeyDirectoryClient<Channel>,
    redis: deadpool_redis::Pool,
    tenants: Arc<Swr<TenantId, Resolved>>,
    keys: Arc<Mutex<KeyCache>>,
    /// Owns the background refreshes of known keys.
    tasks: keel_runtime::Tasks,
    /// Whose `x-forwarded-for` names the client of a login flow.
    trusted_proxies: crate::forwarded::TrustedProxies,
    /// Tokens verified recently (expiry and key re-checked on every hit).
    verified: keel_token::VerifiedCache,
    /// `tenant/sid` → revoked?
    sessions: Arc<Swr<String, ()>>,
    clock: SystemClock,
    limiter: Arc<Limiter>,
    /// Refuse (rather than serve) while Redis cannot answer revocation checks.
    fail_closed: bool,
    last_revocation_warning: Mutex<Option<Instant>>,
}

fn unauthenticated(msg: &str) -> tonic::Status {
    let mut st = status(Reason::Unauthenticated, msg, Vec::new());
    st.metadata_mut().insert(
        "www-authenticate",
        tonic::metadata::MetadataValue::from_static(
            "Bearer realm=\"keel\", error=\"invalid_token\"",
        ),
    );
    st
}

fn unavailable(dependency: &str) -> tonic::Status {
    status(
        Reason::Unavailable,
        format!("{dependency} is unavailable; retry shortly"),
        vec![("dependency", dependency.into())],
    )
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    k: K,
    v: V,
    keep: impl FnMut(&K, &mut V) -> bool,
) {
    if map.len() >= CACHE_CAPACITY {
        map.retain(keep);
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
    }
    map.insert(k, v);
}

/// Asks auth for `kid`: `Ok(None)` when auth does not know it (or answers with a key this
/// gateway cannot use), `Err` when auth could not answer.
async fn fetch_key(
    mut directory: KeyDirectoryClient<Channel>,
    kid: &str,
) -> Result<Option<KeyRecord>, tonic::Status> {
    let mut req = tonic::Request::new(keel_proto::auth::GetVerificationKeyRequest {
        kid: kid.to_owned(),
    });
    req.set_timeout(DIRECTORY_TIMEOUT);
    let k = match directory.get_verification_key(req).await {
        Ok(resp) => resp.into_inner(),
        Err(st) if st.code() == tonic::Code::NotFound => return Ok(None),
        Err(st) => return Err(st),
    };
    let public: Option<[u8; 32]> = k.public_key.try_into().ok();
    Ok(
        match (
            TenantId::parse(&k.tenant_id),
            public.and_then(|p| ed25519_dalek::VerifyingKey::from_bytes(&p).ok()),
            KeyState::parse(&k.state),
        ) {
            (Ok(tenant), Some(public), Some(state))
                if k.alg == keel_token::ALG_EDDSA && k.kid == kid =>
            {
                Some(KeyRecord {
                    kid: k.kid,
                    tenant,
                    public,
                    state,
                    valid_from: k.valid_from_unix,
                    verify_until: (k.verify_until_unix > 0).then_some(k.verify_until_unix),
                })
            }
            _ => None,
        },
    )
}

fn store_key(keys: &Mutex<KeyCache>, kid: &str, fetched: Option<KeyRecord>) {
    if let Ok(mut cache) = keys.lock() {
        bounded_insert(
            &mut cache.entries,
            kid.to_owned(),
            (Instant::now(), fetched),
            // Known keys survive a flood of made-up kids; unknown ones go first.
            |_, (at, k)| k.is_some() && at.elapsed() < KEY_MAX_STALENESS,
        );
    }
}

/// Asks auth for the tenant's state; `Err` when auth could not answer.
async fn fetch_tenant(
    mut directory: TenantDirectoryClient<Channel>,
    t: &TenantId,
) -> Result<Resolved, tonic::Status> {
    let mut req = tonic::Request::new(keel_proto::auth::GetTenantRequest {
        tenant_id: t.to_string(),
    });
    AuthGate::with_tenant(&mut req, t);
    match directory.get_tenant(req).await {
        Ok(resp) if resp.get_ref().status == "active" => Ok(Resolved::Active(Arc::new(
            resp.get_ref()
                .step_up
                .iter()
                .map(|r| (r.scope.clone(), i64::from(r.max_age_seconds)))
                .collect(),
        ))),
        Ok(_) => Ok(Resolved::Suspended),
        Err(st) if reason_of(&st) == Reason::TenantUnknown => Ok(Resolved::Unknown),
        Err(st) => {
            tracing::warn!(code = ?st.code(), message = st.message(), "tenant directory unavailable");
            Err(unavailable("auth"))
        }
    }
}

/// Is the session `sid` of `tenant` revoked? One Redis round trip, bounded like the limiter's:
/// a stalled Redis must not hold the call.
async fn revoked_in_redis(
    limiter: &Limiter,
    redis: &deadpool_redis::Pool,
    key: String,
) -> Result<bool, String> {
    limiter
        .round_trip(async {
            let mut conn = redis.get().await.map_err(|e| e.to_string())?;
            redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await
}

impl AuthGate {
    /// The gate of the gateway configured by `cfg` (issuer, Redis prefix and failure mode, the
    /// anonymous budget, trusted proxies); `tasks` owns its background key refreshes.
    pub fn new(
        cfg: &crate::Config,
        auth: Channel,
        redis: deadpool_redis::Pool,
        tasks: keel_runtime::Tasks,
    ) -> Self {
        AuthGate {
            tasks: tasks.clone(),
            trusted_proxies: cfg.trusted_proxies.clone(),
            limiter: Arc::new(Limiter::new(
                redis.clone(),
                cfg.redis_prefix.clone(),
                cfg.redis_fail_closed,
                cfg.anonymous_rate,
                tasks,
            )),
            fail_closed: cfg.redis_fail_closed,
            last_revocation_warning: Mutex::new(None),
            issuer_base: cfg.issuer_base.clone(),
            redis_prefix: cfg.redis_prefix.clone(),
            directory: TenantDirectoryClient::new(auth.clone()),
            key_directory: KeyDirectoryClient::new(auth),
            redis,
            tenants: Arc::new(Swr::new(CACHE_CAPACITY, TENANT_MAX_STALENESS)),
            verified: keel_token::VerifiedCache::default(),
            keys: Arc::new(Mutex::new(KeyCache {
                entries: HashMap::new(),
                window: Instant::now(),
                unknown_fetches: 0,
                known_refreshes: 0,
                refreshing: std::collections::HashSet::new(),
            })),
            sessions: Arc::new(Swr::new(CACHE_CAPACITY, SESSION_MAX_STALENESS)),
            clock: SystemClock,
        }
    }

    fn with_tenant<T>(req: &mut tonic::Request<T>, t: &TenantId) {
        req.set_timeout(DIRECTORY_TIMEOUT);
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(t.as_str()) {
            req.metadata_mut().insert(GRPC_TENANT_HEADER, v);
        }
        keel_telemetry::propagation::inject_grpc(req.metadata_mut());
    }

    /// The tenant's state: from the cache while fresh; past that, from the cache while auth is
    /// asked in the background; when unknown or too old, from auth before answering.
    async fn resolve(&self, t: &TenantId) -> Result<Resolved, tonic::Status> {
        let windows = |r: &Resolved| match r {
            // A tenant created a moment ago must become usable fast: no stale "unknown".
            Resolved::Unknown => Windows {
                fresh: NEGATIVE_CACHE_TTL,
                stale: NEGATIVE_CACHE_TTL,
            },
            Resolved::Active(_) | Resolved::Suspended => Windows {
                fresh: TENANT_CACHE_TTL,
                stale: TENANT_MAX_STALENESS,
            },
        };
        match self.tenants.lookup(t, Instant::now(), windows) {
            Lookup::Fresh(r) => Ok(r),
            Lookup::Stale { value, refresh } => {
                if refresh {
                    let (directory, tenants, t) =
                        (self.directory.clone(), self.tenants.clone(), t.clone());
                    self.tasks.spawn("tenant-refresh", async move {
                        match fetch_tenant(directory, &t).await {
                            Ok(r) => tenants.store(t, r, Instant::now()),
                            Err(_) => tenants.failed(&t, Instant::now(), REFRESH_RETRY_PAUSE),
                        }
                    });
                }
                Ok(value)
            }
            Lookup::Miss => {
                let r = fetch_tenant(self.directory.clone(), t).await?;
                self.tenants.store(t.clone(), r.clone(), Instant::now());
                Ok(r)
            }
        }
    }

    /// Makes sure the key cache has a fresh answer for `kid` (fetching at a bounded rate).
    ///
    /// A known key that is due for re-confirmation keeps serving while auth is asked in the
    /// background (one refresh per kid at a time): no call waits on auth for a key it already
    /// knows, so auth's latency — or a shard of auth's that is down — never sits in the hot
    /// path; a revocation still lands within `KEY_REFRESH` plus one round trip. Unknown kids,
    /// and known keys not confirmed for `KEY_MAX_STALENESS`, are fetched before answering.
    async fn ensure_key(&self, kid: &str) -> Result<(), tonic::Status> {
        {
            let Ok(mut cache) = self.keys.lock() else {
                return Err(unavailable("key cache"));
            };
            let (fresh, known) = match cache.entries.get(kid) {
                Some((at, Some(_))) => (at.elapsed() < KEY_REFRESH, true),
                Some((at, None)) => (at.elapsed() < UNKNOWN_KID_TTL, false),
                None => (false, false),
            };
            if fresh {
                return Ok(());
            }
            if cache.window.elapsed() >= Duration::from_secs(1) {
                cache.window = Instant::now();
                cache.unknown_fetches = 0;
                cache.known_refreshes = 0;
            }
            if known {
                let usable = cache.usable_stale(kid);
                if cache.known_refreshes >= KNOWN_KEY_REFRESHES_PER_SECOND {
                    // Over budget: a recently confirmed key keeps working a while.
                    return if usable {
                        Ok(())
                    } else {
                        Err(unavailable("auth"))
                    };
                }
                if usable {
                    if cache.refreshing.insert(kid.to_owned()) {
                        cache.known_refreshes += 1;
                        let (directory, keys, kid) = (
                            self.key_directory.clone(),
                            self.keys.clone(),
                            kid.to_owned(),
                        );
                        self.tasks.spawn("key-refresh", async move {
                            match fetch_key(directory, &kid).await {
                                Ok(fetched) => store_key(&keys, &kid, fetched),
                                Err(st) => tracing::warn!(
                                    code = ?st.code(),
                                    error = st.message(),
                                    "key directory unavailable; serving the key auth confirmed last"
                                ),
                            }
                            if let Ok(mut cache) = keys.lock() {
                                cache.refreshing.remove(&kid);
                            }
                        });
                    }
                    return Ok(());
                }
                cache.known_refreshes += 1;
            } else {
                if cache.unknown_fetches >= UNKNOWN_KID_FETCHES_PER_SECOND {
                    // Over budget: the kid stays unknown (the token is refused).
                    return Ok(());
                }
                cache.unknown_fetches += 1;
            }
        }
        match fetch_key(self.key_directory.clone(), kid).await {
            Ok(fetched) => {
                store_key(&self.keys, kid, fetched);
                Ok(())
            }
            Err(st) => {
                tracing::warn!(code = ?st.code(), error = st.message(), "key directory unavailable");
                // Refuse what we cannot check.
                Err(unavailable("auth"))
            }
        }
    }

    /// The shared limiter (model-token budgets are charged by the inference edge).
    pub fn limiter(&self) -> Arc<Limiter> {
        self.limiter.clone()
    }

    /// Charges the call to its buckets: the response headers when admitted, the refusal when
    /// not.
    async fn limit(
        &self,
        keys: &[(String, crate::limits::Rate)],
    ) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, tonic::Status> {
        let (decision, source) = self
            .limiter
            .check(keys, 1)
            .await
            .map_err(|_| unavailable("rate limiter"))?;
        let source = match source {
            crate::limits::Source::Redis => "redis",
            crate::limits::Source::Local => "local",
        };
        let num = |n: u64| http::HeaderValue::from(n);
        match decision {
            Decision::Allowed {
                limit,
                remaining,
                reset,
            } => {
                metrics::counter!("keel_gateway_ratelimit_decisions_total", "result" => "allowed", "source" => source).increment(1);
                Ok(vec![
                    (RATELIMIT_LIMIT.clone(), num(u64::from(limit))),
                    (RATELIMIT_REMAINING.clone(), num(u64::from(remaining))),
                    (
                        RATELIMIT_RESET.clone(),
                        num(reset.as_secs_f64().ceil() as u64),
                    ),
                ])
            }
            Decision::Denied { limit, retry_after } => {
                metrics::counter!("keel_gateway_ratelimit_decisions_total", "result" => "denied", "source" => source).increment(1);
                let ms = retry_after.as_millis().max(1) as u64;
                let mut st = status(
                    Reason::RateLimited,
                    format!("rate limit reached; retry after {ms} ms"),
                    vec![("retry_after_ms", ms.to_string())],
                );
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let md = st.metadata_mut();
                md.insert("retry-after", secs.into());
                md.insert("x-ratelimit-limit", u64::from(limit).into());
                md.insert("x-ratelimit-remaining", 0u64.into());
                md.insert("x-ratelimit-reset", secs.into());
                Err(st)
            }
        }
    }

    /// Is the session revoked? Only sessions seen *not* revoked are cached (a revocation can
    /// be taken back: a client registered again): from the cache while fresh; past that, from
    /// the cache while Redis is asked in the background (a revocation found there drops the
    /// entry, so the next call asks Redis itself and is refused); after
    /// [`SESSION_MAX_STALENESS`], from Redis before answering (fail-open or fail-closed when
    /// Redis cannot answer).
    async fn session_revoked(&self, tenant: &TenantId, sid: &str) -> Result<bool, tonic::Status> {
        let cache_key = format!("{tenant}/{sid}");
        let redis_key = || tenant.redis_key(&format!("{}:revoked", self.redis_prefix), sid);
        let windows = |_: &()| Windows {
            fresh: SESSION_CHECK_TTL,
            stale: SESSION_MAX_STALENESS,
        };
        match self.sessions.lookup(&cache_key, Instant::now(), windows) {
            Lookup::Fresh(()) => return Ok(false),
            Lookup::Stale { value: (), refresh } => {
                if refresh {
                    let (limiter, redis, sessions, key) = (
                        self.limiter.clone(),
                        self.redis.clone(),
                        self.sessions.clone(),
                        redis_key(),
                    );
                    self.tasks.spawn("session-refresh", async move {
                        match revoked_in_redis(&limiter, &redis, key).await {
                            Ok(false) => sessions.store(cache_key, (), Instant::now()),
                            Ok(true) => sessions.forget(&cache_key),
                            Err(_) => {
                                sessions.failed(&cache_key, Instant::now(), REFRESH_RETRY_PAUSE)
                            }
                        }
                    });
                }
                return Ok(false);
            }
            Lookup::Miss => {}
        }
        let revoked = match revoked_in_redis(&self.limiter, &self.redis, redis_key()).await {
            Ok(r) => r,
            Err(e) if self.fail_closed => {
                tracing::error!(error = %e, "revocation check impossible: Redis unreachable (fail-closed)");
                return Err(unavailable("redis"));
            }
            Err(e) => {
                // Fail-open: serve on the token's own validity (minutes) until Redis is back.
                metrics::counter!("keel_gateway_revocation_unchecked_total").increment(1);
                if let Ok(mut last) = self.last_revocation_warning.lock()
                    && last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                {
                    *last = Some(Instant::now());
                    tracing::warn!(error = %e, "revocation check skipped: Redis unreachable (fail-open)");
                }
                return Ok(false);
            }
        };
        if !revoked {
            self.sessions.store(cache_key, (), Instant::now());
        }
        Ok(revoked)
    }

    /// Verifies the bearer token into the caller it proves.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<keel_token::Verified, tonic::Status> {
        let raw = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            unauthenticated("the `authorization` metadata is required: `Bearer <access token>`")
        })?;
        if raw.len() > keel_token::MAX_TOKEN_BYTES + 16 {
            return Err(unauthenticated("the access token is not valid"));
        }
        let value = raw
            .to_str()
            .map_err(|_| unauthenticated("the access token is not valid"))?;
        let (scheme, token) = value.split_once(' ').ok_or_else(|| {
            unauthenticated("the `authorization` metadata must be `Bearer <access token>`")
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(unauthenticated(
                "the `authorization` metadata must be `Bearer <access token>`",
            ));
        }
        let kid = keel_token::peek_kid(token).map_err(|e| reject(&e))?;
        self.ensure_key(&kid).await?;
        let verified = {
            let cache = self.keys.lock().map_err(|_| unavailable("key cache"))?;
            let verifier = Verifier {
                issuer_base: &self.issuer_base,
                clock: &self.clock,
            };
            self.verified
                .verify(&verifier, token, &*cache)
                .map_err(|e| reject(&e))?
        };
        if self
            .session_revoked(&verified.tenant, &verified.claims.sid)
            .await?
        {
            return Err(unauthenticated("the access token is not valid"));
        }
        Ok(verified)
    }
}

fn reject(e: &TokenError) -> tonic::Status {
    // Why is for the logs; the client learns only that the token is not valid.
    tracing::info!(reason = %e, "access token refused");
    if *e == TokenError::KeysUnavailable {
        return unavailable("auth");
    }
    unauthenticated("the access token is not valid")
}

/// RFC 9470 §3: the challenge for a call that needs a stronger or more recent authentication.
fn step_up_challenge(max_age: i64) -> tonic::Status {
    let mut st = status(
        Reason::Unauthenticated,
        "this call needs a recent multi-factor authentication (step-up)",
        vec![("scope", "acr=mfa".into())],
    );
    let challenge = format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"A recent multi-factor authentication is required\", acr_values=\"mfa\", max_age={max_age}"
    );
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(challenge) {
        st.metadata_mut().insert("www-authenticate", v);
    }
    st
}

/// Tiers as metric labels: the known ones, everything else as "other" (bounded cardinality).
fn tier_label(tier: &str) -> &'static str {
    match tier {
        "free" => "free",
        "pro" => "pro",
        "enterprise" => "enterprise",
        _ => "other",
    }
}

const RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
const RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");
const RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset");

impl Gate for AuthGate {
    fn admit<'a>(
        &'a self,
        path: &'a str,
        headers: &'a http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
    ) -> GateFuture<'a> {
        Box::pin(async move {
            if routes::UNGATED_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return Ok(Admission::default());
            }
            let route = routes::lookup(path).ok_or_else(|| {
                status(
                    Reason::NotImplemented,
                    format!("{path} is not a keel.v1 method"),
                    Vec::new(),
                )
            })?;
            let (scope, step_up) = match route.access {
                // Login flows carry no caller: limited per source address.
                Access::Anonymous => {
                    let client = self.trusted_proxies.client(peer.map(|p| p.ip()), headers);
                    let keys = self.limiter.source_keys(client);
                    return Ok(Admission {
                        caller: None,
                        response_headers: self
                            .limit(&keys)
                            .instrument(tracing::info_span!("gate.limit", scope = "source"))
                            .await?,
                    });
                }
                Access::Token(s) => (s, false),
                Access::StepUp(s) => (s, true),
            };
            let auth_span =
                tracing::info_span!("gate.authenticate", tenant.id = tracing::field::Empty);
            let verified = self
                .authenticate(headers)
                .instrument(auth_span.clone())
                .await?;
            // The tenant is known once the token verified; the span carries it like every other.
            auth_span.record("tenant.id", verified.tenant.as_str());
            let tenant = verified.tenant.clone();
            let step_up_rules = match self
                .resolve(&tenant)
                .instrument(tracing::info_span!("gate.tenant", tenant.id = %tenant))
                .await?
            {
                Resolved::Active(rules) => rules,
                Resolved::Unknown => {
                    return Err(status(
                        Reason::TenantUnknown,
                        "the credentials name a tenant that does not exist",
                        vec![("tenant_id", tenant.to_string())],
                    ));
                }
                Resolved::Suspended => {
                    return Err(status(
                        Reason::PermissionDenied,
                        "the tenant is suspended",
                        vec![("tenant_id", tenant.to_string())],
                    ));
                }
            };
            if let Some(claimed) = headers.get(GRPC_TENANT_HEADER)
                && claimed.as_bytes() != tenant.as_str().as_bytes()
            {
                return Err(status(
                    Reason::TenantMismatch,
                    format!("`{GRPC_TENANT_HEADER}` disagrees with the tenant of the credentials"),
                    vec![("field", GRPC_TENANT_HEADER.into())],
                ));
            }
            let claims = &verified.claims;
            // Limits before the remaining checks: every authenticated call counts, refused or
            // not, per tenant and per user, at the contract tier the token states.
            let keys = self.limiter.caller_keys(&tenant, &claims.sub, &claims.tier);
            let response_headers = self
                .limit(&keys)
                .instrument(
                    tracing::info_span!("gate.limit", scope = "caller", tenant.id = %tenant),
                )
                .await?;
            if !claims.scopes().any(|s| s == scope) {
                return Err(status(
                    Reason::PermissionDenied,
                    format!("the token lacks the `{scope}` scope"),
                    vec![("scope", scope.into())],
                ));
            }
            if let Some(max_age) = step_up_age(step_up, scope, &step_up_rules)
                && (claims.acr != "mfa" || self.clock.now() - claims.auth_time > max_age)
            {
                return Err(step_up_challenge(max_age));
            }
            // RED by tier: who is calling what, at which contract (routes and tiers are few).
            metrics::counter!("keel_gateway_admitted_total", "method" => route.path, "tier" => tier_label(&claims.tier)).increment(1);
            Ok(Admission {
                caller: Some(Caller {
                    tenant,
                    subject: claims.sub.clone(),
                    scopes: claims.scopes().map(str::to_owned).collect(),
                    tier: claims.tier.clone(),
                }),
                response_headers,
            })
        })
    }
}

#[cfg(test)]
mod step_up_tests {
    use super::*;

    #[test]
    fn tenants_tighten_step_up_and_may_add_it_but_never_loosen_it() {
        let rules: HashMap<String, i64> = HashMap::from([
            ("models:export".into(), 60),
            ("documents:write".into(), 900),
        ]);
        assert_eq!(step_up_age(true, "models:export", &rules), Some(60));
        let loose: HashMap<String, i64> = HashMap::from([("models:export".into(), 3600)]);
        assert_eq!(
            step_up_age(true, "models:export", &loose),
            Some(STEP_UP_MAX_AGE_SECS)
        );
        assert_eq!(
            step_up_age(true, "models:export", &HashMap::new()),
            Some(STEP_UP_MAX_AGE_SECS)
        );
        assert_eq!(step_up_age(false, "documents:write", &rules), Some(900));
        assert_eq!(step_up_age(false, "documents:read", &rules), None);
    }
}
