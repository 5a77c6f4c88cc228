//! The drift job spec: a TOML file, checked completely before any data is read, so a
//! typo fails in a second at 02:00 instead of after an hour of scoring.

use std::path::Path;

use serde::Deserialize;

use super::window::TimeWindows;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSpec {
    pub source: SourceSpec,
    pub model: ModelSpec,
    pub output: OutputSpec,
    #[serde(default)]
    pub alert: AlertSpec,
    #[serde(default)]
    pub report: ReportSpec,
    /// The baseline: in-distribution data scored once to set the expected OOD rate
    /// (overall and per group) and the report's reference histograms. Either data
    /// elsewhere (`url`) or a reference period of the lake itself (`partitions`, or
    /// `from`/`to`), as NannyML's and Evidently's reference periods are.
    pub reference: Option<ReferenceSpec>,
    pub webhook: Option<WebhookSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    /// A Parquet file, directory or glob (path or object-store URL) with the source's
    /// embedding and group columns.
    pub url: Option<String>,
    /// Partitions of the source (their values, e.g. `["2026-11-01", "2026-11-02"]`).
    pub partitions: Option<Vec<String>>,
    /// The first partition of a reference period (inclusive, in partition order).
    pub from: Option<String>,
    /// The last partition of a reference period (inclusive); `from` defaults to the
    /// first partition.
    pub to: Option<String>,
}

/// Where a reference comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'s> {
    Url(&'s str),
    Partitions(&'s [String]),
    Period(Option<&'s str>, Option<&'s str>),
}

impl ReferenceSpec {
    /// The one form given (checked by [`DriftSpec::parse`]).
    pub fn form(&self) -> Reference<'_> {
        match (&self.url, &self.partitions) {
            (Some(u), _) => Reference::Url(u),
            (None, Some(p)) => Reference::Partitions(p),
            (None, None) => Reference::Period(self.from.as_deref(), self.to.as_deref()),
        }
    }

    /// Whether partition `value` of the source is part of the reference.
    pub fn holds(&self, value: &str) -> bool {
        match self.form() {
            Reference::Url(_) => false,
            Reference::Partitions(p) => p.iter().any(|v| v == value),
            Reference::Period(from, to) => {
                from.is_none_or(|f| value >= f) && to.is_none_or(|t| value <= t)
            }
        }
    }

    /// What the state records and the report shows; a different description on a
    /// later run means a different baseline.
    pub fn describe(&self) -> String {
        match self.form() {
            Reference::Url(u) => u.to_string(),
            Reference::Partitions(p) => format!("partitions {}", p.join(", ")),
            Reference::Period(from, to) => format!(
                "partitions from {} to {}",
                from.unwrap_or("the first"),
                to.unwrap_or("the last")
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The lake root: a path or an object-store URL.
    pub url: String,
    /// `hive:KEY`: directories `KEY=VALUE` are the partitions, in sorted order.
    /// `time:COLUMN`: the rows' timestamp column cuts the lake into UTC windows of
    /// `window` (e.g. `1d`, `6h`).
    pub partitioning: String,
    /// The window length of `time:` partitioning: `1d`, `6h`, `30m`, ...
    pub window: Option<String>,
    /// With `time:` partitioning, wait this long after a window ends before
    /// processing it, for rows that arrive late (default `0s`). Rows that arrive after
    /// their window was processed are not counted.
    pub lateness: Option<String>,
    #[serde(default = "default_embedding")]
    pub embedding: String,
    /// Route rows by this column (class label); omitted: by the model (`route`).
    pub group: Option<String>,
    /// Without `group`: `best` (default: the group of largest margin) or `union`.
    #[serde(default, deserialize_with = "route")]
    pub route: Option<reclag::Route>,
}

fn route<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<reclag::Route>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| reclag::Route::parse(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn default_embedding() -> String {
    "embedding".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// Level of the one-sided test of a partition's OOD rate: binomial against a
    /// set rate (the model's calibration level or `expected_rate`), Fisher's exact
    /// against a reference's counts.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Partitions (and groups) with fewer rows are reported but never alert.
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
    /// Also alert when the OOD rate exceeds this absolute rate.
    pub max_rate: Option<f64>,
    /// The OOD rate expected of in-distribution data. Default: the rate measured on
    /// `[reference]` when given, else the `ood_rate` the model was calibrated at.
    pub expected_rate: Option<f64>,
    /// Rows whose conformal p-value (spec §11) is below this level are counted per
    /// partition (`low_p_rate` in the metrics): for ID rows exchangeable with the
    /// model's calibration rows, at most about this share.
    #[serde(default = "default_p_level")]
    pub p_level: f64,
}

fn default_p_level() -> f64 {
    0.05
}

fn default_alpha() -> f64 {
    0.01
}
fn default_min_rows() -> u64 {
    100
}

impl Default for AlertSpec {
    fn default() -> Self {
        AlertSpec {
            alpha: default_alpha(),
            min_rows: default_min_rows(),
            max_rate: None,
            expected_rate: None,
            p_level: default_p_level(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// The most OOD rows kept per partition, with their columns and explanation.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_top_k() -> usize {
    20
}

impl Default for ReportSpec {
    fn default() -> Self {
        ReportSpec {
            top_k: default_top_k(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Receives the run's JSON summary as a POST body.
    pub url: String,
    /// Further attempts after a failed POST (connection error, 429 or 5xx).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first retry waits this long; each later one twice as long.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// `"drift"`: post only when a run found drift; `"always"`: after every run.
    #[serde(default = "default_on")]
    pub on: String,
}

fn default_retries() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_on() -> String {
    "drift".into()
}

/// How the lake is partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    Hive { key: String },
    Time(TimeWindows),
}

/// Parses `30s`, `15m`, `6h`, `1d` (or a combination such as `1h30m`, and the other
/// units `humantime` reads: `ms`, `w`, ...); `0s` is a duration, and callers that need a
/// positive one say so.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(s.trim()).ok()
}

impl DriftSpec {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading the job spec {}", path.display()),
            source,
        })?;
        Self::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    }

    /// Parses and validates; the message names the key and what it accepts.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let spec: DriftSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.partitioning()?;
        let a = &spec.alert;
        if !(a.alpha > 0.0 && a.alpha < 1.0) {
            return Err(format!(
                "alert.alpha = {}: expected a level strictly between 0 and 1, e.g. 0.01",
                a.alpha
            ));
        }
        if let Some(r) = a.max_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!(
                "alert.max_rate = {r}: expected a rate between 0 and 1, e.g. 0.2"
            ));
        }
        if !(a.p_level > 0.0 && a.p_level < 1.0) {
            return Err(format!(
                "alert.p_level = {}: expected a level strictly between 0 and 1, e.g. 0.05",
                a.p_level
            ));
        }
        if let Some(r) = &spec.reference {
            let forms = usize::from(r.url.is_some())
                + usize::from(r.partitions.is_some())
                + usize::from(r.from.is_some() || r.to.is_some());
            if forms != 1 {
                return Err(
                    "reference: give exactly one of url (data elsewhere), partitions (a list of the source's partition values) or from/to (a period of them)".into(),
                );
            }
            if r.from.is_some() && r.to.is_none() {
                return Err(
                    "reference.from needs reference.to: a reference period ends where the judged partitions begin".into(),
                );
            }
            if r.partitions.as_ref().is_some_and(|p| p.is_empty()) {
                return Err("reference.partitions is empty".into());
            }
            if let (Some(f), Some(t)) = (&r.from, &r.to)
                && f > t
            {
                return Err(format!(
                    "reference.from = '{f}' comes after reference.to = '{t}'"
                ));
            }
        }
        if let Some(r) = a.expected_rate
            && !(r > 0.0 && r < 1.0)
        {
            return Err(format!(
                "alert.expected_rate = {r}: expected a rate strictly between 0 and 1, e.g. 0.05"
            ));
        }
        for (key, v) in [
            ("source.url", &spec.source.url),
            ("source.embedding", &spec.source.embedding),
            ("model.url", &spec.model.url),
            ("output.url", &spec.output.url),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{key} is empty"));
            }
        }
        if let Some(w) = &spec.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "webhook.url = '{}': expected an http:// or https:// URL",
                    w.url
                ));
            }
            if !matches!(w.on.as_str(), "drift" | "always") {
                return Err(format!(
                    "webhook.on = '{}': expected 'drift' or 'always'",
                    w.on
                ));
            }
        }
        Ok(spec)
    }

    pub fn partitioning(&self) -> std::result::Result<Partitioning, String> {
        let src = &self.source;
        let p = src.partitioning.as_str();
        let name_ok = |key: &str| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        let duration = |key: &str, v: &str| {
            parse_duration(v)
                .map(|d| d.as_secs() as i64)
                .ok_or_else(|| {
                    format!(
                        "source.{key} = '{v}': expected a duration such as 1d, 6h, 30m or 1h30m"
                    )
                })
        };
        match p.split_once(':') {
            Some(("hive", key)) if name_ok(key) => {
                for (k, v) in [("window", &src.window), ("lateness", &src.lateness)] {
                    if v.is_some() {
                        return Err(format!(
                            "source.{k} applies only to partitioning = 'time:COLUMN' (this source is '{p}'); remove it"
                        ));
                    }
                }
                Ok(Partitioning::Hive { key: key.into() })
            }
            Some(("time", column)) if !column.is_empty() => {
                let Some(window) = &src.window else {
                    return Err(format!(
                        "source.partitioning = '{p}' needs source.window, the window length: e.g. window = \"1d\" for daily partitions"
                    ));
                };
                let window = duration("window", window)?;
                if window == 0 {
                    return Err(format!(
                        "source.window = '{}': expected a positive duration such as 1d or 6h",
                        src.window.as_deref().unwrap_or_default()
                    ));
                }
                let lateness = match &src.lateness {
                    Some(l) => duration("lateness", l)?,
                    None => 0,
                };
                Ok(Partitioning::Time(TimeWindows {
                    column: column.into(),
                    window,
                    lateness,
                }))
            }
            _ => Err(format!(
                "source.partitioning = '{p}': expected 'hive:KEY' (directories KEY=VALUE, e.g. 'hive:date' for date=2026-11-21/) or 'time:COLUMN' with source.window (a timestamp column cut into UTC windows, e.g. 'time:event_time' and window = \"1d\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written parser humantime replaced, kept as the reference.
    fn reference_duration(s: &str) -> Option<std::time::Duration> {
        let mut total = 0u64;
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u64 = num.parse().ok()?;
            num.clear();
            total = total.checked_add(n.checked_mul(match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return None,
            })?)?;
        }
        if !num.is_empty() || s.trim().is_empty() {
            return None;
        }
        Some(std::time::Duration::from_secs(total))
    }

    /// Every duration the hand-written parser read, humantime reads the same; what it
    /// refused (a bare number, an unknown unit, nothing) humantime refuses too.
    #[test]
    fn humantime_reads_every_duration_as_before() {
        let mut accepted = 0;
        for n in [0u64, 1, 2, 7, 15, 30, 59, 60, 90, 3600, 86_400] {
            for unit in ["s", "m", "h", "d"] {
                for text in [format!("{n}{unit}"), format!(" {n}{unit} ")] {
                    let want = reference_duration(&text);
                    assert!(want.is_some(), "{text}");
                    assert_eq!(parse_duration(&text), want, "{text:?}");
                    accepted += 1;
                }
            }
        }
        for text in ["1h30m", "1d12h", "2m30s", "1d2h3m4s", "0s", "10m0s"] {
            assert!(reference_duration(text).is_some());
            assert_eq!(parse_duration(text), reference_duration(text), "{text}");
            accepted += 1;
        }
        for text in ["", " ", "30", "h", "1x", "-1s", "s1"] {
            assert_eq!(reference_duration(text), None, "{text}");
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
        // What humantime reads beyond the old parser, with the meaning a user expects.
        assert_eq!(reference_duration("1.5h"), None);
        assert_eq!(
            parse_duration("1.5h"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("1w"),
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert!(accepted > 90);
    }

    #[test]
    fn the_documented_example_specs_parse() {
        for (name, text) in [
            (
                "nightly-local.toml",
                include_str!("../../jobs/nightly-local.toml"),
            ),
            (
                "nightly-s3.toml",
                include_str!("../../jobs/nightly-s3.toml"),
            ),
        ] {
            let spec = DriftSpec::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                spec.partitioning().unwrap(),
                Partitioning::Hive { key: "date".into() },
                "{name}"
            );
        }
        let spec = DriftSpec::parse(include_str!("../../jobs/hourly-time.toml")).unwrap();
        assert_eq!(
            spec.partitioning().unwrap(),
            Partitioning::Time(TimeWindows {
                column: "event_time".into(),
                window: 3600,
                lateness: 900
            })
        );
    }

    #[test]
    fn defaults_and_bad_values() {
        let min =
            "[source]\nurl='l'\npartitioning='hive:day'\n[model]\nurl='m'\n[output]\nurl='o'\n";
        let s = DriftSpec::parse(min).unwrap();
        assert_eq!(
            (s.alert.alpha, s.alert.min_rows, s.report.top_k),
            (0.01, 100, 20)
        );
        assert_eq!(s.source.embedding, "embedding");
        for (extra, want) in [
            ("[alert]\nmax_rate = 1.5\n", "alert.max_rate = 1.5"),
            ("[alert]\nexpected_rate = 0\n", "alert.expected_rate = 0"),
            ("[webhook]\nurl = 'ftp://x'\n", "webhook.url = 'ftp://x'"),
            (
                "[report]\ntop = 3\n",
                "unknown field `top`, expected `top_k`",
            ),
        ] {
            let e = DriftSpec::parse(&format!("{min}{extra}")).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = DriftSpec::parse(&min.replace("hive:day", "hive:")).unwrap_err();
        assert!(e.contains("expected 'hive:KEY'"), "{e}");
        assert!(e.contains("or 'time:COLUMN'"), "{e}");
    }

    #[test]
    fn time_partitioning_needs_a_window_and_hive_refuses_one() {
        let min =
            "[source]\nurl='l'\npartitioning='time:ts'\n[model]\nurl='m'\n[output]\nurl='o'\n";
        let e = DriftSpec::parse(min).unwrap_err();
        assert!(e.contains("needs source.window"), "{e}");
        let with = |extra: &str| {
            min.replace(
                "partitioning='time:ts'\n",
                &format!("partitioning='time:ts'\n{extra}\n"),
            )
        };
        let s = DriftSpec::parse(&with("window='6h'\nlateness='90m'")).unwrap();
        assert_eq!(
            s.partitioning().unwrap(),
            Partitioning::Time(TimeWindows {
                column: "ts".into(),
                window: 6 * 3600,
                lateness: 90 * 60
            })
        );
        let e = DriftSpec::parse(&with("window='daily'")).unwrap_err();
        assert!(
            e.contains("source.window = 'daily': expected a duration"),
            "{e}"
        );
        let e = DriftSpec::parse(
            &min.replace("time:ts", "hive:date")
                .replace("[model]", "window='1d'\n[model]"),
        )
        .unwrap_err();
        assert!(
            e.contains("source.window applies only to partitioning = 'time:COLUMN'"),
            "{e}"
        );
    }
}
