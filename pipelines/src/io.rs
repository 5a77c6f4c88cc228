//! Local Parquet IO: input expansion, schema checks that fail before any row is read,
//! streaming record batches, and atomic output files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

pub const BATCH_ROWS: usize = 16 * 1024;

/// Expands inputs: a file is taken as is, a directory contributes every `*.parquet`
/// below it (sorted, hidden files skipped), and a `*` in the last path component is a
/// glob within that directory.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for raw in inputs {
        let p = PathBuf::from(raw);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.contains('*') {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut found: Vec<PathBuf> = read_dir(dir)?
                .into_iter()
                .filter(|f| {
                    f.is_file()
                        && glob_match(&name, &f.file_name().unwrap_or_default().to_string_lossy())
                })
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Usage(format!("input '{raw}' matches no files")));
            }
            out.extend(found);
        } else if p.is_dir() {
            let mut found = Vec::new();
            walk(&p, &mut found)?;
            found.sort();
            if found.is_empty() {
                return Err(Error::Usage(format!(
                    "input directory '{raw}' contains no .parquet files"
                )));
            }
            out.extend(found);
        } else if p.is_file() {
            out.push(p);
        } else {
            return Err(Error::Usage(format!(
                "input '{raw}' does not exist (expected a Parquet file, a directory of them, or a glob like dir/*.parquet)"
            )));
        }
    }
    Ok(out)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        context: format!("listing {}", dir.display()),
        source,
    })?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in read_dir(dir)? {
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(['.', '_']));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "parquet") {
            out.push(p);
        }
    }
    Ok(())
}

fn glob_match(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(part) {
                return false;
            }
            rest = &rest[part.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

/// A Parquet file opened for streaming, with its Arrow schema and row count known.
pub struct ParquetFile {
    pub path: PathBuf,
    pub schema: SchemaRef,
    pub rows: u64,
    builder: ParquetRecordBatchReaderBuilder<File>,
}

impl ParquetFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|source| Error::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
        let builder = guard(path, || {
            ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| Error::Parquet {
                path: path.to_path_buf(),
                source,
            })
        })?;
        let schema = builder.schema().clone();
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        Ok(ParquetFile {
            path: path.to_path_buf(),
            schema,
            rows,
            builder,
        })
    }

    /// The index of `column`, or an error listing the columns that do exist.
    pub fn column_index(&self, column: &str) -> Result<usize> {
        column_index(&self.schema, column).map_err(Error::in_file(&self.path))
    }

    /// Streams batches of only the named columns (in file order).
    pub fn read(self, columns: Option<&[usize]>) -> Result<Batches> {
        let path = self.path;
        let builder = self.builder;
        let inner = guard(&path, || {
            let mut b = builder.with_batch_size(BATCH_ROWS);
            if let Some(cols) = columns {
                let mask = ProjectionMask::roots(b.parquet_schema(), cols.iter().copied());
                b = b.with_projection(mask);
            }
            b.build().map_err(|source| Error::Parquet {
                path: path.clone(),
                source,
            })
        })?;
        Ok(Batches { inner, path })
    }
}

/// Record batches of one file. Decoding errors and decoder panics on corrupt pages
/// both come out as errors naming the file.
pub struct Batches {
    inner: ParquetRecordBatchReader,
    path: PathBuf,
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = &self.path;
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.next())) {
            Ok(None) => None,
            Ok(Some(r)) => Some(r.map_err(|source| Error::Arrow {
                path: path.clone(),
                source,
            })),
            Err(_) => Some(Err(corrupt(
                path,
                "a data page could not be decoded".into(),
            ))),
        }
    }
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Usage(format!(
        "{}: corrupt Parquet file ({detail}); re-export or restore it",
        path.display()
    ))
}

fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    reclag::format::guard_decode(|msg| corrupt(path, msg), f)
}

pub fn column_index(schema: &Schema, column: &str) -> Result<usize, reclag::Error> {
    schema
        .index_of(column)
        .map_err(|_| reclag::Error::MissingColumn {
            column: column.into(),
            available: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })
}

/// The array of `column` in a batch (the schema was checked when the file was opened).
pub fn batch_column<'b>(batch: &'b RecordBatch, column: &str, path: &Path) -> Result<&'b ArrayRef> {
    let i = column_index(batch.schema_ref(), column).map_err(Error::in_file(path))?;
    Ok(batch.column(i))
}

/// Opens every input and checks they share the first file's schema, so a mismatch is
/// reported before any row is processed.
pub fn open_all(paths: &[PathBuf]) -> Result<Vec<ParquetFile>> {
    let files: Vec<ParquetFile> = paths
        .iter()
        .map(|p| ParquetFile::open(p))
        .collect::<Result<_>>()?;
    if let Some(first) = files.first() {
        for f in &files[1..] {
            for field in first.schema.fields() {
                match f.schema.field_with_name(field.name()) {
                    Ok(other) if other.data_type() == field.data_type() => {}
                    Ok(other) => {
                        return Err(Error::Usage(format!(
                            "{}: column '{}' has type {}, but {} has {}; all inputs must share one schema",
                            f.path.display(),
                            field.name(),
                            other.data_type(),
                            first.path.display(),
                            field.data_type()
                        )));
                    }
                    Err(_) => {
                        return Err(Error::Usage(format!(
                            "{}: column '{}' (present in {}) is missing; all inputs must share one schema",
                            f.path.display(),
                            field.name(),
                            first.path.display()
                        )));
                    }
                }
            }
        }
    }
    Ok(files)
}

/// A Parquet file written under a temporary sibling name and renamed into place by
/// [`AtomicParquet::finish`]. Dropped unfinished (an error, a panic, Ctrl-C unwinding),
/// it removes the temporary file, so a reader never sees a partial output.
pub struct AtomicParquet {
    tmp: PathBuf,
    target: PathBuf,
    writer: Option<ArrowWriter<File>>,
}

impl AtomicParquet {
    pub fn create(target: &Path, schema: SchemaRef) -> Result<Self> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "output directory {} does not exist; create it first",
                dir.display()
            )));
        }
        let tmp = reclag::format::temp_sibling(target);
        let f = File::create(&tmp).map_err(|source| Error::Io {
            context: format!("creating {}", tmp.display()),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .build();
        let writer =
            ArrowWriter::try_new(f, schema, Some(props)).map_err(|source| Error::Parquet {
                path: tmp.clone(),
                source,
            })?;
        Ok(AtomicParquet {
            tmp,
            target: target.to_path_buf(),
            writer: Some(writer),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let w = self.writer.as_mut().expect("not finished");
        w.write(batch).map_err(|source| Error::Parquet {
            path: self.tmp.clone(),
            source,
        })
    }

    pub fn finish(mut self) -> Result<()> {
        let w = self.writer.take().expect("not finished");
        let f = w.into_inner().map_err(|source| Error::Parquet {
            path: self.tmp.clone(),
            source,
        })?;
        f.sync_all().map_err(|source| Error::Io {
            context: format!("syncing {}", self.tmp.display()),
            source,
        })?;
        std::fs::rename(&self.tmp, &self.target).map_err(|source| Error::Io {
            context: format!(
                "renaming {} to {}",
                self.tmp.display(),
                self.target.display()
            ),
            source,
        })
    }
}

impl Drop for AtomicParquet {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The output schema: the kept input columns followed by `extra`.
pub fn schema_with(base: &Schema, keep: &[usize], extra: Vec<arrow_schema::Field>) -> SchemaRef {
    let mut fields: Vec<arrow_schema::FieldRef> =
        keep.iter().map(|&i| base.fields()[i].clone()).collect();
    fields.extend(extra.into_iter().map(Arc::new));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.parquet", "a.parquet"));
        assert!(glob_match("part-*.parquet", "part-001.parquet"));
        assert!(!glob_match("part-*.parquet", "x-001.parquet"));
        assert!(!glob_match("*.parquet", "a.parquet.tmp"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
    }
}
