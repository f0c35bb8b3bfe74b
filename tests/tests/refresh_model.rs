//! A property test of the refresh-token family state machine against the real service: random
//! interleavings of refreshes, replays of used tokens, concurrent redemptions and logouts, each
//! checked against a model and against the database after every step. Invariant (auth.md):
//! after any reuse, nothing in the family is active.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_proto::public as pb;
use keel_tests::{TestStack, connect};
use proptest::prelude::*;
use sqlx::Row;

#[derive(Debug, Clone)]
enum Op {
    /// Redeem the newest token.
    Refresh,
    /// Present an already used token (index into the used ones).
    Replay(usize),
    /// Redeem the newest token from `n` clients at once.
    Race(usize),
    /// Log out with any token of the family.
    Logout(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Refresh),
        2 => (0usize..8).prop_map(Op::Replay),
        1 => (2usize..5).prop_map(Op::Race),
        1 => (0usize..8).prop_map(Op::Logout),
    ]
}

async fn refresh(url: &str, rt: &str) -> Option<String> {
    let mut c = pb::authentication_service_client::AuthenticationServiceClient::new(
        connect(url).await.unwrap(),
    );
    c.refresh(pb::RefreshRequest {
        refresh_token: rt.into(),
        client_id: String::new(),
    })
    .await
    .ok()
    .map(|r| r.into_inner().refresh_token)
}

/// (family state, active tokens, session revoked) of the family `rt` belongs to.
async fn family_state(pool: &sqlx::PgPool, first_rt: &str) -> (String, i64, bool) {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(first_rt.as_bytes()).to_vec();
    let row = sqlx::query(
        "SELECT f.state, s.revoked_at IS NOT NULL AS session_revoked,
                (SELECT count(*) FROM auth.refresh_tokens t WHERE t.family_id = f.family_id AND t.state = 'active') AS active
         FROM auth.refresh_tokens r
         JOIN auth.refresh_families f ON f.family_id = r.family_id
         JOIN auth.sessions s ON s.sid = f.sid AND s.tenant_id = f.tenant_id
         WHERE r.token_hash = $1",
    )
    .bind(hash)
    .fetch_one(pool)
    .await
    .unwrap();
    (
        row.get("state"),
        row.get("active"),
        row.get("session_revoked"),
    )
}

#[test]
fn after_any_reuse_nothing_in_the_family_is_active() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let (stack, pool) = rt.block_on(async {
        let stack = TestStack::start().await.unwrap();
        stack.create_tenant("acme").await.unwrap();
        stack
            .create_user("acme", "alice", &["member"])
            .await
            .unwrap();
        let pool = stack.shard(stack.shard_of("acme")).await.unwrap();
        (stack, pool)
    });
    let url = stack.gateway_url();
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..10))| {
        rt.block_on(async {
            let (_, first) = stack.login("acme", "alice").await.unwrap();
            let mut tokens = vec![first.clone()]; // every token of the family, oldest first
            let mut alive = true;
            for op in &ops {
                let newest = tokens.last().unwrap().clone();
                match op {
                    Op::Refresh => {
                        let got = refresh(&url, &newest).await;
                        assert_eq!(got.is_some(), alive, "{op:?} in {ops:?}");
                        if let Some(t) = got { tokens.push(t) }
                    }
                    Op::Replay(i) => {
                        if tokens.len() < 2 { continue; }
                        let used = &tokens[i % (tokens.len() - 1)];
                        assert!(refresh(&url, used).await.is_none(), "a used token worked: {ops:?}");
                        alive = false;
                    }
                    Op::Race(n) => {
                        let attempts = (0..*n).map(|_| refresh(&url, &newest));
                        let wins: Vec<String> = futures::future::join_all(attempts).await.into_iter().flatten().collect();
                        assert!(wins.len() <= 1, "{} concurrent redemptions succeeded: {ops:?}", wins.len());
                        if !alive { assert!(wins.is_empty()); }
                        // The losers presented a used token: that is a reuse.
                        if alive { alive = false; }
                        tokens.extend(wins);
                    }
                    Op::Logout(i) => {
                        let t = &tokens[i % tokens.len()];
                        let mut c = pb::authentication_service_client::AuthenticationServiceClient::new(connect(&url).await.unwrap());
                        c.logout(pb::LogoutRequest { refresh_token: t.clone() }).await.unwrap();
                        alive = false;
                    }
                }
                let (state, active, session_revoked) = family_state(&pool, &first).await;
                if alive {
                    assert_eq!((state.as_str(), active, session_revoked), ("active", 1, false), "after {op:?} in {ops:?}");
                } else {
                    assert_eq!((state.as_str(), active, session_revoked), ("revoked", 0, true), "after {op:?} in {ops:?}");
                }
            }
        });
    });
    rt.block_on(stack.shutdown());
}
