//! The node's wall clock, the only place time enters: stamps on proposals and the
//! reader's time for TTL checks. Apply never calls this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch, shifted by a test-only offset.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ms: i64,
}

impl Clock {
    /// A clock `offset_ms` away from the system's (0 outside clock-skew tests).
    pub fn new(offset_ms: i64) -> Self {
        Self { offset_ms }
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wall.saturating_add_signed(self.offset_ms)
    }
}
