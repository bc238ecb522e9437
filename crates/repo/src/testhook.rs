//! A hook for tests that stop a process at a named step (with SIGKILL, or to change
//! its input before it goes on). Inert unless [`PAUSE_VAR`] names the step.

/// The step at which [`pause`] stops: the process prints `backlock: paused at STEP`
/// on stderr and waits for a line (or end of input) on stdin.
pub const PAUSE_VAR: &str = "BACKLOCK_TEST_PAUSE_AT";

/// Stops at `step` if [`PAUSE_VAR`] names it.
pub fn pause(step: &str) {
    if std::env::var(PAUSE_VAR).is_ok_and(|v| v == step) {
        eprintln!("backlock: paused at {step}");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
}
