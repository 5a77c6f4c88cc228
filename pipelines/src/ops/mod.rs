//! The operations, each a job the command line (or a program) builds and runs:
//! scoring, filtering, training, evaluation, re-calibration, SQL with its table
//! provider, and Polars frames over reclag's reader.

/// Builder setters that store their argument (converted with `Into`) in the field of
/// the same name: every job's optional settings.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: impl Into<$ty>) -> Self {
                self.$name = value.into();
                self
            }
        )*
    };
}

pub mod calibrate;
pub mod demo;
pub mod eval;
pub mod filter;
pub mod frames;
pub mod route;
pub mod score;
pub mod sql;
pub mod train;
