//! Helpers shared by the proxy's end-to-end tests (also used by other
//! crates' tests through `#[path]`): a real CNCF `docker-registry` on
//! loopback, and an OCI image-layout builder pushed with `skopeo`.
#![allow(dead_code)]

pub mod layout;
pub mod registry;
