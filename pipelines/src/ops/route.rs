//! How rows pick their group: a label column, a logits column, or none, in which case
//! the row is routed by the model (§4, §10: best margin, or the union on request).

use std::path::Path;

use arrow_array::RecordBatch;
use reclag::{Model, Route};

use crate::error::{Error, Result};
use crate::io::batch_column;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// No group column: every row routed by the model, to the group of largest
    /// margin (`best`) or against the union of all groups with `τ*` (`union`).
    Ungrouped(Route),
    /// A label column (integer or string); null values are routed by best margin.
    Column(String),
    /// `argmax(logits)` selects the group with that integer label.
    Logits(String),
}

impl Routing {
    pub fn from_flags(group: Option<String>, logits: Option<String>) -> Result<Self> {
        match (group, logits) {
            (Some(_), Some(_)) => Err(Error::Usage(
                "--group and --group-from-logits are mutually exclusive; pick one".into(),
            )),
            (Some(g), None) => Ok(Routing::Column(g)),
            (None, Some(l)) => Ok(Routing::Logits(l)),
            (None, None) => Ok(Routing::Ungrouped(Route::Best)),
        }
    }

    /// [`Routing::from_flags`] with `--route`, which applies only without a group.
    pub fn with_route(
        group: Option<String>,
        logits: Option<String>,
        route: Option<Route>,
    ) -> Result<Self> {
        match (Self::from_flags(group, logits)?, route) {
            (Routing::Ungrouped(_), Some(r)) => Ok(Routing::Ungrouped(r)),
            (r, None) => Ok(r),
            (_, Some(_)) => Err(Error::Usage(
                "--route picks the group of rows without one; it cannot be combined with --group or --group-from-logits".into(),
            )),
        }
    }

    /// Where rows without a group value go.
    pub fn route(&self) -> Route {
        match self {
            Routing::Ungrouped(r) => *r,
            _ => Route::Best,
        }
    }

    pub fn column(&self) -> Option<&str> {
        match self {
            Routing::Ungrouped(_) => None,
            Routing::Column(c) | Routing::Logits(c) => Some(c),
        }
    }

    /// Group index per row (`None`: routed by [`Routing::route`]), or `None` when no
    /// row has a group.
    pub fn resolve(
        &self,
        model: &Model,
        batch: &RecordBatch,
        path: &Path,
    ) -> Result<Option<Vec<Option<u32>>>> {
        let wrap = Error::in_file(path);
        Ok(match self {
            Routing::Ungrouped(_) => None,
            Routing::Column(c) => Some(
                reclag::arrow::resolve_groups(model, batch_column(batch, c, path)?.as_ref(), c)
                    .map_err(wrap)?,
            ),
            Routing::Logits(c) => Some(
                reclag::arrow::resolve_groups_from_logits(
                    model,
                    batch_column(batch, c, path)?.as_ref(),
                    c,
                )
                .map_err(wrap)?,
            ),
        })
    }
}
