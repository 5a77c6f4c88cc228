//! One row group as batches: the fast path for the list columns where it applies, a
//! [`crate::Fused`] consumer for the list it takes, parquet's general reader for
//! everything else and for any chunk the fast path declines.

use std::fs::File;
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::reader::ChunkReader;

use crate::fetch::{Source, fetch};
use crate::fused::Part;
use crate::pages::{IntoBuffers, ToConsumer, stream_chunk};
use crate::plan::{ListColumn, Plan};
use crate::pool::{Chunked, Pool, leased};

/// A row group's embedding buffer larger than this goes through the general reader,
/// which streams, so memory stays bounded for files with huge row groups.
const MAX_FAST_BYTES: usize = 256 << 20;

/// One row group, read from `source`.
pub(crate) fn row_group<T>(
    source: &Source,
    meta: &ArrowReaderMetadata,
    plan: &Plan<T>,
    rg: usize,
    batch_rows: usize,
    pool: &Arc<Pool>,
) -> crate::Result<Vec<Part<T>>> {
    match source {
        Source::Local(path) => {
            let open = || File::open(path);
            row_group_from(&Arc::new(open()?), open, meta, plan, rg, batch_rows, pool)
        }
        Source::Ranges(from) => {
            let fetched = fetch(from.as_ref(), meta, plan, rg)?;
            let open = || Ok(fetched.clone());
            row_group_from(
                &Arc::new(fetched.clone()),
                open,
                meta,
                plan,
                rg,
                batch_rows,
                pool,
            )
        }
    }
}

/// Rows per batch, at most `most`, that cut `rows` into equal batches (the last
/// shorter by fewer rows than there are batches).
///
/// A short tail batch per row group cost DataFusion's plans a copy of every later row:
/// a repartition's coalescer passes a large batch through whole only while it holds
/// no rows, and a tail of a few hundred rows kept it holding some from then on.
/// Measured on `reclag sql`'s count over the 1M × 512 fixture (64Ki-row groups cut at
/// 16,288 rows: four full batches and one of 384 rows): 140k page faults against 18k,
/// 0.91 s against 0.70 s. Equal batches are all at least half of `most`, above the
/// coalescer's bypass threshold (half its target) whenever `most` reaches the target.
pub(crate) fn even_batches(rows: usize, most: usize) -> usize {
    let most = most.max(1);
    rows.div_ceil(rows.div_ceil(most).max(1)).max(1)
}

fn rows<T>(batches: Vec<RecordBatch>) -> Vec<Part<T>> {
    batches.into_iter().map(Part::Rows).collect()
}

/// [`row_group`] over any reader: `shared` for the list pages, `open` for a fresh
/// reader for the general reader.
#[allow(clippy::too_many_arguments)]
fn row_group_from<R: ChunkReader + 'static, T>(
    shared: &Arc<R>,
    open: impl Fn() -> std::io::Result<R>,
    meta: &ArrowReaderMetadata,
    plan: &Plan<T>,
    rg: usize,
    batch_rows: usize,
    pool: &Arc<Pool>,
) -> crate::Result<Vec<Part<T>>> {
    let md = meta.metadata().row_group(rg);
    let n_rows = md.num_rows().max(0) as usize;
    let batch_rows = even_batches(n_rows, batch_rows);
    let everything = || -> crate::Result<Vec<Part<T>>> {
        Ok(rows(general_reader(
            open()?,
            meta,
            &plan.roots,
            rg,
            batch_rows,
        )?))
    };
    let others = || -> crate::Result<Vec<RecordBatch>> {
        if plan.others.is_empty() {
            Ok(vec![])
        } else {
            general_reader(open()?, meta, &plan.others, rg, batch_rows)
        }
    };
    let fused = plan.fused.as_ref();
    // List `li`'s values, `None` where the fast path declines its chunk.
    let list = |li: usize| {
        let l = &plan.lists[li];
        decode_list(
            shared,
            md.column(l.leaf),
            n_rows,
            l,
            batch_rows * l.dim,
            pool,
        )
    };
    let mut lists: Vec<Option<Chunked>> = (0..plan.lists.len()).map(|_| None).collect();
    for li in 0..plan.lists.len() {
        if fused.is_some_and(|f| f.list == li) {
            continue;
        }
        match list(li)? {
            Some(values) => lists[li] = Some(values),
            None => return everything(),
        }
    }
    let others = others()?;
    if let Some(f) = fused {
        let given = assemble(plan, n_rows, batch_rows, &others, &lists, &f.given)?;
        if let Some(g) = f.consumer.start(&given) {
            let l = &plan.lists[f.list];
            // One page of values at a time (about 1 MiB), scored where the page was
            // decompressed, while it is in L2. A row split across pages waits here.
            let mut sink = ToConsumer {
                group: g,
                scratch: Vec::new(),
                dim: l.dim,
            };
            let whole = stream_chunk(shared, md.column(l.leaf), n_rows, l, &mut sink)?;
            if whole && sink.scratch.is_empty() {
                let out = sink.group.finish(given)?;
                return Ok(out.into_iter().map(Part::Fused).collect());
            }
            // Not a dense PLAIN list after all: what was consumed is dropped and the
            // row group is read by the general reader.
            return everything();
        }
        // Declined: the list is read like the others.
        match list(f.list)? {
            Some(values) => lists[f.list] = Some(values),
            None => return everything(),
        }
    }
    Ok(rows(assemble(
        plan,
        n_rows,
        batch_rows,
        &others,
        &lists,
        &plan.projected,
    )?))
}

/// A row group's batches with `schema`'s columns (the plan's, or all but the fused
/// list): the decoded lists, where `lists` holds them, between the general reader's
/// columns `others`, batch by batch as the general reader cut them.
fn assemble<T>(
    plan: &Plan<T>,
    rows: usize,
    batch_rows: usize,
    others: &[RecordBatch],
    lists: &[Option<Chunked>],
    schema: &SchemaRef,
) -> crate::Result<Vec<RecordBatch>> {
    if schema.fields().is_empty() {
        return Ok(vec![]);
    }
    let mut out = Vec::with_capacity(rows.div_ceil(batch_rows));
    let mut start = 0;
    let mut k = 0;
    while start < rows {
        let n = match others.get(k) {
            Some(b) => b.num_rows(),
            None => batch_rows.min(rows - start),
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let mut oi = 0;
        for &root in &plan.roots {
            match plan.lists.iter().position(|l| l.root == root) {
                Some(li) => {
                    let Some(values) = &lists[li] else { continue };
                    let l = &plan.lists[li];
                    cols.push(Arc::new(FixedSizeListArray::new(
                        l.item.clone(),
                        l.dim as i32,
                        Arc::new(Float32Array::new(
                            values.range(start * l.dim, n * l.dim),
                            None,
                        )),
                        None,
                    )));
                }
                None => {
                    cols.push(others[k].column(oi).clone());
                    oi += 1;
                }
            }
        }
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
        start += n;
        k += 1;
    }
    Ok(out)
}

/// Parquet's general Arrow reader over one row group and some root columns.
fn general_reader<R: ChunkReader + 'static>(
    file: R,
    meta: &ArrowReaderMetadata,
    roots: &[usize],
    rg: usize,
    batch_rows: usize,
) -> crate::Result<Vec<RecordBatch>> {
    let b = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone());
    let mask = ProjectionMask::roots(b.parquet_schema(), roots.iter().copied());
    b.with_projection(mask)
        .with_row_groups(vec![rg])
        .with_batch_size(batch_rows)
        .build()?
        .map(|r| r.map_err(|e| ParquetError::External(Box::new(e))))
        .collect()
}

/// The values of a list column chunk, or `None` when the chunk is not a dense PLAIN
/// `FixedSizeList` this path can copy exactly.
///
/// The values come in buffers of `per` values (a batch's worth), so a batch that
/// outlives its row group, queued in a DataFusion plan say, keeps 32 MiB alive rather
/// than the row group's 128 MiB.
pub(crate) fn decode_list<R: ChunkReader + 'static>(
    file: &Arc<R>,
    chunk: &ColumnChunkMetaData,
    rows: usize,
    l: &ListColumn,
    per: usize,
    pool: &Arc<Pool>,
) -> crate::Result<Option<Chunked>> {
    if rows * l.dim * 4 > MAX_FAST_BYTES {
        return Ok(None);
    }
    let total = rows * l.dim;
    let per = per.max(1);
    let mut sink = IntoBuffers {
        pool,
        per,
        cur: pool.take(per),
        done: Vec::with_capacity(total.div_ceil(per)),
    };
    let whole = stream_chunk(file, chunk, rows, l, &mut sink)?;
    if !whole {
        return Ok(None);
    }
    if !sink.cur.is_empty() {
        sink.done.push(leased(sink.cur, pool));
    }
    Ok(Some(Chunked {
        per,
        parts: sink.done,
    }))
}
