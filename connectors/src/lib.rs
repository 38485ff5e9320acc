//! Implementations of the pipeline's `Source`, `Sink` and `Store` traits.
//!
//! Parts:
//! - [`embedded`]: the no-servers default — a JSON-lines source (file or stdin), a JSON-lines
//!   sink for result events and dead letters, and the checkpoint that ties the input position
//!   and the output length to the SQLite state so that restarts are exactly-once.
//! - [`sqlite`]: the SQLite `Store`: documents, request ledger and chunk ledger in one file.
//!
//! - [`kafka`]: the consumer-group source, the transactional sink and admin helpers.
//! - [`mongo`]: the MongoDB store (replica sets; transactions per chunk).

pub mod embedded;
pub mod kafka;
pub mod mongo;
pub mod sqlite;
