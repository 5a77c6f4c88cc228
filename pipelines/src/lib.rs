//! IO, jobs and the `reclag` command line around the engine-free core.

pub mod alloc;
pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod drift;
pub mod error;
pub mod io;
pub mod ops;
pub mod progress;
pub mod store;
pub mod upload;

pub use error::{Error, Result};
