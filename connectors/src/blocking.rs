//! Blocking work called from async code without starving the runtime.

/// Runs `wait`, which blocks its thread (a lock held through a Kafka commit, a revocation's
/// drain) and borrows from its caller, without starving the runtime it is called from: on a
/// multi-threaded runtime `block_in_place` first hands this worker's tasks (the health
/// endpoints among them) to another thread. A task a worker woke last sits in that worker's
/// LIFO slot, which no other worker may steal, so without the hand-over it would wait until
/// `wait` returns. Elsewhere (a current-thread runtime, no runtime) `wait` simply runs.
pub fn off_the_runtime<T>(wait: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
