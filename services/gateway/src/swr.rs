//! Stale-while-revalidate: a bounded cache that keeps answering from an entry past its
//! freshness, for a while, while one background re-read per key brings it up to date.
//!
//! The gate's lookups in other systems (is this session revoked? is this tenant active?) must
//! take effect within seconds, but a call should not wait on a round trip each time the answer
//! is due for re-checking: the busiest callers are exactly the ones who would pay for it, in
//! the tail of their latency. An entry is **fresh** for a while (answered, nothing else), then
//! **stale** (answered, and the first call to notice starts the one re-read), then gone (the
//! caller looks it up itself and waits). A failed re-read leaves the entry as it was, to be
//! tried again after a pause, so an unreachable dependency costs one attempt per pause per key,
//! not one per call.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an entry may be answered from: fresh for `fresh`, then stale until `stale`
/// (measured from the same instant, so `stale` ≤ `fresh` means no stale window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub fresh: Duration,
    pub stale: Duration,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    Fresh(V),
    /// Past its freshness: answer with it; when `refresh`, this caller starts the re-read and
    /// must end it with [`Swr::store`] or [`Swr::failed`].
    Stale {
        value: V,
        refresh: bool,
    },
    /// Nothing usable: look it up and wait.
    Miss,
}

struct Entry<V> {
    value: V,
    at: Instant,
    refreshing: bool,
    retry_at: Option<Instant>,
}

pub struct Swr<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
    capacity: usize,
    /// Entries older than this are dropped first when the cache is full.
    keep_for: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> Swr<K, V> {
    /// A cache of at most `capacity` entries (made-up keys cannot grow memory without limit),
    /// none useful after `keep_for`.
    pub fn new(capacity: usize, keep_for: Duration) -> Self {
        Swr {
            entries: Mutex::new(HashMap::new()),
            capacity,
            keep_for,
        }
    }

    /// The entry for `k` at `now`, its windows chosen by its value.
    pub fn lookup(&self, k: &K, now: Instant, windows: impl Fn(&V) -> Windows) -> Lookup<V> {
        let Ok(mut entries) = self.entries.lock() else {
            return Lookup::Miss;
        };
        let Some(e) = entries.get_mut(k) else {
            return Lookup::Miss;
        };
        let w = windows(&e.value);
        let age = now.saturating_duration_since(e.at);
        if age < w.fresh {
            return Lookup::Fresh(e.value.clone());
        }
        if age >= w.stale {
            return Lookup::Miss;
        }
        let refresh = !e.refreshing && e.retry_at.is_none_or(|r| now >= r);
        if refresh {
            e.refreshing = true;
        }
        Lookup::Stale {
            value: e.value.clone(),
            refresh,
        }
    }

    /// A value read at `now` (ends any re-read of `k`).
    pub fn store(&self, k: K, value: V, now: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&k) {
            let keep_for = self.keep_for;
            entries.retain(|_, e| now.saturating_duration_since(e.at) < keep_for);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            k,
            Entry {
                value,
                at: now,
                refreshing: false,
                retry_at: None,
            },
        );
    }

    /// The re-read of `k` failed at `now`: the entry stays as it was; the next re-read waits
    /// `pause`.
    pub fn failed(&self, k: &K, now: Instant, pause: Duration) {
        if let Ok(mut entries) = self.entries.lock()
            && let Some(e) = entries.get_mut(k)
        {
            e.refreshing = false;
            e.retry_at = Some(now + pause);
        }
    }

    /// Drops the entry of `k` (ends any re-read of it): the next lookup is a miss.
    pub fn forget(&self, k: &K) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Windows = Windows {
        fresh: Duration::from_millis(500),
        stale: Duration::from_secs(2),
    };

    #[test]
    fn fresh_then_stale_with_one_refresh_then_miss() {
        let c: Swr<&str, u32> = Swr::new(10, W.stale);
        let t0 = Instant::now();
        assert_eq!(c.lookup(&"a", t0, |_| W), Lookup::Miss);
        c.store("a", 1, t0);
        assert_eq!(c.lookup(&"a", t0 + W.fresh / 2, |_| W), Lookup::Fresh(1));
        let t1 = t0 + W.fresh;
        assert_eq!(
            c.lookup(&"a", t1, |_| W),
            Lookup::Stale {
                value: 1,
                refresh: true
            }
        );
        // Only the first caller re-reads.
        assert_eq!(
            c.lookup(&"a", t1, |_| W),
            Lookup::Stale {
                value: 1,
                refresh: false
            }
        );
        c.store("a", 2, t1);
        assert_eq!(c.lookup(&"a", t1, |_| W), Lookup::Fresh(2));
        assert_eq!(c.lookup(&"a", t1 + W.stale, |_| W), Lookup::Miss);
        c.forget(&"a");
        assert_eq!(c.lookup(&"a", t1, |_| W), Lookup::Miss);
    }

    #[test]
    fn a_failed_refresh_is_retried_after_the_pause_not_at_once() {
        let c: Swr<&str, u32> = Swr::new(10, W.stale);
        let t0 = Instant::now();
        c.store("a", 1, t0);
        let t1 = t0 + W.fresh;
        assert!(matches!(
            c.lookup(&"a", t1, |_| W),
            Lookup::Stale { refresh: true, .. }
        ));
        c.failed(&"a", t1, Duration::from_millis(300));
        assert!(matches!(
            c.lookup(&"a", t1 + Duration::from_millis(100), |_| W),
            Lookup::Stale { refresh: false, .. }
        ));
        assert!(matches!(
            c.lookup(&"a", t1 + Duration::from_millis(300), |_| W),
            Lookup::Stale { refresh: true, .. }
        ));
    }

    #[test]
    fn windows_follow_the_value() {
        let c: Swr<&str, bool> = Swr::new(10, W.stale);
        let t0 = Instant::now();
        c.store("known", true, t0);
        c.store("unknown", false, t0);
        let w = |v: &bool| {
            if *v {
                W
            } else {
                Windows {
                    fresh: W.fresh,
                    stale: W.fresh,
                }
            }
        };
        assert!(matches!(
            c.lookup(&"known", t0 + W.fresh, w),
            Lookup::Stale { .. }
        ));
        assert_eq!(c.lookup(&"unknown", t0 + W.fresh, w), Lookup::Miss);
    }

    proptest! {
        /// Whatever the order of lookups, stores and failures: the cache stays within its
        /// capacity, never answers from an entry past its stale window, and at most one
        /// re-read per key is in flight.
        #[test]
        fn bounded_never_too_stale_one_refresh_at_a_time(
            ops in proptest::collection::vec((0u8..4, 0u8..20, 0u64..3000), 1..300)
        ) {
            let c: Swr<u8, u64> = Swr::new(8, W.stale);
            let t0 = Instant::now();
            let mut now = t0;
            let mut stored: HashMap<u8, Instant> = HashMap::new();
            let mut in_flight: HashMap<u8, bool> = HashMap::new();
            for (op, k, dt) in ops {
                now += Duration::from_millis(dt % 700);
                match op {
                    0 => {
                        match c.lookup(&k, now, |_| W) {
                            Lookup::Fresh(_) => {
                                let at = stored[&k];
                                prop_assert!(now - at < W.fresh);
                            }
                            Lookup::Stale { refresh, .. } => {
                                let at = stored[&k];
                                prop_assert!(now - at >= W.fresh && now - at < W.stale);
                                if refresh {
                                    prop_assert!(!in_flight.get(&k).copied().unwrap_or(false));
                                    in_flight.insert(k, true);
                                }
                            }
                            Lookup::Miss => {}
                        }
                    }
                    1 => {
                        c.store(k, dt, now);
                        stored.insert(k, now);
                        in_flight.insert(k, false);
                    }
                    2 => {
                        c.failed(&k, now, Duration::from_millis(100));
                        in_flight.insert(k, false);
                    }
                    _ => {
                        c.forget(&k);
                        in_flight.insert(k, false);
                    }
                }
                prop_assert!(c.len() <= 8);
            }
        }
    }
}
