//! Sleeping until a wall-clock time, for renewals timed against certificate validity.

use std::time::Duration;

/// The longest single sleep before the wall clock is read again. Timers run on the monotonic
/// clock, which stands still while the host is suspended (a paused VM, a closed laptop): a
/// renewal slept for in one piece would come late by the whole suspension, perhaps after
/// `notAfter`.
pub const WALL_CLOCK_RECHECK: Duration = Duration::from_secs(15);

/// Sleeps until the wall clock reads `t` (Unix seconds), reading it again at least every
/// [`WALL_CLOCK_RECHECK`]; returns at once when `t` has passed. For work due at a point of
/// certificate time (a renewal before `notAfter`), which a suspension must not push back.
pub async fn sleep_until_unix(t: u64) {
    while let Some(d) = next_sleep(t, crate::session::now_unix()) {
        tokio::time::sleep(d).await;
    }
}

/// The next piece of a sleep until `t` at wall-clock time `now`, or `None` when `t` is reached.
fn next_sleep(t: u64, now: u64) -> Option<Duration> {
    let left = t.saturating_sub(now);
    (left > 0).then(|| Duration::from_secs(left).min(WALL_CLOCK_RECHECK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_until_a_wall_clock_time_reads_the_clock_again_in_pieces() {
        // A renewal an hour away is slept for in pieces, so a suspended host (monotonic time
        // standing still) renews at most a piece late after it resumes.
        assert_eq!(next_sleep(3600, 0), Some(WALL_CLOCK_RECHECK));
        assert_eq!(next_sleep(3600, 3590), Some(Duration::from_secs(10)));
        // The wall clock passed the point during a suspension: due now.
        assert_eq!(next_sleep(3600, 3600), None);
        assert_eq!(next_sleep(3600, 7200), None);
    }
}
