//! Keeping a registration's lease: one policy for nodes and gates, without I/O, and the one
//! loop that drives it.
//!
//! [`LeasePolicy`] decides; [`keep_lease`] asks the store and reports back. The rules, the same
//! for every process that registers:
//! - renew every quarter of the TTL ([`LeasePolicy::period`]);
//! - the lease surely lives until the TTL after a renewal was *asked* for (the store starts the
//!   new term when it processes the renewal, later); the holder serves until its
//!   [`serving_window`] after the last successful ask, less a margin for clock drift;
//! - a failed renewal fences the holder once the window has passed (or at once when the store
//!   says the lease is gone): it stops serving before the lease can expire, so another process
//!   can take over what it held without two serving at once;
//! - a lease the store says is gone is replaced by registering again (rejoin); the holder
//!   serves again only once a renewal or a new registration succeeded.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ClusterError;

/// A boxed future borrowing its holder.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long after a renewal was asked for the holder may keep serving on it: the TTL less a
/// tenth of it for clocks running at different rates (at least 100 ms, never more than half the
/// TTL). With the default 10 s TTL, 9 s.
pub fn serving_window(ttl: Duration) -> Duration {
    let margin = (ttl / 10).max(Duration::from_millis(100)).min(ttl / 2);
    ttl - margin
}

/// What the holder of a lease does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// Stop serving: the lease may be gone before the holder hears again.
    Fence,
    /// Serve again: the lease (or a new one) is held.
    Unfence,
    /// Register again on a new lease: the store says the old one is gone.
    Rejoin,
}

/// The lease policy of one registration, on a clock the caller reads (time since any fixed
/// origin). Pure: the caller does the I/O and reports what happened.
#[derive(Debug, Clone)]
pub struct LeasePolicy {
    ttl: Duration,
    /// When the last successful renewal (or the grant) was asked for.
    renewed_at: Duration,
    fenced: bool,
}

impl LeasePolicy {
    /// The policy for a lease of `ttl` granted on an ask made at `granted_at`.
    pub fn new(ttl: Duration, granted_at: Duration) -> Self {
        Self {
            ttl,
            renewed_at: granted_at,
            fenced: false,
        }
    }

    /// How often to renew: a quarter of the TTL, so two or three renewals may fail (a store
    /// outage, a slow answer) before the holder has to stop serving.
    pub fn period(&self) -> Duration {
        self.ttl / 4
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Until when (on the caller's clock) the holder may serve on what it knows now.
    pub fn serve_until(&self) -> Duration {
        self.renewed_at + serving_window(self.ttl)
    }

    /// Whether the holder may serve at `now`: not fenced, and inside the serving window of the
    /// last successful renewal.
    pub fn fresh(&self, now: Duration) -> bool {
        !self.fenced && now < self.serve_until()
    }

    /// Whether the holder is fenced (stopped serving until the lease is renewed or replaced).
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// A renewal (or a new registration) asked for at `asked` succeeded.
    pub fn renewed(&mut self, asked: Duration) -> Option<LeaseAction> {
        self.renewed_at = self.renewed_at.max(asked);
        if self.fenced {
            self.fenced = false;
            return Some(LeaseAction::Unfence);
        }
        None
    }

    /// A renewal failed at `now`; `gone`: the store says the lease no longer exists. The
    /// actions, in order.
    pub fn renew_failed(&mut self, now: Duration, gone: bool) -> Vec<LeaseAction> {
        let mut actions = Vec::new();
        if !self.fenced && (gone || now >= self.serve_until()) {
            self.fenced = true;
            actions.push(LeaseAction::Fence);
        }
        if gone {
            actions.push(LeaseAction::Rejoin);
        }
        actions
    }
}

/// What [`keep_lease`] drives: a process registered on a lease.
pub trait LeaseHolder: Send + Sync {
    /// Renews the current lease.
    fn renew(&self) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Registers again on a new lease; `true` once registered (and the new lease is current).
    fn rejoin(&self) -> BoxFuture<'_, bool>;
    /// A renewal or registration asked for at `asked` succeeded: the holder may serve until
    /// the [`serving_window`] after it.
    fn renewed(&self, asked: tokio::time::Instant);
    /// A renewal failed (counted by holders that keep metrics).
    fn renew_failed(&self) {}
    /// Stop serving until [`LeaseHolder::unfence`].
    fn fence(&self);
    /// Serve again.
    fn unfence(&self);
}

/// Keeps `holder`'s lease by `policy` until `stop`: renews every period, fences, rejoins and
/// unfences as the policy says. The clock is tokio's (paused-time tests move it); `origin` is
/// the policy's zero. `stop` ends the waits between renewals, never a renewal or a rejoin in
/// progress: a holder that is stopping waits for this loop, so what a rejoin claims is held
/// (and can be saved to) before it lets go.
pub async fn keep_lease<H: LeaseHolder + ?Sized>(
    holder: &H,
    mut policy: LeasePolicy,
    origin: tokio::time::Instant,
    stop: CancellationToken,
) {
    let since = |at: tokio::time::Instant| at.duration_since(origin);
    let succeeded = |policy: &mut LeasePolicy, asked: tokio::time::Instant| {
        holder.renewed(asked);
        if policy.renewed(since(asked)) == Some(LeaseAction::Unfence) {
            tracing::info!("lease held again; serving");
            holder.unfence();
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(policy.period()) => {}
        }
        let asked = tokio::time::Instant::now();
        let err = match holder.renew().await {
            Ok(()) => {
                succeeded(&mut policy, asked);
                continue;
            }
            Err(err) => err,
        };
        holder.renew_failed();
        tracing::error!(error = %err, "cannot renew the lease");
        let gone = matches!(err, ClusterError::LeaseExpired(_));
        for action in policy.renew_failed(since(tokio::time::Instant::now()), gone) {
            match action {
                LeaseAction::Fence => {
                    tracing::error!("fenced: not serving until the lease is held again");
                    holder.fence();
                }
                LeaseAction::Rejoin => {
                    let asked = tokio::time::Instant::now();
                    if holder.rejoin().await {
                        succeeded(&mut policy, asked);
                    }
                }
                LeaseAction::Unfence => holder.unfence(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn renews_every_quarter_and_serves_for_the_window() {
        let policy = LeasePolicy::new(TTL, at(0));
        assert_eq!(policy.period(), at(2_500));
        assert_eq!(serving_window(TTL), at(9_000));
        assert!(policy.fresh(at(8_999)));
        assert!(!policy.fresh(at(9_000)));
        // Tiny TTLs keep a 100 ms margin; the margin never exceeds half the TTL.
        assert_eq!(serving_window(at(500)), at(400));
        assert_eq!(serving_window(at(150)), at(75));
    }

    #[test]
    fn failures_inside_the_window_do_not_fence() {
        let mut policy = LeasePolicy::new(TTL, at(0));
        assert!(policy.renew_failed(at(2_500), false).is_empty());
        assert!(policy.renew_failed(at(5_000), false).is_empty());
        assert!(policy.renew_failed(at(7_500), false).is_empty());
        assert_eq!(
            policy.renew_failed(at(10_000), false),
            vec![LeaseAction::Fence]
        );
        assert!(!policy.fresh(at(10_000)));
        // Fenced once; later failures decide nothing new.
        assert!(policy.renew_failed(at(12_500), false).is_empty());
        assert_eq!(policy.renewed(at(12_600)), Some(LeaseAction::Unfence));
        assert!(policy.fresh(at(12_700)));
        assert_eq!(policy.serve_until(), at(21_600));
    }

    #[test]
    fn a_lease_the_store_lost_fences_at_once_and_rejoins() {
        let mut policy = LeasePolicy::new(TTL, at(0));
        assert_eq!(
            policy.renew_failed(at(2_500), true),
            vec![LeaseAction::Fence, LeaseAction::Rejoin]
        );
        assert!(!policy.fresh(at(2_500)));
        // A rejoin that failed: still fenced, asks again next time.
        assert_eq!(
            policy.renew_failed(at(5_000), true),
            vec![LeaseAction::Rejoin]
        );
        assert_eq!(policy.renewed(at(5_100)), Some(LeaseAction::Unfence));
        assert!(policy.fresh(at(5_200)));
    }

    #[test]
    fn an_older_ask_never_shortens_the_window() {
        let mut policy = LeasePolicy::new(TTL, at(5_000));
        assert_eq!(policy.renewed(at(4_000)), None);
        assert_eq!(policy.serve_until(), at(14_000));
    }

    proptest::proptest! {
        /// Whatever the renewals do, the holder never serves past the TTL after the last
        /// successful ask (the lease may be gone from then on), and is fenced whenever a
        /// failure is seen past its window.
        #[test]
        fn never_serves_on_a_lease_that_may_be_gone(
            steps in proptest::collection::vec((1u64..6_000, 0u8..3), 1..60)
        ) {
            let mut policy = LeasePolicy::new(TTL, at(0));
            let mut now = at(0);
            let mut last_ok = at(0);
            for (gap, outcome) in steps {
                now += at(gap);
                match outcome {
                    0 => { policy.renewed(now); last_ok = now; }
                    1 => { policy.renew_failed(now, false); }
                    _ => { policy.renew_failed(now, true); }
                }
                proptest::prop_assert!(!policy.fresh(now) || now < last_ok + TTL);
                if outcome == 2 {
                    proptest::prop_assert!(policy.is_fenced());
                }
            }
        }
    }
}
