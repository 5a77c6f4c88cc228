//! Decoding ahead of the consumer on a thread of its own, inputs that take the fast
//! path chained so row groups keep decoding on every core across file boundaries.

use std::sync::Arc;

use arrow_array::RecordBatch;

use crate::error::{Error, Result};
use reclag_parquet::{Fused, Part};

use super::*;

/// Decodes `files` in order, sending `(file index, batch)` to `tx`; meant for a thread
/// of its own, so decoding runs ahead of whatever consumes the batches (a bounded
/// channel limits how far). Stops after the first error, or when the receiver is
/// dropped (the consumer stopped on an error).
pub fn read_ahead(
    files: Vec<ParquetFile>,
    tx: std::sync::mpsc::SyncSender<Result<(usize, RecordBatch)>>,
) {
    let each = files.into_iter().map(|f| (f, None)).collect();
    read_ahead_each(each, None, |i, b| {
        let stop = b.is_err();
        tx.send(b.map(|b| (i, b.into_rows()))).is_ok() && !stop
    })
}

/// [`read_ahead`] with [`ParquetFile::read_fused`]. Consecutive inputs that take the
/// fast path are read as one chain (`FastReader::then`), so row groups keep decoding
/// on every core across file boundaries.
pub fn read_ahead_fused<T: Send + 'static>(
    files: Vec<ParquetFile>,
    fused: Option<Arc<dyn Fused<Output = T>>>,
    tx: std::sync::mpsc::SyncSender<Result<(usize, Part<T>)>>,
) {
    let each = files.into_iter().map(|f| (f, fused.clone())).collect();
    read_ahead_each(each, None, |i, b| {
        let stop = b.is_err();
        tx.send(b.map(|b| (i, b))).is_ok() && !stop
    })
}

/// A fused consumer of an input's embedding pages, whose results are `T`s.
pub type Consumer<T> = Arc<dyn Fused<Output = T>>;

/// [`read_ahead_fused`] with a consumer per input: a drift run reads several
/// partitions in one chain, each with its own window and worst rows. `send` gets each
/// batch or error with its input's index, in order, and returns `false` to stop; an
/// error is the last thing sent. `columns` projects every input (the file's column
/// indices; batches hold them in file order).
pub fn read_ahead_each<T: Send + 'static>(
    files: Vec<(ParquetFile, Option<Consumer<T>>)>,
    columns: Option<&[usize]>,
    mut send: impl FnMut(usize, Result<Part<T>>) -> bool,
) {
    let mut files = files.into_iter().enumerate();
    let open = |(f, fused): (ParquetFile, Option<Consumer<T>>)| f.read_fused(columns, fused);
    let mut carried: Option<(usize, Batches<T>)> = None;
    loop {
        let (i, batches) = match carried.take() {
            Some(next) => next,
            None => match files.next() {
                None => return,
                Some((i, f)) => match open(f) {
                    Ok(b) => (i, b),
                    Err(e) => {
                        send(i, Err(e));
                        return;
                    }
                },
            },
        };
        let (mut chain, path) = match batches.into_fast() {
            Ok(fast) => fast,
            Err(mut batches) => {
                while let Some(b) = batches.next_part() {
                    let stop = b.is_err();
                    if !send(i, b) || stop {
                        return;
                    }
                }
                continue;
            }
        };
        let (mut index, mut paths) = (vec![i], vec![path]);
        // An input that fails to open is reported after the chain's rows, in order.
        let mut failed = None;
        for (j, f) in files.by_ref() {
            match open(f).map(Batches::into_fast) {
                Ok(Ok((r, p))) => {
                    chain = chain.then(r);
                    index.push(j);
                    paths.push(p);
                }
                Ok(Err(b)) => {
                    carried = Some((j, b));
                    break;
                }
                Err(e) => {
                    failed = Some((j, e));
                    break;
                }
            }
        }
        loop {
            // The decoding itself runs on the reader's threads, which turn a panic
            // on a corrupt page into an error; nothing here decodes.
            let (k, item) = match chain.next_from() {
                None => break,
                Some((k, Ok(b))) => (k, Ok(b)),
                Some((k, Err(e))) => (
                    k,
                    Err(Error::Arrow {
                        path: paths[k].clone(),
                        source: arrow_schema::ArrowError::ExternalError(Box::new(e)),
                    }),
                ),
            };
            let stop = item.is_err();
            if !send(index[k], item) || stop {
                return;
            }
        }
        if let Some((j, e)) = failed {
            send(j, Err(e));
            return;
        }
    }
}
