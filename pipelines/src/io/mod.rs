//! Parquet and Arrow IPC IO over any store: input expansion (files, prefixes, globs),
//! schema checks that fail before any row is read, streaming record batches, and
//! outputs that appear whole or not at all.

mod inputs;
mod read;
mod read_ahead;
mod write;

pub use inputs::*;
pub use read::*;
pub use read_ahead::*;
pub use write::*;

pub const BATCH_ROWS: usize = 16 * 1024;

/// Decoded bytes per batch at most: wide rows get fewer rows per batch (16k rows of
/// 4096-d embeddings would be 256 MiB each, and a handful are in flight between
/// decoding, scoring and writing). Measured on 2048-d rows kept in the output, read
/// from one-row-group files: with 32 MiB batches peak RSS still rose with the input
/// (657 MiB at 64k rows, 1.1 GiB at 256k: freed batches fragment the heap, whose
/// blocks below 64 MiB the allocator settings keep); with 8 MiB it was 317, 327 and
/// 325 MiB at 16k, 64k and 256k rows, and no slower. A list column scored page by
/// page (see [`reclag_parquet::Fused`]) is never held, so it does not count.
pub const BATCH_BYTES: u64 = 8 << 20;

/// Decoded bytes per batch at most on the fast reader's path, which holds each row
/// group whole while it is consumed, so its batches are views of memory held anyway
/// and their size does not move the peak. Small batches cost the SQL operators and
/// the writer per batch: with [`BATCH_BYTES`] here (4,096 rows at d = 512), `reclag
/// sql` took 1.6–1.8× and `reclag filter` 1.12× the time of 16,384-row batches
/// (`benches/ab.py`, see BENCHMARKS.md).
pub const FAST_BATCH_BYTES: u64 = 32 << 20;

/// Decoded bytes of one row group above which the fast reader, which holds whole row
/// groups ([`reclag_parquet::default_in_flight`] decoding and one waiting), gives way to
/// parquet's reader, which streams pages into batches of [`BATCH_BYTES`]. A file
/// written as one huge row group (pyarrow's default is up to 1M rows: 16 GiB at
/// 4096-d) then costs a few batches of memory instead of the row group, at the
/// general reader's speed. Peak memory therefore depends on the row-group size up to
/// this bound and never on the input's length.
pub const FAST_ROW_GROUP_BYTES: u64 = 256 << 20;

/// A row group is closed once its encoded size passes this, so writer memory stays
/// bounded however wide the rows (the writer's default closes only at 1M rows, which
/// is 2 GiB of 512-d embeddings).
pub const ROW_GROUP_BYTES: usize = 128 << 20;

/// Rows per output row group at most. The writer holds a row group's encoded pages
/// until it closes, so one 1M-row group of scores was written and synced only at the
/// end, after the scoring (about 40 ms of a 0.8 s run on one core); closed every 256k
/// rows, each is written (and its writeback started) while scoring goes on. Readers
/// such as DuckDB and Polars parallelise over row groups of this size.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// The spec for standard input / standard output (an Arrow IPC stream).
pub const STDIO: &str = "-";

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::RecordBatch;
    use arrow_schema::Schema;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    use crate::error::{Error, Result};
    use crate::store::StoreEnv;
    use crate::store::Stores;

    #[test]
    fn expands_dirs_and_globs_skipping_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "a.parquet",
            "b.parquet",
            "_tmp.parquet",
            "x.csv",
            "p=1/c.parquet",
            ".hidden/d.parquet",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        let stores = Stores::new(StoreEnv::default());
        let names = |spec: &str| -> Vec<String> {
            expand_inputs(&stores, &[spec.to_string()])
                .unwrap()
                .iter()
                .map(|l| l.key.as_ref().rsplit('/').next().unwrap().to_string())
                .collect()
        };
        let root = d.to_string_lossy().to_string();
        assert_eq!(names(&root), ["a.parquet", "b.parquet", "c.parquet"]);
        assert_eq!(
            names(&format!("{root}/*.parquet")),
            ["_tmp.parquet", "a.parquet", "b.parquet"]
        );
        assert_eq!(names(&format!("{root}/p=*/*.parquet")), ["c.parquet"]);
        assert_eq!(names(&format!("{root}/**/c.parquet")), ["c.parquet"]);
        let glob = format!("{root}/nope*.parquet");
        let e = expand_inputs(&stores, std::slice::from_ref(&glob)).unwrap_err();
        assert!(
            matches!(&e, Error::NoInput { input, .. } if *input == glob),
            "{e:?}"
        );
        assert!(e.to_string().contains("matches no files"), "{e}");
        let e = expand_inputs(&stores, &[format!("{root}/missing")]).unwrap_err();
        assert!(matches!(e, Error::NoInput { .. }), "{e:?}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    /// Rows `start..start + n` of an (id, embedding) table, as a file of `rg`-row
    /// row groups; with `nulls`, every seventh embedding is null, so each row group
    /// falls back to the general reader inside the fast one.
    fn part(dir: &Path, name: &str, start: usize, n: usize, rg: usize, nulls: bool) -> String {
        use arrow_array::{Array, FixedSizeListArray, Float32Array, Int64Array};
        let dim = 6;
        let item = Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            true,
        ));
        let values =
            Float32Array::from_iter_values((start * dim..(start + n) * dim).map(|i| i as f32));
        let valid = nulls.then(|| (0..n).map(|r| r % 7 != 3).collect::<Vec<_>>().into());
        let list = FixedSizeListArray::new(item, dim as i32, Arc::new(values), valid);
        let id = Int64Array::from_iter_values((start..start + n).map(|i| i as i64));
        let schema = Arc::new(Schema::new(vec![
            arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new("embedding", list.data_type().clone(), true),
        ]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(id), Arc::new(list)]).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rg))
            .set_dictionary_enabled(false)
            .set_compression(Compression::SNAPPY)
            .build();
        let path = dir.join(name);
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), b.schema(), Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Inputs whose schemas differ fail, whichever comes first, with a kind that
    /// names the file and the columns.
    #[test]
    fn inputs_of_different_schemas_name_the_file_and_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let a = part(dir.path(), "a.parquet", 0, 10, 10, false);
        // `b`: `a`'s columns and a `label_name`.
        let b = dir.path().join("b.parquet");
        {
            let mut r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                File::open(&a).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            let batch = r.next().unwrap().unwrap();
            let label = arrow_array::StringArray::from_iter_values(
                (0..batch.num_rows()).map(|i| format!("class {i}")),
            );
            let mut fields = batch.schema().fields().to_vec();
            fields.push(Arc::new(arrow_schema::Field::new(
                "label_name",
                arrow_schema::DataType::Utf8,
                false,
            )));
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(label));
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
            let mut w =
                ArrowWriter::try_new(File::create(&b).unwrap(), batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        let b = b.to_string_lossy().into_owned();
        let stores = Stores::new(crate::store::StoreEnv::default());
        for (inputs, odd) in [([&a, &b], &b), ([&b, &a], &a)] {
            let inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
            let e = open_all(&stores, &inputs).err().expect("schemas differ");
            match &e {
                Error::SchemaMismatch { file, columns, .. } => {
                    assert_eq!(file, Path::new(odd));
                    assert_eq!(columns, &["label_name"]);
                }
                other => panic!("expected SchemaMismatch, found {other:?}"),
            }
        }
    }

    /// Fast-path files are read as one chain across file boundaries; row groups the
    /// fast path declines (nulls) are read by the general reader within the chain, and
    /// every batch keeps its file's index and order. A damaged file is reported after
    /// the rows before it.
    #[test]
    fn inputs_read_ahead_in_order_across_files() {
        use arrow_array::cast::AsArray;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let specs = [
            part(d, "a.parquet", 0, 500, 200, false),
            part(d, "b.parquet", 500, 150, 200, false),
            part(d, "c.parquet", 650, 300, 100, true),
            part(d, "d.parquet", 950, 50, 200, false),
            part(d, "e.parquet", 1000, 700, 300, false),
        ];
        let stores = Stores::new(StoreEnv::default());
        let read = |specs: &[String]| {
            let files = open_all(&stores, specs).unwrap();
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let h = std::thread::spawn(move || read_ahead(files, tx));
            let got: Vec<Result<(usize, RecordBatch)>> = rx.into_iter().collect();
            h.join().unwrap();
            got
        };
        let mut ids = Vec::new();
        let mut last_file = 0;
        for item in read(&specs) {
            let (i, b) = item.unwrap();
            assert!(i >= last_file, "file {i} after file {last_file}");
            last_file = i;
            let bounds = [0, 500, 650, 950, 1000, 1700];
            for &v in b
                .column(0)
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
            {
                assert!(
                    (bounds[i]..bounds[i + 1]).contains(&(v as usize)),
                    "id {v} in file {i}"
                );
                ids.push(v);
            }
        }
        assert_eq!(ids, (0..1700).collect::<Vec<i64>>());
        // Damaged pages in the second file: the rows before them, then an error that
        // names it, and nothing after.
        let mut bytes = std::fs::read(&specs[1]).unwrap();
        let n = bytes.len();
        bytes[4..n / 2].fill(0xff);
        std::fs::write(&specs[1], &bytes).unwrap();
        let got = read(&specs);
        let (last, rows) = got.split_last().unwrap();
        let e = last.as_ref().unwrap_err().to_string();
        assert!(e.contains("b.parquet"), "{e}");
        let mut ids: Vec<i64> = Vec::new();
        for item in rows {
            let (i, b) = item.as_ref().unwrap();
            assert!(*i <= 1);
            ids.extend(
                b.column(0)
                    .as_primitive::<arrow_array::types::Int64Type>()
                    .values(),
            );
        }
        assert_eq!(ids, (0..ids.len() as i64).collect::<Vec<_>>());
        assert!(ids.len() >= 500, "file a's rows come first");
    }
}
