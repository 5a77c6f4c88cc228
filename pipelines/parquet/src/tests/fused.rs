//! Fused consumers: the rows they are handed, in place or copied, are the rows
//! written, and the reader opens no more row groups at once than it is told to.

use std::sync::Arc;

use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::file::properties::WriterProperties;
use proptest::prelude::*;

use super::{Case, meta, write};
use crate::test_rng::Rng;
use crate::*;

/// A fused consumer that keeps the rows it is handed, and how they came.
#[derive(Clone)]
struct Keep {
    dim: usize,
    kept: Arc<std::sync::Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    values: Vec<f32>,
    copied: usize,
    in_place: usize,
}

impl Fused for Keep {
    type Output = ();
    fn column(&self) -> &str {
        "embedding"
    }
    fn start(&self, _: &[RecordBatch]) -> Option<Box<dyn FusedGroup<Output = ()>>> {
        Some(Box::new(self.clone()))
    }
}

impl FusedGroup for Keep {
    type Output = ();
    fn rows(&mut self, values: &[f32]) {
        let mut k = self.kept.lock().unwrap();
        k.values.extend_from_slice(values);
        k.copied += values.len() / self.dim;
    }
    fn rows_at(&mut self, buf: &[u8], at: &[usize]) {
        let mut k = self.kept.lock().unwrap();
        for &s in at {
            let row = &buf[s..s + 4 * self.dim];
            k.values.extend(
                row.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
            );
        }
        k.in_place += at.len();
    }
    fn finish(self: Box<Self>, _: Vec<RecordBatch>) -> crate::Result<Vec<()>> {
        Ok(vec![])
    }
}

/// `rows` rows of `dim` random floats (incompressible), except that with
/// `every = Some(k)` the first fifth of every `k` rows is a short repeating pattern
/// (snappy copies).
fn embeddings(rng: &mut Rng, rows: usize, dim: usize, every: Option<usize>) -> Vec<f32> {
    (0..rows * dim)
        .map(|i| match every {
            Some(k) if (i / dim) % k < k.div_ceil(5) => (i % 3) as f32,
            _ => rng.next_f64() as f32 - 0.5,
        })
        .collect()
}

/// `values` (rows of `dim`) written as a snappy v1 file with `page_rows`-row pages,
/// then streamed to a fused consumer: the rows it got, and how many came copied and
/// how many in place.
fn fused(values: &[f32], dim: usize, page_rows: usize) -> (Vec<f32>, usize, usize) {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let list = FixedSizeListArray::new(
        item,
        dim as i32,
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    );
    let schema = Arc::new(arrow_schema::Schema::new(vec![Field::new(
        "embedding",
        list.data_type().clone(),
        true,
    )]));
    let b = RecordBatch::try_new(schema, vec![Arc::new(list)]).unwrap();
    // One row group: row groups are decoded concurrently, and this consumer
    // keeps one sequence.
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(None)
        .set_data_page_row_count_limit(page_rows)
        .set_write_batch_size(page_rows)
        .set_data_page_size_limit(1 << 30)
        .set_dictionary_enabled(false)
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut w = ArrowWriter::try_new(f.reopen().unwrap(), b.schema(), Some(props)).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    let keep = Keep {
        dim,
        kept: Arc::default(),
    };
    let m = meta(&f);
    let plan = plan(&m, None).unwrap().with_fused(Arc::new(keep.clone()));
    let source = Source::Local(f.path().to_path_buf());
    for b in FastReader::new(source, m, plan, None, 1000) {
        b.unwrap();
    }
    let k = std::mem::take(&mut *keep.kept.lock().unwrap());
    (k.values, k.copied, k.in_place)
}

/// Incompressible pages are read inside the snappy block, rows cut by a literal's
/// edge included; pages whose values are partly copies, or rows longer than a
/// literal, are written out first. Every way, the rows are the written ones.
#[test]
fn snappy_pages_are_read_in_place_where_they_can_be() {
    let mut rng = Rng::new(4);
    // (dim, rows, page rows, k: the first fifth of every k rows compresses, expected).
    for (dim, rows, page_rows, every, want) in [
        (100usize, 2500usize, 400usize, None::<usize>, Placed::All),
        (7, 3000, 3000, None, Placed::All),
        (512, 300, 128, None, Placed::All),
        (100, 2500, 400, Some(50), Placed::Some),
        (100, 2500, 400, Some(2), Placed::None),
        // A row longer than two literals.
        (40_000, 6, 3, None, Placed::None),
    ] {
        let values = embeddings(&mut rng, rows, dim, every);
        let (got, copied, placed) = fused(&values, dim, page_rows);
        assert!(got == values, "dim {dim}: rows differ");
        assert_eq!(copied + placed, rows);
        let pages = rows.div_ceil(page_rows);
        let what = format!("dim {dim}, every {every:?}: {placed} in place, {copied} copied");
        match want {
            // Only rows cut by a page edge or in a short last literal are copied.
            Placed::All => assert!(copied <= 2 * pages, "{what}"),
            Placed::Some => assert!(placed > rows / 2 && copied > 2 * pages, "{what}"),
            Placed::None => assert_eq!(placed, 0, "{what}"),
        }
    }
}

enum Placed {
    All,
    Some,
    None,
}

/// Counts the row groups a consumer has open at once.
#[derive(Clone, Default)]
struct Concurrency {
    open: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
}

struct Open(Concurrency, usize);

impl Fused for Concurrency {
    type Output = usize;
    fn column(&self) -> &str {
        "embedding"
    }
    fn start(&self, others: &[RecordBatch]) -> Option<Box<dyn FusedGroup<Output = usize>>> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.open.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        // Long enough for every decoder the reader allows to be inside at once.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let rows = others.iter().map(RecordBatch::num_rows).sum();
        Some(Box::new(Open(self.clone(), rows)))
    }
}

impl FusedGroup for Open {
    type Output = usize;
    fn rows(&mut self, _: &[f32]) {}
    fn rows_at(&mut self, _: &[u8], _: &[usize]) {}
    fn finish(self: Box<Self>, _: Vec<RecordBatch>) -> crate::Result<Vec<usize>> {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        Ok(vec![self.1])
    }
}

/// The number of row groups decoding at once is the reader's setting, never more, and
/// the rows come back the same whatever it is.
#[test]
fn row_groups_in_flight_follow_the_setting() {
    let case = Case::plain(2_400, 8, 200, 50);
    let (f, want) = write(&case);
    for n in [1usize, 2, 3, 5] {
        let count = Concurrency::default();
        let m = meta(&f);
        let plan = plan(&m, None)
            .unwrap()
            .with_fused(Arc::new(count.clone()) as Arc<dyn Fused<Output = usize>>);
        let source = Source::Local(f.path().to_path_buf());
        let reader = FastReader::new(source, m.clone(), plan, None, 64).in_flight(n);
        assert_eq!(reader.row_groups_in_flight(), n);
        let rows: usize = reader
            .map(|p| match p.unwrap() {
                Part::Fused(rows) => rows,
                Part::Rows(_) => panic!("every row group is consumed"),
            })
            .sum();
        assert_eq!(rows, 2_400);
        let most = count.most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= n, "{most} row groups open with {n} in flight");
        assert!(most >= 1);
        let plain = FastReader::new(
            Source::Local(f.path().to_path_buf()),
            m.clone(),
            plan_for(&m),
            None,
            64,
        )
        .in_flight(n)
        .map(|b| b.unwrap().into_rows());
        let got: Vec<RecordBatch> = plain.collect();
        let got = arrow_select::concat::concat_batches(&want.schema(), &got).unwrap();
        assert_eq!(got, want, "{n} in flight");
    }
}

fn plan_for(m: &ArrowReaderMetadata) -> Plan {
    plan(m, None).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any page layout, compressible or not, reaches a fused consumer as the rows
    /// written, whether they were read in place, written out, or both.
    #[test]
    fn fused_pages_deliver_the_rows_written(
        dim in 1usize..300,
        rows in 1usize..1500,
        page_rows in 1usize..400,
        every in proptest::option::of(2usize..40),
        seed in 0u64..1000,
    ) {
        let mut rng = Rng::new(seed);
        let values = embeddings(&mut rng, rows, dim, every);
        let (got, copied, placed) = fused(&values, dim, page_rows);
        prop_assert_eq!(copied + placed, rows);
        prop_assert!(got == values);
    }
}

/// By default one row group per core, within the byte budget and never below two;
/// a setting is taken as given.
#[test]
fn row_groups_in_flight_follow_cores_within_the_budget() {
    use crate::reader::in_flight_within;
    let mib = 1u64 << 20;
    // 64 cores: as many as fit in the budget.
    assert_eq!(in_flight_within(64, 4 * mib), 64);
    assert_eq!(in_flight_within(64, 128 * mib), 8);
    assert_eq!(in_flight_within(64, 256 * mib), 4);
    assert_eq!(in_flight_within(64, 4 * IN_FLIGHT_BYTES), 2);
    // Few cores: one per core, but two at least.
    assert_eq!(in_flight_within(4, 4 * mib), 4);
    assert_eq!(in_flight_within(1, 4 * mib), 2);
    assert_eq!(in_flight_within(2, 0), 2);
    // A reader takes its row groups' size into account, and a setting as given.
    let case = Case::plain(1_000, 8, 250, 50);
    let (f, _) = write(&case);
    let m = meta(&f);
    let largest = plan_for(&m).row_group_bytes(&m, 0);
    let reader = FastReader::new(
        Source::Local(f.path().into()),
        m.clone(),
        plan_for(&m),
        None,
        64,
    );
    assert_eq!(reader.row_groups_in_flight(), default_in_flight(largest));
    let set = FastReader::new(
        Source::Local(f.path().into()),
        m.clone(),
        plan_for(&m),
        None,
        64,
    )
    .in_flight(12);
    assert_eq!(set.row_groups_in_flight(), 12);
}
