//! transport-quic: the Delta Bundle Protocol. Not built yet: see issue 3.
