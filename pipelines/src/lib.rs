//! IO, jobs and the `reclag` command line around the engine-free core.

pub mod alloc;
pub mod calibrate;
pub mod cli;
pub mod demo;
pub mod drift;
pub mod error;
pub mod eval;
pub mod fast_table;
pub mod filter;
pub mod frames;
pub mod inspect;
pub mod io;
pub mod progress;
pub mod route;
pub mod score;
pub mod sql;
pub mod store;
pub mod train;
pub mod upload;

pub use error::{Error, Result};
