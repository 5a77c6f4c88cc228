//! Object-store outputs: one PUT for a small object, a multipart upload for a large
//! one, and on any failure (or when the output is dropped unfinished) the multipart
//! upload is aborted, so the store keeps no orphaned parts, which S3 bills for until a
//! lifecycle rule removes them. object_store's `BufWriter` does the same uploads but
//! cannot abort once completing failed: the failed `complete` consumes the upload.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::path::Path as ObjPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayloadMut, UploadPart};

/// Bytes per part, and the size from which an output becomes a multipart upload:
/// object_store's `BufWriter` default (S3 and GCS want parts of at least 5 MiB).
pub const PART_BYTES: usize = 10 << 20;

/// Parts uploading at once: a run's output streams at a few hundred MB/s at most, and
/// eight 10 MiB parts in flight keep a store with 50 ms latency busy at that rate.
const PARTS_IN_FLIGHT: usize = 8;

/// A parquet [`AsyncFileWriter`](parquet::arrow::async_writer::AsyncFileWriter) over
/// one object.
pub struct Upload {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    buf: PutPayloadMut,
    multipart: Option<Box<dyn MultipartUpload>>,
    parts: FuturesUnordered<UploadPart>,
    done: bool,
}

impl Upload {
    pub fn new(store: Arc<dyn ObjectStore>, key: ObjPath) -> Self {
        Upload {
            store,
            key,
            buf: PutPayloadMut::new(),
            multipart: None,
            parts: FuturesUnordered::new(),
            done: false,
        }
    }

    async fn push(&mut self, bytes: Bytes) -> object_store::Result<()> {
        self.buf.push(bytes);
        if self.buf.content_length() >= PART_BYTES {
            if self.multipart.is_none() {
                self.multipart = Some(self.store.put_multipart(&self.key).await?);
            }
            let part = std::mem::take(&mut self.buf).freeze();
            while self.parts.len() >= PARTS_IN_FLIGHT {
                if let Some(r) = self.parts.next().await {
                    r?;
                }
            }
            let mp = self.multipart.as_mut().expect("started above");
            self.parts.push(mp.put_part(part));
        }
        Ok(())
    }

    async fn finish(&mut self) -> object_store::Result<()> {
        let rest = std::mem::take(&mut self.buf).freeze();
        match self.multipart.as_mut() {
            None => {
                self.store.put(&self.key, rest).await?;
            }
            Some(mp) => {
                if rest.content_length() > 0 {
                    self.parts.push(mp.put_part(rest));
                }
                while let Some(r) = self.parts.next().await {
                    r?;
                }
                mp.complete().await?;
            }
        }
        self.done = true;
        Ok(())
    }

    /// Cancels what was uploaded; a no-op once finished or when nothing was started.
    /// An abort that fails is not reported: the write's own error is, and the store's
    /// lifecycle rules are the last resort.
    pub async fn abort(&mut self) {
        self.parts.clear();
        if let Some(mut mp) = self.multipart.take()
            && !self.done
        {
            let _ = mp.abort().await;
        }
        self.done = true;
    }
}

fn external(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_writer::AsyncFileWriter for Upload {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move { self.push(bs).await.map_err(external) })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move { self.finish().await.map_err(external) })
    }
}
