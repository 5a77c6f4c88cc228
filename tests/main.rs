//! The one integration-test binary (each extra binary would re-link the world).

mod cli;
mod cluster;
mod cluster_procs;
mod common;
mod conformal;
mod drift;
mod emulators;
mod golden;
mod polars_exprs;
mod properties;
mod reference;
mod sql;
mod stores;
mod whitened;
