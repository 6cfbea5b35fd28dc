//! Where each content being received stands, shared between the receiver
//! (which settles contents) and the filesystems (whose opens wait on them).
//!
//! Several receives (concurrent pulls of images sharing contents) may
//! expect the same content: each [`ContentWaiters::announce`] counts one
//! receive expecting it and each [`ContentWaiters::release`] ends one. A
//! receive that gives up fails a content only if no other live receive
//! still expects it, so one pull's broken stream never fails the opens
//! another pull will still satisfy.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// The state of one content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentState {
    /// Announced by a bundle header, not verified and stored yet.
    Pending,
    /// Verified and in the content store.
    Ready,
    /// It will not arrive (corrupt, or the stream broke): opens fail.
    Failed,
}

/// One content: its state and how many live receives expect it.
#[derive(Debug)]
struct Entry {
    tx: watch::Sender<ContentState>,
    expecting: usize,
}

impl Entry {
    fn new(state: ContentState, expecting: usize) -> Entry {
        Entry {
            tx: watch::Sender::new(state),
            expecting,
        }
    }
}

/// A map from content SHA-256 to a `watch` of its [`ContentState`].
#[derive(Debug, Default)]
pub struct ContentWaiters {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

impl ContentWaiters {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the state of `sha` (creating its entry), waking its waiters.
    pub fn set(&self, sha: [u8; 32], state: ContentState) {
        let mut map = self.lock();
        match map.get(&sha) {
            Some(e) => {
                e.tx.send_replace(state);
            }
            None => {
                map.insert(sha, Entry::new(state, 0));
            }
        }
    }

    /// Marks `sha` pending unless it is already ready (a content announced
    /// again by a later bundle keeps its earlier success), and counts one
    /// more receive expecting it: the caller must [`ContentWaiters::release`]
    /// it once, when that receive ends.
    pub fn announce(&self, sha: [u8; 32]) {
        let mut map = self.lock();
        match map.get_mut(&sha) {
            Some(e) => {
                e.expecting += 1;
                e.tx.send_if_modified(|s| {
                    let changed = *s == ContentState::Failed;
                    if changed {
                        *s = ContentState::Pending;
                    }
                    changed
                });
            }
            None => {
                map.insert(sha, Entry::new(ContentState::Pending, 1));
            }
        }
    }

    /// Ends one receive's expectation of `sha` (announced by it). With
    /// `give_up`, `sha` is marked failed if it is still pending and no other
    /// live receive expects it; returns whether it was.
    pub fn release(&self, sha: &[u8; 32], give_up: bool) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get_mut(sha) else {
            return false;
        };
        e.expecting = e.expecting.saturating_sub(1);
        if !give_up || e.expecting > 0 {
            return false;
        }
        e.tx.send_if_modified(|s| {
            let pending = *s == ContentState::Pending;
            if pending {
                *s = ContentState::Failed;
            }
            pending
        })
    }

    /// How many live receives expect `sha`.
    pub fn expecting(&self, sha: &[u8; 32]) -> usize {
        self.lock().get(sha).map_or(0, |e| e.expecting)
    }

    /// Forgets `sha` (its content was deleted from the store: a later
    /// announcement must wait for it again, not find it ready).
    pub fn forget(&self, sha: &[u8; 32]) {
        self.lock().remove(sha);
    }

    /// The current state of `sha`, if it was ever announced.
    pub fn state(&self, sha: &[u8; 32]) -> Option<ContentState> {
        self.lock().get(sha).map(|e| *e.tx.borrow())
    }

    /// Marks `sha` failed if it is still pending; returns whether it was.
    pub fn fail_if_pending(&self, sha: &[u8; 32]) -> bool {
        let map = self.lock();
        map.get(sha).is_some_and(|e| {
            e.tx.send_if_modified(|s| {
                let pending = *s == ContentState::Pending;
                if pending {
                    *s = ContentState::Failed;
                }
                pending
            })
        })
    }

    /// Waits until `sha` is no longer pending and returns its state, or
    /// `None` at once if it was never announced.
    pub async fn wait(&self, sha: &[u8; 32]) -> Option<ContentState> {
        let mut rx = self.lock().get(sha)?.tx.subscribe();
        let state = match rx.wait_for(|s| *s != ContentState::Pending).await {
            Ok(s) => *s,
            Err(_) => ContentState::Failed,
        };
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_park_until_settled() {
        let w = Arc::new(ContentWaiters::new());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(w.wait(&a).await, None);
        w.announce(a);
        w.announce(b);
        let w2 = w.clone();
        let waiting = tokio::spawn(async move { w2.wait(&a).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        w.set(a, ContentState::Ready);
        assert_eq!(waiting.await.unwrap(), Some(ContentState::Ready));
        // Failing only touches pending contents.
        assert!(!w.fail_if_pending(&a));
        assert!(w.fail_if_pending(&b));
        assert_eq!(w.wait(&b).await, Some(ContentState::Failed));
        // A new announcement keeps Ready and re-arms Failed.
        w.announce(a);
        w.announce(b);
        assert_eq!(w.state(&a), Some(ContentState::Ready));
        assert_eq!(w.state(&b), Some(ContentState::Pending));
        // A forgotten content is announced afresh.
        w.forget(&a);
        assert_eq!(w.state(&a), None);
        w.announce(a);
        assert_eq!(w.state(&a), Some(ContentState::Pending));
    }

    #[tokio::test]
    async fn a_receive_giving_up_spares_contents_another_expects() {
        let w = Arc::new(ContentWaiters::new());
        let (shared, own) = ([3u8; 32], [4u8; 32]);
        // Pull A expects both, pull B the shared one.
        w.announce(shared);
        w.announce(own);
        w.announce(shared);
        assert_eq!(w.expecting(&shared), 2);
        let w2 = w.clone();
        let waiting = tokio::spawn(async move { w2.wait(&shared).await });
        // A gives up: its own content fails, the shared one stays pending.
        assert!(!w.release(&shared, true));
        assert!(w.release(&own, true));
        assert_eq!(w.state(&shared), Some(ContentState::Pending));
        assert_eq!(w.state(&own), Some(ContentState::Failed));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        // B delivers it: the waiter gets it ready.
        w.set(shared, ContentState::Ready);
        assert_eq!(waiting.await.unwrap(), Some(ContentState::Ready));
        assert!(!w.release(&shared, false));
        assert_eq!(w.expecting(&shared), 0);
        // The last receive giving up fails what is still pending.
        w.announce(own);
        assert_eq!(w.state(&own), Some(ContentState::Pending));
        assert!(w.release(&own, true));
        assert_eq!(w.state(&own), Some(ContentState::Failed));
        // Releasing what is unknown does nothing.
        assert!(!w.release(&[9u8; 32], true));
    }
}
