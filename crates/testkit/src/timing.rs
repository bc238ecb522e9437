//! Timing that follows this machine's speed instead of assuming it.
//!
//! A test that waits for something polls for it with [`PATIENCE`] as the deadline; a
//! test that kills an operation "in the middle" takes its instants as fractions of a run
//! of the same operation it measured itself ([`RunClock`]). Neither can fail because the
//! machine is faster or slower than the one the test was written on: a deadline is only
//! reached when the awaited thing never happens, and a kill that comes after the end of
//! a run teaches the clock how long a run takes now.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for a condition before it calls it broken. Generous: on a
/// quiet machine every condition comes within a second or two, and the deadline only
/// matters when the condition never comes.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `done` until it holds; panics naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_until`] for async tests: sleeps on the runtime, not on its worker thread.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How one kill went.
pub struct Kill {
    /// The operation was still running at the kill instant: it was stopped mid-way.
    pub landed: bool,
    /// What it printed (all of it, when it finished first).
    pub output: Output,
}

/// Kill instants as fractions of the measured duration of an operation.
///
/// The clock starts from one measured run. Each time a run ends before its kill
/// instant, its duration is measured too and becomes the clock's new estimate, so the
/// next instant falls inside a run again even if runs got shorter (a resumed
/// operation, a warm cache, a faster machine).
pub struct RunClock {
    typical: Duration,
}

/// A kill instant is never earlier than this after the start, so that the process
/// has been created and runs its own code (a kill at 0 tests the kernel, not us).
const EARLIEST: Duration = Duration::from_millis(2);

/// How many tries [`RunClock::kill_mid_run`] makes before it gives up landing a kill.
const TRIES: usize = 6;

impl RunClock {
    /// Runs `cmd` to its end and starts the clock from its duration; returns its output
    /// too (the run is a real one, with its effects).
    pub fn measure(cmd: &mut Command) -> (RunClock, Output) {
        let start = Instant::now();
        let output = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("start the measured run");
        (
            RunClock {
                typical: start.elapsed(),
            },
            output,
        )
    }

    /// A clock started from a duration measured by the caller.
    pub fn from_duration(typical: Duration) -> RunClock {
        RunClock { typical }
    }

    /// The current estimate of a run's duration.
    pub fn typical(&self) -> Duration {
        self.typical
    }

    /// Starts `cmd` and SIGKILLs it at `fraction` (0..1) of a typical run. If it ends
    /// first, the clock learns the duration of that run.
    pub fn kill_at(&mut self, cmd: &mut Command, fraction: f64) -> Kill {
        assert!((0.0..1.0).contains(&fraction), "fraction {fraction}");
        let instant = self.typical.mul_f64(fraction).max(EARLIEST);
        let start = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the run to kill");
        // Polled rather than slept, so that a run that ends first is timed.
        let landed = loop {
            if child.try_wait().expect("poll the run").is_some() {
                self.typical = start.elapsed();
                break false;
            }
            if start.elapsed() >= instant {
                let _ = child.kill();
                break true;
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let output = child.wait_with_output().expect("collect the run");
        Kill { landed, output }
    }

    /// [`Self::kill_at`] until a kill lands, a few tries at most; `after_each` sees every
    /// try (a run that finished has effects the test must take in, such as a new key).
    /// Whether one landed: only a run whose length keeps collapsing below the clock's
    /// resolution escapes every try.
    pub fn kill_mid_run(
        &mut self,
        mut cmd: impl FnMut() -> Command,
        fraction: f64,
        mut after_each: impl FnMut(&Kill),
    ) -> bool {
        for _ in 0..TRIES {
            let kill = self.kill_at(&mut cmd(), fraction);
            after_each(&kill);
            if kill.landed {
                return true;
            }
        }
        false
    }
}

/// Fractions of a run spread from its first moments to its end, denser early (where
/// a run does its setup and first commits) than late.
pub fn spread(n: usize) -> Vec<f64> {
    (1..=n)
        .map(|i| {
            let x = i as f64 / (n + 1) as f64;
            x * x * 0.5 + x * 0.45
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_spread_inside_a_run_and_increasing() {
        let f = spread(10);
        assert_eq!(f.len(), 10);
        assert!(f[0] > 0.0 && f[9] < 0.95, "{f:?}");
        assert!(f.windows(2).all(|w| w[0] < w[1]), "{f:?}");
    }

    #[test]
    fn a_run_that_ends_before_its_kill_teaches_the_clock() {
        let mut clock = RunClock::from_duration(Duration::from_secs(60));
        let kill = clock.kill_at(&mut Command::new("true"), 0.5);
        assert!(!kill.landed);
        assert!(clock.typical() < Duration::from_secs(30));
    }

    #[test]
    fn a_kill_inside_a_run_lands() {
        let mut clock = RunClock::from_duration(Duration::from_secs(20));
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let start = Instant::now();
        let kill = clock.kill_at(&mut sleep, 0.01);
        assert!(kill.landed);
        assert!(start.elapsed() < Duration::from_secs(20));
    }
}
