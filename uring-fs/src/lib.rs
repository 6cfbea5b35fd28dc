//! uring-fs: a general FUSE server crate. Not built yet: see issue 4.
