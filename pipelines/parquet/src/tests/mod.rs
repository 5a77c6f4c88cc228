//! The reader as a whole: every layout a writer produces reads back as written, through
//! the fast path or the fallback, from local files and from fetched ranges, into
//! batches or into a fused consumer.

use std::sync::Arc;

use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::basic::Encoding;
use parquet::column::page::Page;
use parquet::file::reader::ChunkReader;

use crate::dictionary::Dictionary;
use crate::fetch::{FetchedChunks, fetch};
use crate::row_group::decode_list;
use crate::*;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{WriterProperties, WriterVersion};
use proptest::prelude::*;

mod fused;

/// Rows of `dim` floats; every `null_every`-th row null when set.
fn batch(rows: usize, dim: usize, item_nullable: bool, null_every: Option<usize>) -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Float32, item_nullable));
    let values = Float32Array::from_iter_values((0..rows * dim).map(|i| i as f32 * 0.5 - 3.0));
    let nulls = null_every.map(|k| (0..rows).map(|r| r % k != 1).collect::<Vec<_>>().into());
    let list = FixedSizeListArray::new(item.clone(), dim as i32, Arc::new(values), nulls);
    let id = arrow_array::Int64Array::from_iter_values(0..rows as i64);
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("embedding", list.data_type().clone(), true),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(id), Arc::new(list)]).unwrap()
}

struct Case {
    rows: usize,
    dim: usize,
    rg: usize,
    page_rows: usize,
    v2: bool,
    dict: bool,
    snappy: bool,
    item_nullable: bool,
    null_every: Option<usize>,
}

impl Case {
    /// `rows` rows of `dim` floats in row groups of `rg` and pages of `page_rows`: v1,
    /// PLAIN, uncompressed, no nulls anywhere.
    fn plain(rows: usize, dim: usize, rg: usize, page_rows: usize) -> Case {
        Case {
            rows,
            dim,
            rg,
            page_rows,
            v2: false,
            dict: false,
            snappy: false,
            item_nullable: false,
            null_every: None,
        }
    }
}

fn write(case: &Case) -> (tempfile::NamedTempFile, RecordBatch) {
    let b = batch(case.rows, case.dim, case.item_nullable, case.null_every);
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(case.rg))
        .set_data_page_row_count_limit(case.page_rows)
        .set_write_batch_size(case.page_rows.max(1))
        .set_dictionary_enabled(case.dict)
        .set_writer_version(if case.v2 {
            WriterVersion::PARQUET_2_0
        } else {
            WriterVersion::PARQUET_1_0
        })
        .set_compression(if case.snappy {
            parquet::basic::Compression::SNAPPY
        } else {
            parquet::basic::Compression::UNCOMPRESSED
        })
        .build();
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut w = ArrowWriter::try_new(f.reopen().unwrap(), b.schema(), Some(props)).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    (f, b)
}

fn meta(f: &tempfile::NamedTempFile) -> ArrowReaderMetadata {
    ArrowReaderMetadata::load(&f.reopen().unwrap(), Default::default()).unwrap()
}

/// What the fast reader returns, concatenated, and whether every row group took
/// the fast path.
fn fast(f: &tempfile::NamedTempFile, batch_rows: usize) -> (RecordBatch, bool) {
    let m = meta(f);
    let plan = plan(&m, None).expect("a FixedSizeList<Float32> column");
    let l = plan.lists[0].clone();
    let file = Arc::new(f.reopen().unwrap());
    let all_fast = (0..m.metadata().num_row_groups()).all(|rg| {
        let md = m.metadata().row_group(rg);
        let (rows, per) = (md.num_rows() as usize, batch_rows * l.dim);
        decode_list(&file, md.column(l.leaf), rows, &l, per, &Arc::default())
            .unwrap()
            .is_some()
    });
    let schema = plan.projected.clone();
    let batches: Vec<RecordBatch> = FastReader::new(
        Source::Local(f.path().to_path_buf()),
        m,
        plan,
        None,
        batch_rows,
    )
    .map(|b| b.unwrap().into_rows())
    .collect();
    assert!(batches.iter().all(|b| b.num_rows() <= batch_rows));
    (
        arrow_select::concat::concat_batches(&schema, &batches).unwrap(),
        all_fast,
    )
}

#[test]
fn dense_plain_lists_take_the_fast_path_and_equal_the_written_rows() {
    for (v2, snappy, item_nullable) in [
        (false, true, true),
        (true, false, false),
        (true, true, true),
    ] {
        let case = Case {
            v2,
            snappy,
            item_nullable,
            ..Case::plain(2_000, 24, 700, 100)
        };
        let (f, want) = write(&case);
        let (got, all_fast) = fast(&f, 256);
        assert!(all_fast, "v2={v2} snappy={snappy}");
        assert_eq!(got, want);
    }
}

/// A row group is cut into equal batches: with a short tail batch per row group,
/// DataFusion's repartition copied every later row (see `even_batches`).
#[test]
fn row_groups_are_cut_into_equal_batches() {
    let (f, want) = write(&Case::plain(2_000, 8, 1_000, 100));
    for (most, expect) in [
        (300, vec![250; 8]),
        (999, vec![500; 4]),
        (1_000, vec![1_000; 2]),
        (5_000, vec![1_000; 2]),
    ] {
        let m = meta(&f);
        let plan = plan(&m, None).unwrap();
        let sizes: Vec<usize> =
            FastReader::new(Source::Local(f.path().to_path_buf()), m, plan, None, most)
                .map(|b| b.unwrap().into_rows().num_rows())
                .collect();
        assert_eq!(sizes, expect, "at most {most} rows a batch");
    }
    assert_eq!(fast(&f, 300).0, want);
    // The fixture of BENCHMARKS.md: 64Ki-row groups, 16,288 rows within 32 MiB.
    assert_eq!(crate::row_group::even_batches(65_536, 16_288), 13_108);
    assert_eq!(crate::row_group::even_batches(65_536, 16_384), 16_384);
    assert_eq!(crate::row_group::even_batches(1_001, 300), 251);
    assert_eq!(crate::row_group::even_batches(0, 300), 1);
}

/// A short last row group starts second; the batches still come in file order
/// (checked by every test that compares the rows read with the rows written).
#[test]
fn a_short_last_row_group_starts_second() {
    let case = |rows, rg| Case::plain(rows, 4, rg, 50);
    for (rows, rg, want) in [
        (2_000, 500, vec![0, 1, 2, 3]),
        (1_900, 500, vec![0, 3, 1, 2]),
        (900, 500, vec![0, 1]),
    ] {
        let (f, written) = write(&case(rows, rg));
        let m = meta(&f);
        let n = m.metadata().num_row_groups();
        let r = FastReader::new(
            Source::Local(f.path().to_path_buf()),
            m,
            plan(&meta(&f), None).unwrap(),
            None,
            128,
        );
        let started: Vec<usize> = r.start.iter().map(|u| u.1).collect();
        assert_eq!(started, want, "{rows} rows");
        assert_eq!(r.pending.len(), n);
        let (got, _) = fast(&f, 128);
        assert_eq!(got, written);
    }
}

/// Chunks whose first pages index a dictionary (the writers' default, until the
/// dictionary outgrows its page and they fall back to PLAIN) take the fast path
/// and read back as written: all pages indexed, a fallback after a few pages, v1
/// and v2 pages, snappy or not, and a one-entry dictionary (zero-bit indices).
#[test]
fn dictionary_pages_take_the_fast_path_with_the_same_rows() {
    let (rows, dim) = (1_000, 8);
    let distinct = batch(rows, dim, true, None);
    let constant = {
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let values = Float32Array::from_iter_values((0..rows * dim).map(|_| 1.25));
        let list = FixedSizeListArray::new(item, dim as i32, Arc::new(values), None);
        RecordBatch::try_new(
            distinct.schema(),
            vec![distinct.column(0).clone(), Arc::new(list)],
        )
        .unwrap()
    };
    for (name, b, dict_limit) in [
        ("all indexed", &distinct, 1 << 20),
        ("fallback to PLAIN", &distinct, 1 << 10),
        ("one entry", &constant, 1 << 20),
    ] {
        for (v2, snappy) in [(false, true), (false, false), (true, true)] {
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(300))
                .set_data_page_row_count_limit(64)
                .set_write_batch_size(64)
                .set_dictionary_enabled(true)
                .set_dictionary_page_size_limit(dict_limit)
                .set_writer_version(if v2 {
                    WriterVersion::PARQUET_2_0
                } else {
                    WriterVersion::PARQUET_1_0
                })
                .set_compression(if snappy {
                    parquet::basic::Compression::SNAPPY
                } else {
                    parquet::basic::Compression::UNCOMPRESSED
                })
                .build();
            let f = tempfile::NamedTempFile::new().unwrap();
            let mut w = ArrowWriter::try_new(f.reopen().unwrap(), b.schema(), Some(props)).unwrap();
            w.write(b).unwrap();
            w.close().unwrap();
            let m = meta(&f);
            let chunk = m.metadata().row_group(0).column(1);
            assert!(
                chunk.dictionary_page_offset().is_some(),
                "{name}: a dictionary"
            );
            // Data pages written PLAIN exist only after a fallback.
            let encodings: Vec<Encoding> = {
                use parquet::file::reader::FileReader;
                let r = parquet::file::serialized_reader::SerializedFileReader::new(
                    f.reopen().unwrap(),
                )
                .unwrap();
                let pages = r
                    .get_row_group(0)
                    .unwrap()
                    .get_column_page_reader(1)
                    .unwrap();
                pages
                    .map(|p| p.unwrap())
                    .filter(|p| !matches!(p, Page::DictionaryPage { .. }))
                    .map(|p| p.encoding())
                    .collect()
            };
            assert!(Dictionary::indexes(encodings[0]), "{name}: {encodings:?}");
            let plain_data = encodings.contains(&Encoding::PLAIN);
            assert_eq!(
                plain_data,
                name == "fallback to PLAIN",
                "{name}: {encodings:?}"
            );
            let (got, all_fast) = fast(&f, 128);
            assert!(all_fast, "{name} v2={v2} snappy={snappy}");
            assert_eq!(&got, b, "{name} v2={v2} snappy={snappy}");
        }
    }
}

#[test]
fn nulls_fall_back_to_the_general_reader_with_the_same_rows() {
    for dict in [true, false] {
        let case = Case {
            dict,
            snappy: true,
            item_nullable: true,
            null_every: Some(7),
            ..Case::plain(1_000, 8, 300, 64)
        };
        let (f, want) = write(&case);
        let (got, all_fast) = fast(&f, 128);
        assert!(!all_fast, "dict={dict}: nulls must not take the fast path");
        assert_eq!(got, want);
        assert_eq!(got.column(1).null_count(), want.column(1).null_count());
    }
}

/// Bytes of a file in memory, served by range as a store would, counting requests.
struct InMemory {
    bytes: bytes::Bytes,
    calls: std::sync::atomic::AtomicUsize,
}

impl FetchRanges for InMemory {
    fn fetch(&self, ranges: &[std::ops::Range<u64>]) -> crate::Result<Vec<bytes::Bytes>> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(ranges
            .iter()
            .map(|r| self.bytes.slice(r.start as usize..r.end as usize))
            .collect())
    }
}

/// A remote file read through fetched ranges: only the projected chunks of each row
/// group are fetched, the list pages take the fast path from memory, and the rows
/// equal what was written, for every projection.
#[test]
fn objects_take_the_fast_path_from_fetched_ranges() {
    let case = Case {
        snappy: true,
        item_nullable: true,
        ..Case::plain(1_500, 12, 400, 64)
    };
    let (f, want) = write(&case);
    let store = Arc::new(InMemory {
        bytes: std::fs::read(f.path()).unwrap().into(),
        calls: Default::default(),
    });
    let m = meta(&f);
    for columns in [None, Some(&[1usize][..]), Some(&[1usize, 0][..])] {
        let plan = plan(&m, columns).unwrap();
        let l = plan.lists[0].clone();
        for rg in 0..m.metadata().num_row_groups() {
            let sparse = fetch(store.as_ref(), &m, &plan, rg).unwrap();
            let md = m.metadata().row_group(rg);
            let fetched: usize = sparse.parts.iter().map(|(_, b)| b.len()).sum();
            let needed: u64 = plan
                .roots
                .iter()
                .map(|&r| md.column(r).byte_range().1)
                .sum();
            assert_eq!(fetched as u64, needed, "only the projected chunks");
            let values = decode_list(
                &Arc::new(sparse),
                md.column(l.leaf),
                md.num_rows() as usize,
                &l,
                100 * l.dim,
                &Arc::default(),
            )
            .unwrap();
            assert!(values.is_some(), "row group {rg} takes the fast path");
        }
        let schema = plan.projected.clone();
        let source = Source::Ranges(store.clone());
        let got: Vec<RecordBatch> = FastReader::new(source, m.clone(), plan, None, 100)
            .map(|b| b.unwrap().into_rows())
            .collect();
        let got = arrow_select::concat::concat_batches(&schema, &got).unwrap();
        let idx: Vec<usize> = match columns {
            None => vec![0, 1],
            Some(c) => {
                let mut c = c.to_vec();
                c.sort_unstable();
                c
            }
        };
        assert_eq!(got, want.project(&idx).unwrap(), "columns {columns:?}");
    }
    // A range the metadata does not cover is an error, not a panic or a guess.
    let sparse = FetchedChunks {
        parts: vec![(4, bytes::Bytes::from_static(b"abcd"))],
        len: 8,
    };
    assert!(sparse.get_bytes(6, 4).is_err());
    assert!(sparse.get_read(2).is_err());
    assert_eq!(&sparse.get_bytes(5, 2).unwrap()[..], b"bc");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any shape the writer produces reads back as written, through the fast path
    /// or the fallback.
    #[test]
    fn any_layout_reads_back_as_written(
        rows in 0usize..600,
        dim in 1usize..40,
        rg in 1usize..300,
        page_rows in 1usize..80,
        v2 in any::<bool>(),
        dict in any::<bool>(),
        snappy in any::<bool>(),
        item_nullable in any::<bool>(),
        nulls in proptest::option::of(2usize..9),
        batch_rows in 1usize..200,
    ) {
        let case = Case { rows, dim, rg, page_rows, v2, dict, snappy, item_nullable, null_every: nulls };
        let (f, want) = write(&case);
        let (got, _) = fast(&f, batch_rows);
        prop_assert_eq!(got, want);
    }

    /// Corrupt bytes anywhere give an error or a fallback, never a panic or rows
    /// that differ silently in count.
    #[test]
    fn corrupt_pages_never_panic(at in 0.0f64..1.0, byte in any::<u8>(), dict in any::<bool>()) {
        let case = Case { dict, item_nullable: true, ..Case::plain(300, 16, 100, 50) };
        let (f, _) = write(&case);
        let mut bytes = std::fs::read(f.path()).unwrap();
        let n = bytes.len();
        let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        let pos = 4 + ((n - 12 - footer) as f64 * at) as usize;
        bytes[pos] = byte;
        std::fs::write(f.path(), &bytes).unwrap();
        let m = meta(&f);
        let plan = plan(&m, None).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            FastReader::new(Source::Local(f.path().to_path_buf()), m, plan, None, 64).try_fold(0usize, |acc, b| b.map(|b| acc + b.into_rows().num_rows()))
        }));
        let r = r.expect("no panic escapes the reader");
        if let Ok(rows) = r {
            prop_assert_eq!(rows, 300);
        }
    }
}
