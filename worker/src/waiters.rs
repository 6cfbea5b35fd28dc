//! Where each content being received stands, shared between the receiver
//! (which settles contents) and the filesystems (whose opens wait on them).

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

/// A map from content SHA-256 to a `watch` of its [`ContentState`].
#[derive(Debug, Default)]
pub struct ContentWaiters {
    map: Mutex<HashMap<[u8; 32], watch::Sender<ContentState>>>,
}

impl ContentWaiters {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], watch::Sender<ContentState>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the state of `sha` (creating its entry), waking its waiters.
    pub fn set(&self, sha: [u8; 32], state: ContentState) {
        let mut map = self.lock();
        match map.get(&sha) {
            Some(tx) => {
                tx.send_replace(state);
            }
            None => {
                map.insert(sha, watch::Sender::new(state));
            }
        }
    }

    /// Marks `sha` pending unless it is already ready (a content announced
    /// again by a later bundle keeps its earlier success).
    pub fn announce(&self, sha: [u8; 32]) {
        let mut map = self.lock();
        match map.get(&sha) {
            Some(tx) => {
                tx.send_if_modified(|s| {
                    let changed = *s == ContentState::Failed;
                    if changed {
                        *s = ContentState::Pending;
                    }
                    changed
                });
            }
            None => {
                map.insert(sha, watch::Sender::new(ContentState::Pending));
            }
        }
    }

    /// Forgets `sha` (its content was deleted from the store: a later
    /// announcement must wait for it again, not find it ready).
    pub fn forget(&self, sha: &[u8; 32]) {
        self.lock().remove(sha);
    }

    /// The current state of `sha`, if it was ever announced.
    pub fn state(&self, sha: &[u8; 32]) -> Option<ContentState> {
        self.lock().get(sha).map(|tx| *tx.borrow())
    }

    /// Marks `sha` failed if it is still pending; returns whether it was.
    pub fn fail_if_pending(&self, sha: &[u8; 32]) -> bool {
        let map = self.lock();
        map.get(sha).is_some_and(|tx| {
            tx.send_if_modified(|s| {
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
        let mut rx = self.lock().get(sha)?.subscribe();
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
}
