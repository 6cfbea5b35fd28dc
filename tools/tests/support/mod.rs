//! Helpers for the `starlight` tool's end-to-end tests.
#![allow(dead_code)]

pub mod containerd;
