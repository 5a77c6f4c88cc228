//! The operations, each a job the command line (or a program) builds and runs:
//! scoring, filtering, training, evaluation, re-calibration, SQL with its table
//! provider, and Polars frames over reclag's reader.

pub mod calibrate;
pub mod demo;
pub mod eval;
pub mod filter;
pub mod frames;
pub mod inspect;
pub mod route;
pub mod score;
pub mod sql;
pub mod train;
