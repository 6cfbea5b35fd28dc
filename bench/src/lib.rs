//! Building blocks of the `starlight-bench` harness shared by the binary and
//! the criterion benchmarks: writers that hash and count what passes through
//! them, a Docker-style layer tar builder, and a synthetic layer generator.

pub mod hashing;
pub mod layer_tar;
pub mod netem;
pub mod synth;
