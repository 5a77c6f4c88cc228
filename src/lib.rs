//! RecLag: out-of-distribution detection with a rectified-Lagrangian modern Hopfield
//! network (Moriai et al., AAAI 2025). The mathematical contract is `RECLAG.md` in the
//! project's shared spec; section numbers in comments refer to it.
//!
//! This crate is the engine-free core: the model, batch scoring and dynamics, the
//! trainer, calibration, metrics, baselines and the Parquet model file. DataFusion and
//! Polars adapters live in `reclag-udfs`; IO, jobs and the CLI in `reclag-pipelines`.

pub mod arrow;
pub mod atomic;
pub mod baselines;
pub mod conformal;
mod dynamics;
pub mod error;
pub mod explain;
mod folded;
pub mod format;
pub mod inspect;
pub mod kernel;
pub mod kmeans;
pub mod metrics;
pub mod model;
pub mod rng;
pub mod rows;
pub mod score;
mod tile;
pub mod train;
pub mod vexp;
pub mod whiten;

pub use error::{Error, Result};
pub use explain::Explanation;
pub use model::{
    BetaSearch, CalibratedOn, Group, GroupKey, LabelKind, Model, ModelParts, Normalize, Precision,
    Provenance, Recipe, Route, Whitening, lyapunov,
};
pub use rows::{Rows, Values};
pub use score::{ScoreOutput, Work};
pub use train::{Init, NoProgress, Progress, TrainParams, TrainingSet, ValidParams};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn public_types_are_send_sync() {
        assert_send_sync::<crate::Model>();
        assert_send_sync::<crate::ScoreOutput>();
        assert_send_sync::<crate::TrainingSet>();
        assert_send_sync::<crate::ValidParams>();
        assert_send_sync::<crate::Rows<'static>>();
    }
}
