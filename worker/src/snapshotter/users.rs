//! Which snapshots use a Starlight image: the containers' root filesystems
//! (and any other snapshot built above the image's layers), so that the
//! image is not removed from under them.

use std::collections::HashMap;

use super::store::Record;
use super::{image_candidates, OverlaySnapshotter, LABEL_IMAGE};

/// Most parents followed from one snapshot (a longer chain is cyclic or
/// corrupt and counts as a user, to be safe).
const MAX_CHAIN: usize = 4096;

/// Who uses an image's mount (see [`OverlaySnapshotter::users_of`]).
pub trait ImageUsers: Send + Sync + 'static {
    /// The keys of the snapshots whose mounts stand on the image with this
    /// manifest digest (`sha256:<hex>`); empty if none.
    fn users_of(&self, manifest_digest: &str) -> Result<Vec<String>, String>;
}

/// The keys of the snapshots in `records` that stand on the image with
/// manifest digest `digest`: every snapshot that is not itself one of a
/// Starlight image's layers (no [`LABEL_IMAGE`]) and whose nearest image
/// layer below it names `digest` among its candidates
/// ([`image_candidates`]). Any candidate counts: the mount a container got
/// may be any of them.
pub fn image_users(records: &[Record], digest: &str) -> Vec<String> {
    let by_key: HashMap<&str, &Record> = records.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut users = Vec::new();
    for r in records {
        if r.labels.contains_key(LABEL_IMAGE) {
            continue;
        }
        let mut next = r.parent.as_str();
        let mut steps = 0;
        while !next.is_empty() {
            let Some(layer) = by_key.get(next) else {
                break; // a broken chain stands on nothing we hold
            };
            let images = image_candidates(&layer.labels);
            if !images.is_empty() {
                if images.iter().any(|d| d == digest) {
                    users.push(r.key.clone());
                }
                break;
            }
            steps += 1;
            if steps > MAX_CHAIN {
                users.push(r.key.clone());
                break;
            }
            next = layer.parent.as_str();
        }
    }
    users.sort();
    users
}

impl ImageUsers for OverlaySnapshotter {
    fn users_of(&self, manifest_digest: &str) -> Result<Vec<String>, String> {
        let records = self.records().map_err(|e| e.to_string())?;
        Ok(image_users(&records, manifest_digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshotter::store::Kind;
    use crate::snapshotter::{top_of_label, LABEL_LAYER};

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn rec(key: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Record {
        Record {
            id: 1,
            key: key.into(),
            parent: parent.into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created_ns: 0,
            updated_ns: 0,
        }
    }

    #[test]
    fn containers_above_an_image_use_it_and_its_own_layers_do_not() {
        let top_b = top_of_label(B);
        let records = vec![
            rec(
                "a0",
                "",
                Kind::Committed,
                &[(LABEL_IMAGE, A), (LABEL_LAYER, "0")],
            ),
            rec(
                "a1",
                "a0",
                Kind::Committed,
                &[(LABEL_IMAGE, A), (LABEL_LAYER, "1")],
            ),
            // Being registered: an image layer, not a user.
            rec("a2-tmp", "a1", Kind::Active, &[(LABEL_IMAGE, A)]),
            // B shares A's top chain.
            rec(
                "b1",
                "a0",
                Kind::Committed,
                &[(LABEL_IMAGE, B), (top_b.as_str(), "1")],
            ),
            rec("container-1", "a1", Kind::Active, &[]),
            rec("committed-on-top", "a1", Kind::Committed, &[]),
            rec("above-that", "committed-on-top", Kind::View, &[]),
            rec("container-b", "b1", Kind::Active, &[]),
            rec("plain", "", Kind::Active, &[]),
            rec("orphan", "gone", Kind::Active, &[]),
        ];
        assert_eq!(
            image_users(&records, A),
            vec!["above-that", "committed-on-top", "container-1"]
        );
        assert_eq!(image_users(&records, B), vec!["container-b"]);
        let none = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
        assert!(image_users(&records, none).is_empty());
    }

    #[test]
    fn a_cyclic_chain_counts_as_a_user() {
        let records = vec![
            rec("x", "y", Kind::Committed, &[]),
            rec("y", "x", Kind::Committed, &[]),
        ];
        assert_eq!(image_users(&records, A), vec!["x", "y"]);
    }
}
