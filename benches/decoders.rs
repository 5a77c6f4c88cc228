//! The fast reader's hand-written page decoding (`reclag-parquet`: levels checked run
//! by run, values copied out of the page, dictionary indices looked up in place)
//! against the same work done with parquet's public column reader,
//! `ColumnReaderImpl::read_records` (values, definition and repetition levels into
//! vectors, the levels then checked for a dense list), and against parquet's Arrow
//! reader, which builds the `FixedSizeList` column itself.
//!
//! One row group of 65,536 rows × d = 512 (128 MiB of floats), snappy, in three
//! layouts: v1 data pages PLAIN; v2 data pages PLAIN; v1 pages written with the
//! writers' default dictionary, which indexes the first pages and falls back to PLAIN
//! when the dictionary page fills; and v1 pages all indexing a dictionary of 4,096
//! floats (quantised embeddings). Each path decodes the column on one thread.
//!
//!     cargo bench --bench decoders

use std::convert::Infallible;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{Array, RecordBatch};
use criterion::{Criterion, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::column::reader::ColumnReader;
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::reader::{FileReader, SerializedFileReader};
use reclag_parquet::{FastReader, Part, Source};

const ROWS: usize = 65_536;
const DIM: usize = 512;
const BATCH: usize = 4_096;

fn layouts() -> Vec<(&'static str, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/decoders");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = vec![];
    for (name, v2, dict, distinct) in [
        ("v1 PLAIN", false, false, None),
        ("v2 PLAIN", true, false, None),
        ("v1 dictionary, then PLAIN", false, true, None),
        (
            "v1 all dictionary-indexed (4,096 distinct floats)",
            false,
            true,
            Some(4096),
        ),
    ] {
        let path = dir.join(format!(
            "{}.parquet",
            name.replace([' ', ',', '(', ')'], "-")
        ));
        if !path.exists() {
            write(&path, v2, dict, distinct);
        }
        out.push((name, path));
    }
    out
}

fn write(path: &Path, v2: bool, dict: bool, distinct: Option<u64>) {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut b = FixedSizeListBuilder::new(Float32Builder::with_capacity(ROWS * DIM), DIM as i32);
    for _ in 0..ROWS {
        for _ in 0..DIM {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = match distinct {
                Some(k) => (rng % k) as f32 / k as f32 - 0.5,
                None => (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5,
            };
            b.values().append_value(v);
        }
        b.append(true);
    }
    let batch = RecordBatch::try_from_iter([("embedding", Arc::new(b.finish()) as _)]).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(dict)
        .set_writer_version(if v2 {
            WriterVersion::PARQUET_2_0
        } else {
            WriterVersion::PARQUET_1_0
        })
        .set_max_row_group_row_count(Some(ROWS))
        .build();
    let tmp = path.with_extension("tmp");
    let mut w =
        ArrowWriter::try_new(File::create(&tmp).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// The fast reader, one row group in flight: values in Arrow buffers.
fn hand_written(path: &Path) -> usize {
    let meta = ArrowReaderMetadata::load(&File::open(path).unwrap(), Default::default()).unwrap();
    let plan = reclag_parquet::plan(&meta, None).expect("a FixedSizeList<Float32> column");
    let reader: FastReader<Infallible> =
        FastReader::new(Source::Local(path.into()), meta, plan, None, BATCH).in_flight(1);
    reader
        .map(|p| match p.unwrap() {
            Part::Rows(b) => b.column(0).len(),
            Part::Fused(never) => match never {},
        })
        .sum()
}

/// parquet's `ColumnReaderImpl::read_records`: values and both levels into vectors,
/// then the levels checked as the fast path checks them (a row starts exactly at each
/// multiple of d; every value defined).
fn column_reader(path: &Path) -> usize {
    let file = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let rg = file.get_row_group(0).unwrap();
    let max_def = file
        .metadata()
        .file_metadata()
        .schema_descr()
        .column(0)
        .max_def_level();
    let ColumnReader::FloatColumnReader(mut r) = rg.get_column_reader(0).unwrap() else {
        panic!("a float leaf");
    };
    let (mut values, mut def, mut rep) = (
        Vec::with_capacity(ROWS * DIM),
        Vec::with_capacity(BATCH * DIM),
        Vec::with_capacity(BATCH * DIM),
    );
    let mut rows = 0;
    loop {
        def.clear();
        rep.clear();
        let at = values.len();
        let (records, n_values, n_levels) = r
            .read_records(BATCH, Some(&mut def), Some(&mut rep), &mut values)
            .unwrap();
        if records == 0 {
            break;
        }
        assert_eq!(n_values, n_levels, "no nulls");
        let dense = rep
            .iter()
            .enumerate()
            .all(|(i, &l)| l == i16::from((at + i) % DIM != 0))
            && def.iter().all(|&d| d == max_def);
        assert!(dense);
        rows += records;
    }
    std::hint::black_box(&values);
    rows
}

/// parquet's Arrow reader: the `FixedSizeList` column built from the levels.
fn arrow_reader(path: &Path) -> usize {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .with_batch_size(BATCH)
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum()
}

fn bench(c: &mut Criterion) {
    for (name, path) in layouts() {
        assert_eq!(hand_written(&path), ROWS);
        assert_eq!(column_reader(&path), ROWS);
        assert_eq!(arrow_reader(&path), ROWS);
        let mut g = c.benchmark_group(name);
        g.sample_size(10);
        g.bench_function("reclag-parquet (hand-written pages)", |b| {
            b.iter(|| hand_written(&path))
        });
        g.bench_function(
            "parquet ColumnReaderImpl::read_records + level check",
            |b| b.iter(|| column_reader(&path)),
        );
        g.bench_function("parquet Arrow reader (FixedSizeList built)", |b| {
            b.iter(|| arrow_reader(&path))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
