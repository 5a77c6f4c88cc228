//! The models SQL functions name: registered by name or loaded on first use from a
//! path or URL, pinned by checksum so a plan shipped to another process (or run again
//! later) scores with the model it was planned with, or fails saying so.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};

use reclag::Model;

/// Loads a model from a path or URL and says where it came from, as an absolute URL
/// another process can load it from again. The pipelines crate installs one that
/// reaches object stores; the default reads local files.
pub type ModelLoader = dyn Fn(&str) -> std::result::Result<(Model, String), String> + Send + Sync;

/// A model as a serialized plan carries it: the key SQL uses for it (a registered name
/// or the path/URL literal), where to load it from (`None` for a model registered from
/// memory), and the checksum it had when the plan was built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelPin {
    pub key: String,
    pub url: Option<String>,
    pub sha256: String,
}

#[derive(Debug)]
struct Entry {
    model: Arc<Model>,
    /// Computed once: a plan encodes it, and hashing Ξ per query would cost a pass
    /// over every memory.
    sha256: String,
    url: Option<String>,
    /// A registered name (listed in errors), not a path or URL literal.
    named: bool,
}

/// Models visible to SQL: registered names, plus models given by path or URL, loaded
/// on first use and cached for the life of the session under the URL, with the
/// checksum they were loaded with (what a serialized plan pins).
#[derive(Default)]
pub struct ModelRegistry {
    entries: RwLock<HashMap<String, Entry>>,
    /// Names a decoded plan used for models it could not carry (registered from
    /// memory where it was built), with the checksum it expects: the error for a
    /// missing name then says what to register.
    expected: RwLock<HashMap<String, String>>,
    /// Models loaded for pins, by checksum, held while some scoped registry (a decoded
    /// plan) uses them: the tasks of one query load a model version once, and a
    /// long-running process keeps no version no plan needs.
    pinned: RwLock<HashMap<String, Weak<Model>>>,
    loader: Option<Arc<ModelLoader>>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("models", &self.models())
            .finish()
    }
}

fn looks_like_path(key: &str) -> bool {
    key.contains('/') || key.ends_with(".parquet") || key.contains("://")
}

/// The default loader: local files only, named by path or `file://` URL.
fn load_local(spec: &str) -> std::result::Result<(Model, String), String> {
    let path = if spec.starts_with("file://") {
        url::Url::parse(spec)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| format!("'{spec}' is not a valid file:// URL"))?
    } else if spec.contains("://") {
        return Err(format!(
            "'{spec}': this session reads models from local files only; load object-store models through a registry with a loader (the reclag CLI installs one)"
        ));
    } else {
        PathBuf::from(spec)
    };
    let model = reclag::format::load(&path).map_err(|e| e.to_string())?;
    let abs = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let url = url::Url::from_file_path(&abs)
        .map_err(|()| format!("{}: not an absolute path", abs.display()))?;
    Ok((model, url.to_string()))
}

impl ModelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A registry that loads path and URL model arguments with `loader`.
    pub fn with_loader(loader: Box<ModelLoader>) -> Arc<Self> {
        Arc::new(ModelRegistry {
            loader: Some(Arc::from(loader)),
            ..Default::default()
        })
    }

    fn load(&self, spec: &str) -> std::result::Result<(Model, String), String> {
        match &self.loader {
            Some(load) => load(spec),
            None => load_local(spec),
        }
    }

    fn insert(&self, key: String, model: Arc<Model>, url: Option<String>, named: bool) {
        let sha256 = reclag::format::checksum(&model);
        self.insert_known(key, model, sha256, url, named);
    }

    fn insert_known(
        &self,
        key: String,
        model: Arc<Model>,
        sha256: String,
        url: Option<String>,
        named: bool,
    ) {
        self.entries.write().expect("registry lock").insert(
            key,
            Entry {
                model,
                sha256,
                url,
                named,
            },
        );
    }

    /// Makes `model` available as `name` in SQL (`reclag_score('name', ...)`). A plan
    /// using it can be serialized but carries only its checksum; the executing
    /// session must register the same model under the same name. Prefer
    /// [`register_from`](Self::register_from) when the model came from a file.
    pub fn register(&self, name: impl Into<String>, model: Arc<Model>) {
        self.insert(name.into(), model, None, true);
    }

    /// Like [`register`](Self::register), remembering the absolute URL the model was
    /// loaded from, so a serialized plan can reload it anywhere.
    pub fn register_from(
        &self,
        name: impl Into<String>,
        url: impl Into<String>,
        model: Arc<Model>,
    ) {
        self.insert(name.into(), model, Some(url.into()), true);
    }

    /// `(name or URL, checksum)` of every model known so far, sorted.
    pub fn models(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .entries
            .read()
            .expect("registry lock")
            .iter()
            .map(|(k, e)| (k.clone(), e.sha256.clone()))
            .collect();
        v.sort();
        v
    }

    /// Every model this session has resolved, as a serialized plan pins it.
    pub fn pins(&self) -> Vec<ModelPin> {
        let mut v: Vec<ModelPin> = self
            .entries
            .read()
            .expect("registry lock")
            .iter()
            .map(|(k, e)| ModelPin {
                key: k.clone(),
                url: e.url.clone(),
                sha256: e.sha256.clone(),
            })
            .collect();
        v.sort();
        v
    }

    /// A registry for one decoded plan: exactly the models `pins` name, each at its
    /// pinned checksum, refusing a model whose checksum differs. A pin with a URL is
    /// loaded now, so a changed or missing model file fails the plan before any row is
    /// read, not halfway through a distributed query. With `share`, a model another
    /// decoded plan still holds at that checksum is used instead of loading it again
    /// (a cluster executor's tasks of one query load it once; the scheduler, which
    /// checks each query as it arrives, always loads).
    ///
    /// The plan's functions resolve models in the returned registry alone, and it
    /// never changes. So a process that decodes many plans (a cluster executor) picks
    /// up a model file replaced between two queries in the second, and never mixes
    /// two versions within one query, however its tasks interleave.
    pub fn scoped(&self, pins: &[ModelPin], share: bool) -> std::result::Result<Arc<Self>, String> {
        let scoped = ModelRegistry {
            loader: self.loader.clone(),
            ..Default::default()
        };
        for pin in pins {
            let held = self
                .entries
                .read()
                .expect("registry lock")
                .get(&pin.key)
                .map(|e| (e.model.clone(), e.sha256.clone(), e.url.clone(), e.named));
            if let Some((model, sha256, url, named)) = held {
                if sha256 != pin.sha256 {
                    return Err(format!(
                        "model '{}' on this session has checksum {sha256}, but the plan was built with checksum {}; register the model the plan was built with, or plan the query again",
                        pin.key, pin.sha256
                    ));
                }
                scoped.insert_known(pin.key.clone(), model, sha256, url, named);
                continue;
            }
            let Some(url) = &pin.url else {
                scoped
                    .expected
                    .write()
                    .expect("registry lock")
                    .insert(pin.key.clone(), pin.sha256.clone());
                continue;
            };
            let named = !looks_like_path(&pin.key);
            let cached = share
                .then(|| {
                    self.pinned
                        .read()
                        .expect("registry lock")
                        .get(&pin.sha256)
                        .and_then(Weak::upgrade)
                })
                .flatten();
            if let Some(model) = cached {
                scoped.insert_known(
                    pin.key.clone(),
                    model,
                    pin.sha256.clone(),
                    Some(url.clone()),
                    named,
                );
                continue;
            }
            let (model, url) = self
                .load(url)
                .map_err(|e| format!("model '{}' pinned by the plan: {e}", pin.key))?;
            let sha = reclag::format::checksum(&model);
            if sha != pin.sha256 {
                return Err(format!(
                    "model '{}' at {url} has checksum {sha}, but the plan was built with checksum {}: the model changed after the plan was made; plan the query again, or restore the model file",
                    pin.key, pin.sha256
                ));
            }
            let model = Arc::new(model);
            {
                let mut pinned = self.pinned.write().expect("registry lock");
                pinned.retain(|_, m| m.strong_count() > 0);
                pinned.insert(sha.clone(), Arc::downgrade(&model));
            }
            scoped.insert_known(pin.key.clone(), model, sha, Some(url), named);
        }
        Ok(Arc::new(scoped))
    }

    /// A registered name, else a model file path or URL (loaded once, then cached).
    pub fn resolve(&self, name: &str) -> std::result::Result<Arc<Model>, String> {
        if let Some(e) = self.entries.read().expect("registry lock").get(name) {
            return Ok(e.model.clone());
        }
        if !looks_like_path(name) {
            if let Some(sha) = self.expected.read().expect("registry lock").get(name) {
                return Err(format!(
                    "model '{name}' is not registered; the plan was built with a model registered from memory under that name (checksum {sha}), so the plan could not carry it: register the same model here, or register it from a file or URL where the plan is built"
                ));
            }
            let mut known: Vec<String> = self
                .entries
                .read()
                .expect("registry lock")
                .iter()
                .filter(|(_, e)| e.named)
                .map(|(k, _)| k.clone())
                .collect();
            known.sort();
            return Err(format!(
                "model '{name}' is not registered (registered: {}); register it or pass a model file path or URL",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        let (model, url) = self.load(name)?;
        let m = Arc::new(model);
        self.insert(name.to_string(), m.clone(), Some(url), false);
        Ok(m)
    }
}
