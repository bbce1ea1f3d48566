//! How the leader waits out a helper that is down, slow or overloaded: the pause before a job's
//! next attempt (the helper's `Retry-After`, else exponential backoff with jitter, both capped),
//! and the lease a driver keeps renewing while it works on a job, so that no other replica takes
//! over a job that is merely waiting on the helper.

use std::future::Future;
use std::time::Duration;

/// The pause before the next attempt, after `attempt` attempts (from 1) failed to get through.
/// The helper's `Retry-After` is honoured as it is; without one the pause doubles from 1 s, and
/// half of it is random, so that jobs (and leaders) that failed together come back spread out.
/// Never more than `cap`, never less than a second.
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
    let cap = cap.max(Duration::from_secs(1));
    if let Some(hint) = retry_after {
        return hint.clamp(Duration::from_secs(1), cap);
    }
    let full = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(30)).min(cap);
    let jittered = full / 2 + full.mul_f64(rand::random::<f64>() / 2.0);
    jittered.max(Duration::from_secs(1))
}

/// Whole seconds, rounded up, for the schedule in the database.
pub fn whole_seconds(d: Duration) -> i64 {
    d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0)
}

/// Runs `work` while renewing its job's lease every third of `lease`. `None` when a renewal finds
/// the lease gone (another driver took the job over, or it ended): `work` is then dropped, so
/// that two drivers never go on with one job. A renewal that fails (the database is away) is
/// tried again at the next tick; the lease may then lapse, which is safe, as every request the
/// job sends is idempotent.
pub async fn under_lease<T, E, F, R, RF>(work: F, lease: Duration, mut renew: R) -> Option<T>
where
    F: Future<Output = T>,
    R: FnMut() -> RF,
    RF: Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    let period = (lease / 3).max(Duration::from_millis(200));
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            _ = ticks.tick() => match renew().await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => tracing::warn!(error = %e, "renewing a lease failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_hint_wins_within_the_cap() {
        let cap = Duration::from_secs(600);
        assert_eq!(retry_delay(9, Some(Duration::from_secs(7)), cap), Duration::from_secs(7));
        assert_eq!(retry_delay(1, Some(Duration::from_secs(7200)), cap), cap);
        assert_eq!(retry_delay(1, Some(Duration::ZERO), cap), Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let cap = Duration::from_secs(600);
        for attempt in 1..=40u32 {
            let full = Duration::from_secs(1u64 << (attempt - 1).min(30)).min(cap);
            for _ in 0..50 {
                let d = retry_delay(attempt, None, cap);
                assert!(d >= (full / 2).max(Duration::from_secs(1)) && d <= full.max(Duration::from_secs(1)), "{d:?}");
            }
        }
        // The jitter spreads the pause out: many draws are not all equal.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| retry_delay(8, None, cap)).collect();
        assert!(draws.len() > 10);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_renewed_while_the_work_runs_and_lost_leases_stop_it() {
        let renewals = std::sync::atomic::AtomicUsize::new(0);
        let out = under_lease(tokio::time::sleep(Duration::from_secs(100)), Duration::from_secs(30), || {
            renewals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, String>(true) }
        })
        .await;
        assert_eq!(out, Some(()));
        // Every 10 s; at 100 s the work ends first.
        assert_eq!(renewals.load(std::sync::atomic::Ordering::SeqCst), 9);
        let out = under_lease(tokio::time::sleep(Duration::from_secs(100)), Duration::from_secs(30), || async {
            Ok::<_, String>(false)
        })
        .await;
        assert_eq!(out, None, "the work stops at the first renewal that finds the lease gone");
    }
}
