//! Where tables and models live: local paths and `file://`, `s3://`, `gs://` and
//! `az://` URLs behind one [`Location`] type, so every command reads and writes
//! anywhere through the same code.
//!
//! Store configuration comes from an injected [`StoreEnv`] (a snapshot of the
//! environment) rather than from `std::env` directly: tests and embedding programs can
//! point a job at a server without mutating the process environment.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::error::{Error, Result};

/// The environment variables object stores are configured from, named in `--help`.
pub const ENV_HELP: &str = "\
Object storage (URLs s3://BUCKET/KEY, gs://BUCKET/KEY, az://CONTAINER/KEY; plain
paths and file:// are local). Configuration comes from the standard variables:
  S3     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION /
         AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT (S3-compatible servers;
         an http:// endpoint is allowed without TLS), AWS_WEB_IDENTITY_TOKEN_FILE +
         AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, AWS_SKIP_SIGNATURE=true
         (public buckets). On EC2 with an instance role set
         AWS_EC2_METADATA_DISABLED=false to use the instance metadata service.
  GCS    GOOGLE_SERVICE_ACCOUNT (key file path) or GOOGLE_SERVICE_ACCOUNT_KEY (JSON),
         else application default credentials; an emulator's endpoint goes in the
         key as gcs_base_url (with disable_oauth set to true), and an http:// one also
         needs GOOGLE_ALLOW_HTTP=true.
  Azure  AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, or
         AZURE_STORAGE_SAS_KEY, or AZURE_CLIENT_ID + AZURE_CLIENT_SECRET +
         AZURE_TENANT_ID; AZURE_STORAGE_ENDPOINT for Azurite or another endpoint.
  Every store: RECLAG_STORE_TIMEOUT (default 30s) bounds each request;
         RECLAG_STORE_RETRIES (default 10) retries a request that timed out, lost its
         connection or got a 5xx/429, with exponential backoff (0.1 s doubling to
         15 s, for at most 3 minutes); a 4xx such as 403 fails at once, naming the
         object, and an output is then never published.";

/// A snapshot of the variables that configure object stores.
#[derive(Clone, Debug, Default)]
pub struct StoreEnv {
    vars: BTreeMap<String, String>,
}

impl StoreEnv {
    pub fn from_process() -> Self {
        let vars = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("AWS_")
                    || k.starts_with("GOOGLE_")
                    || k.starts_with("AZURE_")
                    || k.starts_with("RECLAG_STORE_")
            })
            .collect();
        StoreEnv { vars }
    }

    /// An environment with exactly these variables (tests, embedding programs).
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        StoreEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The variables, for a program that passes them on (a test pointing a copy at
    /// another endpoint, say).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn is_true(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a str)> {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
    }
}

type Stdin = Box<dyn std::io::Read + Send>;
type Stdout = Box<dyn std::io::Write + Send>;

/// The object stores of one job, built once per bucket and shared by every read and
/// write so connections are pooled, plus the job's standard input and output (`-`).
#[derive(Default)]
pub struct Stores {
    env: StoreEnv,
    cache: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    stdio: Mutex<(Option<Stdin>, Option<Stdout>)>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Stores")
            .field("stores", &cache.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Stores {
    /// Stores configured from `env`, with the process's standard input and output.
    pub fn new(env: StoreEnv) -> Self {
        Stores {
            env,
            cache: Mutex::default(),
            stdio: Mutex::new((
                Some(Box::new(std::io::stdin())),
                Some(Box::new(std::io::stdout())),
            )),
        }
    }

    /// Replaces standard input and output (tests, embedding programs).
    pub fn with_stdio(self, stdin: Stdin, stdout: Stdout) -> Self {
        *self.stdio.lock().unwrap_or_else(|p| p.into_inner()) = (Some(stdin), Some(stdout));
        self
    }

    /// Standard input; a job reads it at most once.
    pub fn stdin(&self) -> Result<Stdin> {
        let mut io = self.stdio.lock().unwrap_or_else(|p| p.into_inner());
        io.0.take()
            .ok_or_else(|| Error::Usage("standard input ('-') can be read only once".into()))
    }

    /// Standard output; a job writes one stream to it.
    pub fn stdout(&self) -> Result<Stdout> {
        let mut io = self.stdio.lock().unwrap_or_else(|p| p.into_inner());
        io.1.take()
            .ok_or_else(|| Error::Usage("standard output ('-') can be written only once".into()))
    }

    /// Parses a path or URL into a store and a key. Nothing is fetched yet, but
    /// configuration problems (an unknown scheme, missing credentials) fail here.
    pub fn locate(&self, spec: &str) -> Result<Location> {
        let (base, key, local) = split(spec)?;
        let store = self.store_for(&base)?;
        Ok(Location {
            store,
            base,
            key,
            local,
            display: spec.to_string(),
            size: None,
        })
    }

    fn store_for(&self, base: &Url) -> Result<Arc<dyn ObjectStore>> {
        let id = base.as_str().to_string();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(&id) {
            return Ok(s.clone());
        }
        let store = build(base, &self.env)?;
        cache.insert(id, store.clone());
        Ok(store)
    }

    /// Every store built so far with its base URL, for registering on a DataFusion
    /// session.
    pub fn built(&self) -> Vec<(Url, Arc<dyn ObjectStore>)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .filter_map(|(k, v)| Url::parse(k).ok().map(|u| (u, v.clone())))
            .collect()
    }
}

/// A file or prefix in some store.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    /// `scheme://bucket/` (or `file:///`): what DataFusion registers the store under.
    pub base: Url,
    pub key: ObjPath,
    /// The absolute local path, for `file` locations.
    pub local: Option<PathBuf>,
    /// As the user wrote it, for messages.
    pub display: String,
    /// The object size where a listing or HEAD already returned it, so the reader
    /// does not ask again.
    pub size: Option<u64>,
}

impl Location {
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The same store at another key (a listed file), displayed as a full URL.
    pub fn child(&self, key: ObjPath) -> Location {
        let display = if self.is_local() {
            format!("/{key}")
        } else {
            format!("{}{key}", self.base)
        };
        Location {
            store: self.store.clone(),
            base: self.base.clone(),
            local: self.local.as_ref().map(|_| PathBuf::from(&display)),
            key,
            display,
            size: None,
        }
    }

    pub fn with_size(mut self, size: u64) -> Location {
        self.size = Some(size);
        self
    }

    /// The full URL DataFusion understands.
    pub fn url(&self) -> String {
        format!("{}{}", self.base, self.key)
    }

    pub fn display_path(&self) -> PathBuf {
        PathBuf::from(&self.display)
    }

    pub fn get(&self) -> Result<Bytes> {
        block_on(async {
            let r = self.store.get(&self.key).await?;
            r.bytes().await
        })
        .map_err(|e| self.error("reading", e))
    }

    /// Writes `bytes` so a reader sees the old object or the whole new one: local files
    /// go to a temporary sibling and are renamed; object stores publish a PUT atomically.
    pub fn put(&self, bytes: Bytes) -> Result<()> {
        if let Some(p) = &self.local {
            // Object stores have no directories; on disk, make them as a PUT would.
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    context: format!("creating {}", dir.display()),
                    source,
                })?;
            }
            return reclag::format::write_atomic(p, &bytes).map_err(Error::from);
        }
        block_on(self.store.put(&self.key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.error("writing", e))
    }

    pub fn head(&self) -> Result<Option<ObjectMeta>> {
        match block_on(self.store.head(&self.key)) {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", e)),
        }
    }

    /// Every object below this key as a prefix, sorted by key.
    pub fn list(&self) -> Result<Vec<ObjectMeta>> {
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let mut all: Vec<ObjectMeta> = block_on(self.store.list(prefix).try_collect())
            .map_err(|e| self.error("listing", e))?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    /// The "directories" directly below this key (common prefixes), sorted; on local
    /// disk these include empty directories.
    pub fn list_dirs(&self) -> Result<Vec<ObjPath>> {
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let mut dirs = block_on(self.store.list_with_delimiter(prefix))
            .map_err(|e| self.error("listing", e))?
            .common_prefixes;
        dirs.sort();
        Ok(dirs)
    }

    /// An object-store error turned into a message that says what to check.
    pub fn error(&self, doing: &str, e: object_store::Error) -> Error {
        let (location, doing) = (self.display.clone(), doing.to_string());
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound { location },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::Denied {
                location,
                doing,
                source: Box::new(e),
            },
            _ => Error::Store {
                location,
                doing,
                source: Box::new(e),
            },
        }
    }
}

/// Loads a model file from a path or URL, verifying its checksum.
pub fn load_model(stores: &Stores, spec: &str) -> Result<reclag::Model> {
    Ok(load_model_from(stores, spec)?.0)
}

/// Loads a model and gives the absolute URL it came from, which is what a serialized
/// plan records so another process can load the same model.
pub fn load_model_from(stores: &Stores, spec: &str) -> Result<(reclag::Model, String)> {
    let loc = stores.locate(spec)?;
    match &loc.local {
        // `from_file_path` percent-encodes, so a path with spaces or `%` survives the
        // trip through a URL.
        Some(p) => Ok((
            reclag::format::load(p)?,
            Url::from_file_path(p).map_or_else(|_| loc.url(), |u| u.to_string()),
        )),
        None => Ok((
            reclag::format::from_bytes(loc.get()?, &loc.display_path())?,
            loc.url(),
        )),
    }
}

/// The shared IO runtime for blocking callers. Its two workers only drive network and
/// file IO; CPU work stays on rayon.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("reclag-io")
            .enable_all()
            .build()
            .expect("the IO runtime starts")
    })
}

/// Runs `fut` to completion from synchronous code, also when called on a runtime
/// worker (which may not block without telling tokio).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        _ => runtime().block_on(fut),
    }
}

/// `(base URL, key, local path)` of a spec.
fn split(spec: &str) -> Result<(Url, ObjPath, Option<PathBuf>)> {
    let bad = |message: String| Error::Location {
        spec: spec.to_string(),
        message,
    };
    if spec.is_empty() {
        return Err(bad("an empty path was given".into()));
    }
    let is_url = spec.contains("://");
    if !is_url || spec.starts_with("file://") {
        let raw = if is_url {
            Url::parse(spec)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| bad(format!("'{spec}' is not a valid file:// URL")))?
        } else {
            PathBuf::from(spec)
        };
        let abs = lexical(&std::path::absolute(&raw).map_err(|source| Error::Io {
            context: format!("resolving {spec}"),
            source,
        })?);
        let key = ObjPath::from_absolute_path(&abs)
            .map_err(|e| bad(format!("'{spec}' cannot be used as a local path: {e}")))?;
        let base = Url::parse("file:///").expect("static URL");
        return Ok((base, key, Some(abs)));
    }
    let url = Url::parse(spec).map_err(|e| {
        bad(format!(
            "'{spec}' is not a valid URL ({e}); expected s3://BUCKET/KEY, gs://BUCKET/KEY, az://CONTAINER/KEY or a local path"
        ))
    })?;
    let scheme = url.scheme();
    if !matches!(scheme, "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss") {
        return Err(bad(format!(
            "'{spec}': unsupported scheme '{scheme}://'; use s3://, gs://, az://, file:// or a local path"
        )));
    }
    let bucket = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
        bad(format!(
            "'{spec}' names no bucket; expected {scheme}://BUCKET/KEY"
        ))
    })?;
    let base = Url::parse(&format!("{scheme}://{bucket}/"))
        .map_err(|e| bad(format!("'{spec}' has an invalid bucket name: {e}")))?;
    let key = ObjPath::from_url_path(url.path())
        .map_err(|e| bad(format!("'{spec}' has an invalid key: {e}")))?;
    Ok((base, key, None))
}

/// Resolves `.` and `..` without touching the file system (object-store keys have
/// no such segments, and the path may not exist yet).
fn lexical(p: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Requests time out after this unless `RECLAG_STORE_TIMEOUT` says otherwise:
/// object_store's own default.
pub const DEFAULT_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Retries of one request unless `RECLAG_STORE_RETRIES` says otherwise: object_store's
/// own default.
pub const DEFAULT_STORE_RETRIES: usize = 10;

/// The timeout and retry policy every store gets, from `RECLAG_STORE_TIMEOUT` and
/// `RECLAG_STORE_RETRIES`.
fn policy(env: &StoreEnv) -> Result<(object_store::ClientOptions, object_store::RetryConfig)> {
    let timeout = match env.get("RECLAG_STORE_TIMEOUT") {
        None => DEFAULT_STORE_TIMEOUT,
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            Error::Usage(format!(
                "RECLAG_STORE_TIMEOUT='{v}' is not a duration ({e}); write it as 30s, 2m or 500ms"
            ))
        })?,
    };
    let retries = match env.get("RECLAG_STORE_RETRIES") {
        None => DEFAULT_STORE_RETRIES,
        Some(v) => v.parse().map_err(|_| {
            Error::Usage(format!(
                "RECLAG_STORE_RETRIES='{v}' is not a count; write a whole number such as 10 (0 disables retries)"
            ))
        })?,
    };
    let options = object_store::ClientOptions::new().with_timeout(timeout);
    let retry = object_store::RetryConfig {
        max_retries: retries,
        ..Default::default()
    };
    Ok((options, retry))
}

fn build(base: &Url, env: &StoreEnv) -> Result<Arc<dyn ObjectStore>> {
    let bucket = base.host_str().unwrap_or_default().to_string();
    let fail = |e: object_store::Error| {
        Error::Usage(format!(
            "cannot configure {base}: {e} (see `reclag --help` for the variables)"
        ))
    };
    if base.scheme() == "file" {
        return Ok(Arc::new(LocalFileSystem::new()));
    }
    let (options, retry) = policy(env)?;
    match base.scheme() {
        "s3" | "s3a" => {
            check_aws(env, base)?;
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_client_options(options)
                .with_retry(retry);
            for (k, v) in env.with_prefix("AWS_") {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            let endpoint = env
                .get("AWS_ENDPOINT_URL_S3")
                .or_else(|| env.get("AWS_ENDPOINT_URL"))
                .or_else(|| env.get("AWS_ENDPOINT"));
            if let Some(ep) = endpoint {
                b = b.with_endpoint(ep);
                if ep.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
            }
            if env.is_true("AWS_SKIP_SIGNATURE") {
                b = b.with_skip_signature(true);
            }
            Ok(Arc::new(b.with_bucket_name(bucket).build().map_err(fail)?))
        }
        "gs" => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_client_options(options)
                .with_retry(retry);
            for (k, v) in env.with_prefix("GOOGLE_") {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            Ok(Arc::new(b.with_bucket_name(bucket).build().map_err(fail)?))
        }
        _ => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                .with_client_options(options)
                .with_retry(retry);
            for (k, v) in env.with_prefix("AZURE_") {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            Ok(Arc::new(b.with_url(base.as_str()).build().map_err(fail)?))
        }
    }
}

/// Fails fast, naming the variables to set, where the AWS client would otherwise fall
/// back to the EC2 metadata service and retry for minutes on a machine that has none.
/// Never prints a credential value.
fn check_aws(env: &StoreEnv, base: &Url) -> Result<()> {
    if env.is_true("AWS_SKIP_SIGNATURE") {
        return Ok(());
    }
    let key = env.get("AWS_ACCESS_KEY_ID").is_some();
    let secret = env.get("AWS_SECRET_ACCESS_KEY").is_some();
    match (key, secret) {
        (true, false) => {
            return Err(Error::Credentials {
                store: base.to_string(),
                message: format!(
                    "S3 credentials for {base} are incomplete: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both"
                ),
            });
        }
        (false, true) => {
            return Err(Error::Credentials {
                store: base.to_string(),
                message: format!(
                    "S3 credentials for {base} are incomplete: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not; set both"
                ),
            });
        }
        (true, true) => return Ok(()),
        (false, false) => {}
    }
    let other = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    if other.iter().any(|k| env.get(k).is_some())
        || env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    {
        return Ok(());
    }
    Err(Error::Credentials {
        store: base.to_string(),
        message: format!(
            "no S3 credentials for {base}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
         (plus AWS_SESSION_TOKEN for temporary ones), or AWS_WEB_IDENTITY_TOKEN_FILE with \
         AWS_ROLE_ARN; on EC2 with an instance role set AWS_EC2_METADATA_DISABLED=false; \
         for a public bucket set AWS_SKIP_SIGNATURE=true"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths_and_urls() {
        let (b, k, l) = split("s3://bkt/a/b.parquet").unwrap();
        assert_eq!((b.as_str(), k.as_ref()), ("s3://bkt/", "a/b.parquet"));
        assert!(l.is_none());
        let (b, k, l) = split("/tmp/x y/z.parquet").unwrap();
        assert_eq!((b.as_str(), k.as_ref()), ("file:///", "tmp/x y/z.parquet"));
        assert_eq!(l.unwrap(), PathBuf::from("/tmp/x y/z.parquet"));
        let (_, k, _) = split("/a/./b/../c.parquet").unwrap();
        assert_eq!(k.as_ref(), "a/c.parquet");
        let e = split("http://host/x").unwrap_err();
        assert!(
            matches!(&e, Error::Location { spec, .. } if spec == "http://host/x"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("unsupported scheme 'http://'"), "{e}");
        let e = split("s3:///x").unwrap_err().to_string();
        assert!(e.contains("names no bucket"), "{e}");
    }

    #[test]
    fn missing_aws_credentials_fail_fast_without_echoing_secrets() {
        let stores = Stores::new(StoreEnv::from_vars([("AWS_REGION", "us-east-1")]));
        let e = stores.locate("s3://b/k").unwrap_err();
        assert!(
            matches!(&e, Error::Credentials { store, .. } if store == "s3://b/"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("no S3 credentials for s3://b/"), "{e}");
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let stores = Stores::new(StoreEnv::from_vars([(
            "AWS_SECRET_ACCESS_KEY",
            "sekrit-value-123",
        )]));
        let e = stores.locate("s3://b/k").unwrap_err().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID is not"), "{e}");
        assert!(!e.contains("sekrit-value-123"), "{e}");
        let stores = Stores::new(StoreEnv::from_vars([("AWS_SKIP_SIGNATURE", "true")]));
        assert!(stores.locate("s3://b/k").is_ok());
    }
}
