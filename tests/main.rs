//! The one integration-test binary (each extra binary would re-link the world).

mod common;
mod golden;
mod properties;
