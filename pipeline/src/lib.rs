//! The sluice dataflow core. Nothing here knows which broker or database is on the other side.
//!
//! ```text
//! Source ─▶ validate ─▶ chunk ─▶ dedupe ─▶ execute ─▶ commit ─▶ Sink
//!                                  │          │
//!                                  └─ Store ──┘   (request ledger, chunk ledger, documents)
//! ```
//!
//! Parts:
//! - [`contract`]: the wire contract (request, result events, dead letters) and its JSON Schemas;
//!   [`codes`]: the closed sets of error codes and the store error classification.
//! - [`record`], [`request`], [`work`]: what flows between the stages.
//! - [`stage`]: the [`Stage`] trait, bounded measured channels, and the stage driver.
//! - One file per stage: [`validate`], [`chunk`], [`dedupe`], [`execute`], [`commit`].
//! - [`source`], [`sink`], [`store`]: the traits connectors implement; [`apply`] holds the
//!   item rules every store shares.
//! - [`retry`]: backoff with jitter by error kind; [`metrics`]: every metric name;
//!   [`report`]: live counters for progress bars and benchmarks; [`run`]: wiring and shutdown.
//! - [`status`]: what became of a request, read from the store (status API, `sluice status`).
//! - [`budget`]: the in-flight budget (records and bytes); [`health`]: readiness;
//!   [`fit`]: result events that fit one message.

pub mod apply;
pub mod budget;
pub mod chunk;
pub mod codes;
pub mod commit;
pub mod contract;
pub mod dedupe;
pub mod execute;
pub mod fit;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod record;
pub mod report;
pub mod request;
pub mod retry;
pub mod run;
pub mod sink;
pub mod source;
pub mod stage;
pub mod status;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;
pub mod validate;
pub mod work;

pub use codes::{SinkError, SourceError, StoreError, StoreErrorKind};
pub use contract::ResultEvent;
pub use record::{RawRecord, SourceRef};
pub use report::RunStats;
pub use run::{run, RunEnd, RunError};
pub use sink::Sink;
pub use source::Source;
pub use stage::Stage;
pub use store::Store;
