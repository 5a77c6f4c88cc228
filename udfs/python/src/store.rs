//! Model files on object stores: `reclag.load("s3://…")`, `Model.save("gs://…")` and
//! Polars expressions or SQL registrations that name a model by URL.
//!
//! The stores are object_store's, configured from the same variables the CLI reads
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`, through each builder's `from_env`), so a URL that
//! works with `reclag score --model` works here. The package does not depend on
//! `reclag-pipelines` for this: its Polars and DataFusion features would be unified
//! with the plugin's and recompile both engines for the wheel.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, path::Path as Key};
use url::Url;

/// Where a model file lives.
pub enum Location {
    /// An absolute local path.
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        key: Key,
        /// The URL as the user wrote it, for messages and for the Polars plugin.
        url: String,
    },
}

/// The schemes [`locate`] takes, for messages.
const SCHEMES: &str = "s3://, gs://, az:// (or abfs[s]://), or a local path";

/// Resolves `spec`: a local path (or `file://` URL) or an object-store URL.
pub fn locate(spec: &str) -> Result<Location, String> {
    if !spec.contains("://") || spec.starts_with("file://") {
        let p = PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec));
        return std::path::absolute(&p)
            .map(Location::Local)
            .map_err(|e| format!("{spec}: {e}"));
    }
    let url = Url::parse(spec).map_err(|e| format!("{spec}: not a URL ({e}); use {SCHEMES}"))?;
    let (scheme, key) = ObjectStoreScheme::parse(&url)
        .map_err(|e| format!("{spec}: not a model location ({e}); use {SCHEMES}"))?;
    let configure = |e: object_store::Error| {
        format!(
            "{spec}: cannot configure the store: {e} (set the AWS_*, GOOGLE_* or AZURE_* variables as for the CLI; see `reclag --help`)"
        )
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(spec)
                .build()
                .map_err(configure)?,
        ),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(spec)
                .build()
                .map_err(configure)?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(spec)
                .build()
                .map_err(configure)?,
        ),
        other => {
            return Err(format!(
                "{spec}: {other:?} URLs are not model locations; use {SCHEMES}"
            ));
        }
    };
    Ok(Location::Remote {
        store,
        key,
        url: spec.to_string(),
    })
}

/// Runs one store request to completion. Callers hold no GIL (see `Python::detach`);
/// each call gets a small runtime of its own, as a model is read once per load.
fn run<T>(
    fut: impl std::future::Future<Output = object_store::Result<T>>,
) -> Result<T, object_store::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| object_store::Error::Generic {
            store: "runtime",
            source: Box::new(e),
        })?;
    rt.block_on(fut)
}

/// What went wrong with `url`, and what to do about it.
fn explain(url: &str, doing: &str, e: object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => format!("model {url}: not found"),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => format!(
            "model {url}: {doing} was refused ({e}); check the credentials in the AWS_*, GOOGLE_* or AZURE_* variables"
        ),
        e => format!("model {url}: {doing} failed: {e}"),
    }
}

impl Location {
    /// The model file's contents as a model.
    pub fn load(&self) -> Result<reclag::Model, String> {
        match self {
            Location::Local(p) => reclag::format::load(p).map_err(|e| e.to_string()),
            Location::Remote { store, key, url } => {
                let bytes = run(async { store.get(key).await?.bytes().await })
                    .map_err(|e| explain(url, "reading", e))?;
                reclag::format::from_bytes(bytes, std::path::Path::new(url))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Writes `model` here: locally through the core's atomic save, to a store as one
    /// PUT, which the store publishes whole or not at all.
    pub fn save(&self, model: &reclag::Model) -> Result<(), String> {
        match self {
            Location::Local(p) => reclag::format::save(model, p).map_err(|e| e.to_string()),
            Location::Remote { store, key, url } => {
                let bytes = reclag::format::to_bytes(model).map_err(|e| e.to_string())?;
                run(async { store.put(key, PutPayload::from(bytes)).await })
                    .map(|_| ())
                    .map_err(|e| explain(url, "writing", e))
            }
        }
    }

    /// How the model's origin is shown and recorded: the absolute path or the URL.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Remote { url, .. } => url.clone(),
        }
    }
}
