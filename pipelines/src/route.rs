//! How rows pick their group: a label column, a logits column, or the union.

use std::path::Path;

use arrow_array::RecordBatch;
use reclag::Model;

use crate::error::{Error, Result};
use crate::io::batch_column;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Every row against the union of all groups with `τ*`.
    Union,
    /// A label column (integer or string); null values use the union.
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
            (None, None) => Ok(Routing::Union),
        }
    }

    pub fn column(&self) -> Option<&str> {
        match self {
            Routing::Union => None,
            Routing::Column(c) | Routing::Logits(c) => Some(c),
        }
    }

    /// Group index per row (`None` = union), or `None` for all-union.
    pub fn resolve(
        &self,
        model: &Model,
        batch: &RecordBatch,
        path: &Path,
    ) -> Result<Option<Vec<Option<u32>>>> {
        let wrap = Error::in_file(path);
        Ok(match self {
            Routing::Union => None,
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
