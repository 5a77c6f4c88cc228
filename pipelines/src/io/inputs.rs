//! Inputs: files, prefixes and globs expanded to objects, opened and checked against
//! one schema before any row is read.

use std::path::Path;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::Schema;
use object_store::path::Path as ObjPath;

use crate::error::{Error, Result};
use crate::store::{Location, Stores};

use super::*;

/// Expands inputs into files: an object is taken as is, a prefix (directory)
/// contributes every `*.parquet` below it (sorted; names starting with `.` or `_`
/// skipped, as Spark and Hive writers use them for temporary files), and a key with
/// `*`, `?` or `[` is a glob (`**` crosses directories).
pub fn expand_inputs(stores: &Stores, inputs: &[String]) -> Result<Vec<Location>> {
    let mut out = Vec::new();
    for raw in inputs {
        if raw == STDIO {
            return Err(Error::Usage(
                "'-' (an Arrow IPC stream on stdin) must be the only input".into(),
            ));
        }
        let loc = stores.locate(raw)?;
        let key = loc.key.as_ref().to_string();
        if let Some(at) = key.find(['*', '?', '[']) {
            let prefix = key[..at].rfind('/').map_or("", |i| &key[..i]);
            let pattern = glob::Pattern::new(&key)
                .map_err(|e| Error::Usage(format!("input '{raw}' is not a valid glob: {e}")))?;
            let opts = glob::MatchOptions {
                require_literal_separator: true,
                ..Default::default()
            };
            let base = loc.child(ObjPath::from(prefix));
            let found: Vec<Location> = base
                .list()?
                .into_iter()
                .filter(|m| pattern.matches_with(m.location.as_ref(), opts))
                .map(|m| loc.child(m.location).with_size(m.size))
                .collect();
            if found.is_empty() {
                return Err(Error::NoInput {
                    input: raw.clone(),
                    message: format!("input '{raw}' matches no files"),
                });
            }
            out.extend(found);
        } else if let Some(meta) = loc.head()? {
            out.push(loc.with_size(meta.size));
        } else {
            let found = parquet_files_below(&loc)?;
            if found.is_empty() {
                return Err(Error::NoInput {
                    input: raw.clone(),
                    message: if loc.is_local() && !Path::new(raw).exists() {
                        format!(
                            "input '{raw}' does not exist (expected a Parquet file, a directory of them, or a glob like dir/*.parquet)"
                        )
                    } else if loc.is_local() {
                        format!("input directory '{raw}' contains no .parquet files")
                    } else {
                        format!(
                            "input '{raw}' does not exist: no object with that key and no .parquet objects below it"
                        )
                    },
                });
            }
            out.extend(found);
        }
    }
    Ok(out)
}

/// The `.parquet` objects below a directory or prefix, sorted, leaving out hidden ones
/// (a `.` or `_` name anywhere below it: `_SUCCESS`, `.tmp` files, `_state.json` dirs).
pub fn parquet_files_below(loc: &Location) -> Result<Vec<Location>> {
    let prefix = loc.key.as_ref().to_string();
    Ok(loc
        .list()?
        .into_iter()
        .filter(|m| {
            let rel = m.location.as_ref()[prefix.len()..].trim_start_matches('/');
            m.location.extension() == Some("parquet")
                && !rel.split('/').any(|c| c.starts_with(['.', '_']))
        })
        .map(|m| loc.child(m.location).with_size(m.size))
        .collect())
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
/// reported before any row is processed. `-` alone reads an Arrow IPC stream on stdin.
pub fn open_all(stores: &Stores, inputs: &[String]) -> Result<Vec<ParquetFile>> {
    if inputs.len() == 1 && inputs[0] == STDIO {
        return Ok(vec![ParquetFile::stdin(stores)?]);
    }
    let files: Vec<ParquetFile> = expand_inputs(stores, inputs)?
        .iter()
        .map(ParquetFile::open)
        .collect::<Result<_>>()?;
    let schemas: Vec<(&Path, &Schema)> = files
        .iter()
        .map(|f| (f.path.as_path(), f.schema.as_ref()))
        .collect();
    check_schemas(&schemas)?;
    Ok(files)
}

/// One schema rule for every multi-file input: each file has the first file's columns
/// with their types, and no others (checked both ways, so the rule does not depend on
/// the files' order).
pub fn check_schemas(files: &[(&Path, &Schema)]) -> Result<()> {
    if let Some(&(first_path, first_schema)) = files.first() {
        for &(path, schema) in &files[1..] {
            let mismatch = |columns: Vec<String>, detail: String| Error::SchemaMismatch {
                file: path.to_path_buf(),
                columns,
                detail,
            };
            for field in first_schema.fields() {
                match schema.field_with_name(field.name()) {
                    Ok(other) if other.data_type() == field.data_type() => {}
                    Ok(other) => {
                        return Err(mismatch(
                            vec![field.name().clone()],
                            format!(
                                "column '{}' has type {}, but {} has {}; all inputs must share one schema",
                                field.name(),
                                other.data_type(),
                                first_path.display(),
                                field.data_type()
                            ),
                        ));
                    }
                    Err(_) => {
                        return Err(mismatch(
                            vec![field.name().clone()],
                            format!(
                                "column '{}' (present in {}) is missing; all inputs must share one schema",
                                field.name(),
                                first_path.display()
                            ),
                        ));
                    }
                }
            }
            // Columns only a later file has would be dropped without a word (the
            // output schema is the first file's); the check above catches the
            // other order, so the rule does not depend on which file comes first.
            let extra: Vec<String> = schema
                .fields()
                .iter()
                .filter(|x| first_schema.field_with_name(x.name()).is_err())
                .map(|x| x.name().clone())
                .collect();
            if !extra.is_empty() {
                let named: Vec<String> = extra.iter().map(|c| format!("'{c}'")).collect();
                let detail = format!(
                    "column(s) {} are not in {}; all inputs must share one schema \
                     (score the files separately, or use `reclag sql`, which fills a \
                     column a file lacks with nulls)",
                    named.join(", "),
                    first_path.display()
                );
                return Err(mismatch(extra, detail));
            }
        }
    }
    Ok(())
}
