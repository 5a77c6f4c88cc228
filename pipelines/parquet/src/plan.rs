//! Which columns of a file the fast path takes, and where a [`Fused`] consumer
//! takes one of them.

use std::convert::Infallible;
use std::sync::Arc;

use arrow_schema::{DataType, Field, SchemaRef};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::fused::Fused;

/// A `FixedSizeList<Float32>` root column the fast path can take.
#[derive(Clone, Debug)]
pub(crate) struct ListColumn {
    pub root: usize,
    pub leaf: usize,
    pub dim: usize,
    pub item: Arc<Field>,
    pub max_def: i16,
}

/// The item field and size of a column type the fast path can take:
/// `FixedSizeList<Float32, d>` with `d > 0`.
pub fn float_list(t: &DataType) -> Option<(&Arc<Field>, usize)> {
    match t {
        DataType::FixedSizeList(item, dim)
            if item.data_type() == &DataType::Float32 && *dim > 0 =>
        {
            Some((item, *dim as usize))
        }
        _ => None,
    }
}

/// The columns of a file the fast path applies to, or `None` when none does.
pub fn plan(meta: &ArrowReaderMetadata, columns: Option<&[usize]>) -> Option<Plan> {
    let schema = meta.schema();
    let pschema = meta.metadata().file_metadata().schema_descr();
    let roots: Vec<usize> = match columns {
        Some(c) => {
            let mut c = c.to_vec();
            c.sort_unstable();
            c.dedup();
            c
        }
        None => (0..schema.fields().len()).collect(),
    };
    let mut lists = vec![];
    for &root in &roots {
        let Some((item, dim)) = float_list(schema.field(root).data_type()) else {
            continue;
        };
        // The root's single leaf.
        let leaves: Vec<usize> = (0..pschema.num_columns())
            .filter(|&i| pschema.get_column_root_idx(i) == root)
            .collect();
        let [leaf] = leaves[..] else { continue };
        let desc = pschema.column(leaf);
        if desc.max_rep_level() != 1 {
            continue;
        }
        lists.push(ListColumn {
            root,
            leaf,
            dim,
            item: item.clone(),
            max_def: desc.max_def_level(),
        });
    }
    if lists.is_empty() {
        return None;
    }
    let others: Vec<usize> = roots
        .iter()
        .copied()
        .filter(|r| !lists.iter().any(|l| l.root == *r))
        .collect();
    let projected = Arc::new(schema.project(&roots).ok()?);
    Some(Plan {
        roots,
        lists,
        others,
        projected,
        fused: None,
    })
}

/// The columns to read, split into fast lists and the rest; `T` is what a [`Fused`]
/// consumer of one list hands back for a row group it took.
pub struct Plan<T = Infallible> {
    /// The projected root columns, in file order.
    pub(crate) roots: Vec<usize>,
    pub(crate) lists: Vec<ListColumn>,
    /// The roots the general reader decodes.
    pub(crate) others: Vec<usize>,
    pub(crate) projected: SchemaRef,
    pub(crate) fused: Option<FusedPlan<T>>,
}

/// The consumer, which of `lists` it takes, and the schema of the batches it is
/// handed: every projected column but that list.
pub(crate) struct FusedPlan<T> {
    pub consumer: Arc<dyn Fused<Output = T>>,
    pub list: usize,
    pub given: SchemaRef,
}

impl Plan {
    /// Hands the rows of the list column named by [`Fused::column`] to `fused` page
    /// by page instead of materialising them; other list columns are decoded as usual
    /// and handed over with the rest. Ignored where that column is not a fast list.
    pub fn with_fused<T>(self, fused: Arc<dyn Fused<Output = T>>) -> Plan<T> {
        let name = fused.column().to_string();
        let list = self
            .lists
            .iter()
            .position(|l| self.projected.field(self.root_pos(l.root)).name() == &name);
        let given = list.and_then(|list| {
            let keep: Vec<usize> = (0..self.roots.len())
                .filter(|&i| self.roots[i] != self.lists[list].root)
                .collect();
            Some((list, Arc::new(self.projected.project(&keep).ok()?)))
        });
        let mut plan = self.without_consumer();
        plan.fused = given.map(|(list, given)| FusedPlan {
            consumer: fused,
            list,
            given,
        });
        plan
    }

    /// This plan for a reader that may be handed a consumer of output `T` for other
    /// files (a chain of readers shares one type) but has none for this one.
    pub fn without_consumer<T>(self) -> Plan<T> {
        Plan {
            roots: self.roots,
            lists: self.lists,
            others: self.others,
            projected: self.projected,
            fused: None,
        }
    }
}

impl<T> Plan<T> {
    /// The bytes row group `rg` decodes to under this plan: the uncompressed size of
    /// every projected leaf column but a fused list's, which is consumed page by page
    /// and never held. The reader holds this much per row group it decodes, times
    /// the reader's row groups in flight and one more waiting to be consumed.
    pub fn row_group_bytes(&self, meta: &ArrowReaderMetadata, rg: usize) -> u64 {
        let md = meta.metadata().row_group(rg);
        let pschema = meta.metadata().file_metadata().schema_descr();
        let fused_leaf = self.fused.as_ref().map(|f| self.lists[f.list].leaf);
        (0..md.num_columns())
            .filter(|&c| self.roots.contains(&pschema.get_column_root_idx(c)))
            .filter(|&c| Some(c) != fused_leaf)
            .map(|c| md.column(c).uncompressed_size().max(0) as u64)
            .sum()
    }

    /// The schema of the batches read under this plan.
    pub fn schema(&self) -> &SchemaRef {
        &self.projected
    }

    /// The place of file column `root` among the projected columns.
    pub(crate) fn root_pos(&self, root: usize) -> usize {
        self.roots.iter().position(|&r| r == root).unwrap_or(0)
    }
}
