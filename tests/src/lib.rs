//! test crate
