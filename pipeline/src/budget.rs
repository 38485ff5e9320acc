//! The in-flight budget: how many records, and how many KiB of input, may be between the
//! source and the commit. The source takes a share before handing a record on; the commit
//! stage's drop of the record's [`Budget`] gives it back. The share the reader reserves while
//! it waits for the next record is not counted as in flight: an idle service has nothing in
//! flight (and is not "stalled").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::{gauge, Gauge};
use tokio::sync::Semaphore;

use crate::health::Health;
use crate::metrics::{IN_FLIGHT, IN_FLIGHT_BYTES};
use crate::record::Budget;

/// The two semaphores and their sizes.
#[derive(Debug)]
pub struct InFlight {
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_records: usize,
    max_kib: u32,
    /// Record shares reserved by the reader for a record it has not read yet.
    reserved: Arc<AtomicUsize>,
    health: Arc<Health>,
    records_gauge: Gauge,
    bytes_gauge: Gauge,
}

const CLOSED: &str = "the in-flight semaphores are never closed";

impl InFlight {
    /// A budget of `max_records` records and `max_bytes` bytes.
    pub fn new(max_records: usize, max_bytes: usize, health: Arc<Health>) -> Self {
        let max_kib =
            (max_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        InFlight {
            records: Arc::new(Semaphore::new(max_records)),
            bytes: Arc::new(Semaphore::new(max_kib as usize)),
            max_records,
            max_kib,
            reserved: Arc::new(AtomicUsize::new(0)),
            health,
            records_gauge: gauge!(IN_FLIGHT),
            bytes_gauge: gauge!(IN_FLIGHT_BYTES),
        }
    }

    /// Waits for room for one more record, reserving it for the record about to be read.
    pub async fn record(&self) -> Reservation {
        let permit = self.records.clone().acquire_owned().await.expect(CLOSED);
        self.reserved.fetch_add(1, Ordering::SeqCst);
        Reservation {
            permit: Some(permit),
            reserved: self.reserved.clone(),
        }
    }

    /// Waits for room for `bytes` more input bytes (a record larger than the whole budget
    /// takes all of it), and combines it with the record's reserved share: the record is in
    /// flight from here on.
    pub async fn bytes(&self, mut record: Reservation, bytes: usize) -> Budget {
        let record = record.take();
        let kib = (bytes / 1024 + 1).min(self.max_kib as usize) as u32;
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect(CLOSED);
        Budget { record, bytes }
    }

    /// Exports the budget in use (`sluice_in_flight_records`, `sluice_in_flight_bytes`).
    pub fn report(&self) {
        let records = (self.max_records - self.records.available_permits())
            .saturating_sub(self.reserved.load(Ordering::SeqCst));
        let kib = self.max_kib as usize - self.bytes.available_permits();
        self.records_gauge.set(records as f64);
        self.bytes_gauge.set((kib * 1024) as f64);
        self.health.set_in_flight(records);
    }
}

/// A record share the reader holds before it reads the record (not counted as in flight).
#[derive(Debug)]
pub struct Reservation {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    reserved: Arc<AtomicUsize>,
}

impl Reservation {
    fn take(&mut self) -> tokio::sync::OwnedSemaphorePermit {
        self.reserved.fetch_sub(1, Ordering::SeqCst);
        self.permit.take().expect("a reservation is taken once")
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
