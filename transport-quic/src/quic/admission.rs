//! Who may hold a connection: per-address counts, and the unauthenticated
//! connections (the oldest is closed to make room for a new one).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Connection close code: closed unauthenticated to make room for a newer connection.
pub(crate) const CLOSE_EVICTED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Connection close code: no valid Auth within the auth timeout, or the token refused.
pub(crate) const CLOSE_UNAUTHENTICATED: quinn::VarInt = quinn::VarInt::from_u32(3);

/// Counters of the server's admission control (cumulative since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Retry packets sent to validate a client's address.
    pub retries: u64,
    /// Connection attempts refused: their source address had too many connections.
    pub refused_address: u64,
    /// Connection attempts refused: the server had `max_connections`.
    pub refused_full: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Connections that presented an accepted token.
    pub authenticated: u64,
    /// Connections closed for a refused token, a bad Auth or no Auth in time.
    pub auth_failed: u64,
    /// Unauthenticated connections closed to make room for newer ones.
    pub evicted: u64,
    /// Bundle requests refused because of the per-connection or total bundle cap.
    pub bundles_refused: u64,
    /// Trace uploads refused by the per-token rate.
    pub traces_refused: u64,
    /// Connections open now (handshaking, unauthenticated or authenticated).
    pub open: u64,
    /// Unauthenticated connections open now (handshake done, no Auth yet).
    pub unauthenticated: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) retries: AtomicU64,
    pub(crate) refused_address: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) handshakes: AtomicU64,
    pub(crate) authenticated: AtomicU64,
    pub(crate) auth_failed: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) bundles_refused: AtomicU64,
    pub(crate) traces_refused: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct State {
    per_address: HashMap<IpAddr, usize>,
    open: usize,
    next_seq: u64,
    /// Unauthenticated connections by age.
    pending: BTreeMap<u64, quinn::Connection>,
}

/// Admission control shared by the accept loop and the connection tasks.
#[derive(Debug)]
pub(crate) struct Admission {
    per_address: usize,
    total: usize,
    max_unauthenticated: usize,
    state: Mutex<State>,
    pub(crate) counters: Counters,
}

/// Why a connection attempt is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Address,
    Full,
}

/// A connection's place; dropping it frees the place.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    address: IpAddr,
    pending: Option<u64>,
}

impl Admission {
    pub(crate) fn new(per_address: usize, total: usize, max_unauthenticated: usize) -> Self {
        Admission {
            per_address: per_address.max(1),
            total: total.max(1),
            max_unauthenticated: max_unauthenticated.max(1),
            state: Mutex::default(),
            counters: Counters::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a connection from `address`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refusal> {
        let mut s = self.state();
        let count = s.per_address.get(&address).copied().unwrap_or(0);
        if count >= self.per_address {
            Counters::bump(&self.counters.refused_address);
            return Err(Refusal::Address);
        }
        if s.open >= self.total {
            Counters::bump(&self.counters.refused_full);
            return Err(Refusal::Full);
        }
        *s.per_address.entry(address).or_insert(0) += 1;
        s.open += 1;
        Ok(Slot {
            admission: self.clone(),
            address,
            pending: None,
        })
    }

    /// Counters and gauges now.
    pub(crate) fn stats(&self) -> ServerStats {
        let (open, unauthenticated) = {
            let s = self.state();
            (s.open as u64, s.pending.len() as u64)
        };
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            retries: get(&c.retries),
            refused_address: get(&c.refused_address),
            refused_full: get(&c.refused_full),
            handshakes: get(&c.handshakes),
            authenticated: get(&c.authenticated),
            auth_failed: get(&c.auth_failed),
            evicted: get(&c.evicted),
            bundles_refused: get(&c.bundles_refused),
            traces_refused: get(&c.traces_refused),
            open,
            unauthenticated,
        }
    }
}

impl Slot {
    /// Records `conn` as unauthenticated; when there are too many, the oldest is
    /// closed to make room (a legitimate client authenticates at once, so only idle
    /// connections grow old here).
    pub(crate) fn pending(&mut self, conn: &quinn::Connection) {
        let evicted = {
            let mut s = self.admission.state();
            let seq = s.next_seq;
            s.next_seq += 1;
            s.pending.insert(seq, conn.clone());
            self.pending = Some(seq);
            let mut evicted = Vec::new();
            while s.pending.len() > self.admission.max_unauthenticated {
                if let Some((_, old)) = s.pending.pop_first() {
                    evicted.push(old);
                }
            }
            evicted
        };
        for old in evicted {
            Counters::bump(&self.admission.counters.evicted);
            old.close(CLOSE_EVICTED, b"unauthenticated for too long");
        }
    }

    /// The connection authenticated: it no longer counts as unauthenticated.
    pub(crate) fn authenticated(&mut self) {
        if let Some(seq) = self.pending.take() {
            self.admission.state().pending.remove(&seq);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.admission.state();
        if let Some(seq) = self.pending.take() {
            s.pending.remove(&seq);
        }
        s.open = s.open.saturating_sub(1);
        if let Some(n) = s.per_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn per_address_and_total_limits_hold_and_free_on_drop() {
        let a = Arc::new(Admission::new(2, 3, 10));
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let y: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = a.admit(x).unwrap();
        let _s2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::Address));
        let _s3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).err(), Some(Refusal::Full));
        drop(s1);
        assert!(a.admit(x).is_ok());
        let st = a.stats();
        assert_eq!((st.refused_address, st.refused_full), (1, 1));
    }
}
