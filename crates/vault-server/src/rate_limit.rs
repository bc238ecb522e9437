//! Per-account token buckets for the request rate. Idle accounts are forgotten in two
//! generations, so that no timer walks every account that ever asked: a bucket lives
//! in `current` while used, moves to `previous` at a turn, and goes with `previous` at
//! the next turn if nothing used it meanwhile. A turn comes no sooner than a bucket
//! takes to refill, so forgetting one grants nothing it would not have.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest time between turns.
const MIN_TURN: Duration = Duration::from_secs(600);
/// The longest: a rate so slow that a bucket refills in more than a day forgets an
/// account idle for a day (a grant of at most one burst a day).
const MAX_TURN: Duration = Duration::from_secs(86_400);

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Generations {
    current: HashMap<String, Bucket>,
    previous: HashMap<String, Bucket>,
    turned: Instant,
}

/// The buckets of one replica.
pub(crate) struct RateLimiter {
    burst: f64,
    rate: f64,
    turn: Duration,
    inner: Mutex<Generations>,
}

impl RateLimiter {
    /// `burst` requests at once, `rate` per second sustained (both above zero).
    pub(crate) fn new(burst: u32, rate: f64, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let refill = Duration::try_from_secs_f64(burst / rate).unwrap_or(MAX_TURN);
        RateLimiter {
            burst,
            rate,
            turn: refill.clamp(MIN_TURN, MAX_TURN),
            inner: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                turned: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one request of `account`'s bucket, or says how many milliseconds until
    /// one is there.
    pub(crate) fn take(&self, account: &str, now: Instant) -> Result<(), u64> {
        let mut g = self.lock();
        let g = &mut *g;
        let bucket = match g.current.get_mut(account) {
            Some(b) => b,
            None => {
                let b = g.previous.remove(account).unwrap_or(Bucket {
                    tokens: self.burst,
                    at: now,
                });
                g.current.entry(account.to_owned()).or_insert(b)
            }
        };
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        // A caller that read the clock before another never moves it back.
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - bucket.tokens) / self.rate * 1000.0).ceil().max(1.0) as u64)
    }

    /// Turns the generations when one is due (the sweeper calls it every second):
    /// what nobody used since the last turn is dropped, outside the lock.
    pub(crate) fn turn(&self, now: Instant) {
        let dropped = {
            let mut g = self.lock();
            if now.saturating_duration_since(g.turned) < self.turn {
                return;
            }
            g.turned = now;
            let current = std::mem::take(&mut g.current);
            std::mem::replace(&mut g.previous, current)
        };
        drop(dropped);
    }

    /// Accounts with a bucket (both generations).
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(l: &RateLimiter, account: &str, now: Instant) -> u32 {
        (0..100)
            .take_while(|_| l.take(account, now).is_ok())
            .count() as u32
    }

    #[test]
    fn a_turn_resets_no_bucket() {
        let t0 = Instant::now();
        let l = RateLimiter::new(5, 1.0, t0);
        // Emptied just before the turn: still empty just after it (moved, not reset).
        let before = t0 + MIN_TURN - Duration::from_millis(100);
        assert_eq!(drain(&l, "ann", before), 5);
        l.turn(t0 + MIN_TURN);
        assert_eq!(l.len(), 1);
        assert_eq!(l.take("ann", t0 + MIN_TURN), Err(900));
        // And it refills at its rate from there, no faster.
        assert_eq!(drain(&l, "ann", t0 + MIN_TURN + Duration::from_secs(2)), 2);
    }

    #[test]
    fn idle_accounts_go_after_two_turns_and_used_ones_stay() {
        let t0 = Instant::now();
        let l = RateLimiter::new(5, 1.0, t0);
        l.take("idle", t0).unwrap();
        l.take("busy", t0).unwrap();
        let t1 = t0 + MIN_TURN;
        l.turn(t1);
        l.take("busy", t1).unwrap();
        l.turn(t1 + MIN_TURN);
        assert_eq!(l.len(), 1, "only the account used since the last turn");
        l.turn(t1 + MIN_TURN * 2);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_slow_refill_waits_longer_between_turns() {
        let t0 = Instant::now();
        // 10 requests, one per 200 s: a bucket takes 2,000 s to refill.
        let l = RateLimiter::new(10, 0.005, t0);
        assert_eq!(drain(&l, "ann", t0), 10);
        l.turn(t0 + MIN_TURN);
        l.turn(t0 + MIN_TURN * 2);
        // Forgotten after two 600-s turns, the bucket would be full at 1,200 s; the
        // turns wait 2,000 s, so it holds what 1,200 s refilled.
        let t = t0 + MIN_TURN * 2;
        assert_eq!(drain(&l, "ann", t), 6, "1,200 s at 1 per 200 s");
        assert_eq!(l.take("ann", t), Err(200_000));
    }
}
