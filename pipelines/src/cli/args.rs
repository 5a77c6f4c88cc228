//! Argument types several commands share.

use clap::{Args, ValueEnum};
use reclag::Route;

#[derive(Args, Debug, Clone)]
pub struct RoutingArgs {
    /// Route each row to the group named by this column (integer or string);
    /// null values are routed by best margin.
    #[arg(long, value_name = "COL", conflicts_with = "group_from_logits")]
    pub group: Option<String>,
    /// Route each row to the group whose integer label is argmax of this logits column.
    #[arg(long, value_name = "COL")]
    pub group_from_logits: Option<String>,
    /// Without --group or --group-from-logits, where each row is scored: `best`
    /// (default) routes it to the group of largest margin A_g − τ_g and runs that
    /// group's dynamics; `union` scores it against every group's memories at once
    /// with the union threshold τ*, deciding is_ood on the first step.
    #[arg(long, value_enum, value_name = "ROUTE", conflicts_with_all = ["group", "group_from_logits"])]
    pub route: Option<RouteArg>,
}

pub(super) const PRECISION_HELP: &str = "How a whitened model's products with its memories are summed. \
`exact` (the default) sums in f64 as the spec asks. `f32-blocked` sums f32 products in f32 over 32 \
terms and those sums in f64: energies within 1e-6 of exact, and measured no faster beyond noise \
(BENCHMARKS.md); it is there to measure what f32 arithmetic would change. Paper-recipe models ignore it";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionArg {
    Exact,
    F32Blocked,
}

impl From<PrecisionArg> for reclag::Precision {
    fn from(p: PrecisionArg) -> reclag::Precision {
        match p {
            PrecisionArg::Exact => reclag::Precision::Exact,
            PrecisionArg::F32Blocked => reclag::Precision::F32Blocked,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RouteArg {
    Best,
    Union,
}

impl From<RouteArg> for Route {
    fn from(r: RouteArg) -> Route {
        match r {
            RouteArg::Best => Route::Best,
            RouteArg::Union => Route::Union,
        }
    }
}
