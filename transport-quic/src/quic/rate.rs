//! A fixed-window count per token: bounds how much weight one token's trace uploads
//! can have on the ranks.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most `limit` events per token in each `window`.
pub(crate) struct PerTokenRate {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<usize, (Instant, u32)>>,
}

impl PerTokenRate {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        PerTokenRate {
            limit,
            window,
            seen: Mutex::default(),
        }
    }

    /// Counts one event for `token` (its index in the token set); false when over the
    /// limit (and then it is not counted). The map holds one entry per configured token.
    pub(crate) fn allow(&self, token: usize) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.entry(token).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_token_and_resets_with_the_window() {
        let r = PerTokenRate::new(2, Duration::from_millis(50));
        assert!(r.allow(0) && r.allow(0));
        assert!(!r.allow(0));
        assert!(r.allow(1));
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.allow(0));
    }
}
