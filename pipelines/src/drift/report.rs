//! `report.html`: one self-contained page (inline SVG and CSS, no script, no network)
//! that a person opens in the morning. It is a pure function of the state, so reruns
//! write the same bytes.

use std::fmt::Write;

use super::spec::DriftSpec;
use super::{P_BINS, PartitionRecord, ReferenceRecord, State};

const W: f64 = 760.0;
const H: f64 = 220.0;
const PAD: f64 = 44.0;
const RED: &str = "#c62828";
const BLUE: &str = "#1565c0";
const GREY: &str = "#9e9e9e";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The OOD rate above which a partition of `n` rows alerts at level `alpha`: the
/// smallest `k/n` with `P(X ≥ k) < alpha`, by the test the verdict used (binomial at
/// rate `p`, or Fisher's exact against a reference's `(rows, OOD rows)`).
fn critical_rate(n: u64, p: f64, alpha: f64, reference: Option<(u64, u64)>) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0u64, n + 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let tail = match reference {
            Some((m, r)) => super::stats::fisher_sf(mid, n, r, m),
            None => super::stats::binomial_sf(mid, n, p),
        };
        if tail < alpha {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    (lo.min(n) as f64) / n as f64
}

/// The page for `state`; `baseline` says what the OOD rates were judged against
/// ([`super::baseline`]).
pub fn render(spec: &DriftSpec, state: &State, baseline: &str) -> String {
    let done: Vec<&PartitionRecord> = state
        .partitions
        .values()
        .filter(|r| r.status == super::PartitionStatus::Done)
        .collect();
    let skipped: Vec<&PartitionRecord> = state
        .partitions
        .values()
        .filter(|r| r.status != super::PartitionStatus::Done)
        .collect();
    let drifted = done.iter().filter(|r| r.drift).count();
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>reclag drift report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px auto;max-width:820px;color:#222}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f5f5f5}} td.l,th.l{{text-align:left}} .drift{{color:{RED};font-weight:600}}
.note{{color:#555;font-size:13px}} svg text{{font-size:11px;fill:#444}}
</style></head><body>
<h1>reclag drift report</h1>
<p class="note">Source <code>{}</code> · model <code>{}</code> · {} partition(s) scored, <span class="{}">{} with drift</span>, {} skipped.
A partition drifts when its OOD rate (rows with score ≤ 0) is above the expected rate by a one-sided test at α = {} (binomial against a set rate, Fisher's exact against a reference's counts) (groups at α / groups present){}; partitions or groups under {} rows never alert.</p>
<p class="note">Expected rate: {}.</p>
"#,
        esc(&spec.source.url),
        esc(&state.model_sha256[..state.model_sha256.len().min(12)]),
        done.len(),
        if drifted > 0 { "drift" } else { "" },
        drifted,
        skipped.len(),
        spec.alert.alpha,
        spec.alert
            .max_rate
            .map(|m| format!(", or when it exceeds {m}"))
            .unwrap_or_default(),
        spec.alert.min_rows,
        esc(baseline),
    );
    let counts = super::reference_counts(spec, state.reference.as_ref(), None);
    rate_chart(&mut h, spec, &done, counts);
    if let Some(latest) = done.last() {
        if latest.p_histogram.is_empty() {
            histogram(&mut h, latest, &done, state.reference.as_ref());
        } else {
            p_histogram(&mut h, spec, latest, state.reference.as_ref());
        }
        group_bars(&mut h, latest);
        worst_table(&mut h, latest);
    }
    partitions_table(&mut h, &done, &skipped);
    h.push_str("</body></html>\n");
    h
}

fn rate_chart(
    h: &mut String,
    spec: &DriftSpec,
    done: &[&PartitionRecord],
    reference: Option<(u64, u64)>,
) {
    let _ = writeln!(h, "<h2>OOD rate over time</h2>");
    if done.is_empty() {
        let _ = writeln!(h, "<p class=\"note\">No partition scored yet.</p>");
        return;
    }
    let n = done.len();
    let x = |i: usize| {
        PAD + (W - 2.0 * PAD)
            * if n == 1 {
                0.5
            } else {
                i as f64 / (n - 1) as f64
            }
    };
    let crit: Vec<f64> = done
        .iter()
        .map(|r| critical_rate(r.rows, r.expected_rate, spec.alert.alpha, reference))
        .collect();
    let top = done
        .iter()
        .map(|r| r.ood_rate)
        .chain(crit.iter().copied())
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.1;
    let y = |v: f64| H - PAD + (v / top) * (2.0 * PAD - H);
    let _ = writeln!(
        h,
        r#"<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="OOD rate per partition">"#
    );
    // The expected band: from the calibrated rate up to the alert threshold.
    let mut band = String::new();
    for (i, r) in done.iter().enumerate() {
        let _ = write!(band, "{:.1},{:.1} ", x(i), y(r.expected_rate));
    }
    for (i, c) in crit.iter().enumerate().rev() {
        let _ = write!(band, "{:.1},{:.1} ", x(i), y(*c));
    }
    let _ = writeln!(
        h,
        r##"<polygon points="{}" fill="#e3f2fd" stroke="none"/>"##,
        band.trim_end()
    );
    let line: Vec<String> = done
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.ood_rate)))
        .collect();
    let _ = writeln!(
        h,
        r#"<polyline points="{}" fill="none" stroke="{BLUE}" stroke-width="2"/>"#,
        line.join(" ")
    );
    for (i, r) in done.iter().enumerate() {
        let _ = writeln!(
            h,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>{}: {:.2}% OOD of {} rows, p = {:.3e}</title></circle>"#,
            x(i),
            y(r.ood_rate),
            if r.drift { RED } else { BLUE },
            esc(&r.partition),
            100.0 * r.ood_rate,
            r.rows,
            r.p_value
        );
        if n <= 16 || i % n.div_ceil(16) == 0 {
            let _ = writeln!(
                h,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x(i),
                H - PAD + 16.0,
                esc(&r.partition)
            );
        }
    }
    axis(h, top, y, "OOD rate");
    let _ = writeln!(
        h,
        "</svg>\n<p class=\"note\">Shaded: from the expected rate to the alert threshold for each partition's row count. Red points drifted.</p>"
    );
}

fn axis(h: &mut String, top: f64, y: impl Fn(f64) -> f64, label: &str) {
    let _ = writeln!(
        h,
        r#"<line x1="{PAD}" y1="{:.1}" x2="{PAD}" y2="{:.1}" stroke="{GREY}"/>"#,
        y(0.0),
        y(top)
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let _ = writeln!(
            h,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.1}%</text>"#,
            PAD - 4.0,
            y(v) + 4.0,
            100.0 * v
        );
    }
    let _ = writeln!(
        h,
        r#"<text x="{PAD}" y="14" text-anchor="start">{label}</text>"#
    );
}

/// Density of a distribution given by evenly spaced quantiles, over `bins` bins.
fn density(q: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let mut d = vec![0.0; bins];
    if q.len() < 2 || hi <= lo {
        return d;
    }
    let mass = 1.0 / (q.len() - 1) as f64;
    let width = (hi - lo) / bins as f64;
    for w in q.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b <= a {
            let i = (((a - lo) / width) as usize).min(bins - 1);
            d[i] += mass;
            continue;
        }
        for (i, v) in d.iter_mut().enumerate() {
            let (l, r) = (lo + i as f64 * width, lo + (i + 1) as f64 * width);
            let overlap = (b.min(r) - a.max(l)).max(0.0);
            *v += mass * overlap / (b - a);
        }
    }
    d
}

fn histogram(
    h: &mut String,
    latest: &PartitionRecord,
    done: &[&PartitionRecord],
    given: Option<&ReferenceRecord>,
) {
    let reference: Vec<&PartitionRecord> = done
        .iter()
        .copied()
        .filter(|r| !r.drift && r.partition != latest.partition && !r.score_quantiles.is_empty())
        .collect();
    let _ = writeln!(
        h,
        "<h2>Scores of {} against the reference</h2>",
        esc(&latest.partition)
    );
    if latest.score_quantiles.is_empty() {
        return;
    }
    // The reference: the `[reference]` data, else the pooled quantile function of the
    // earlier partitions that did not drift.
    let q_ref: Vec<f64> = if let Some(g) = given {
        g.score_quantiles.clone()
    } else if reference.is_empty() {
        vec![]
    } else {
        (0..latest.score_quantiles.len())
            .map(|i| {
                reference
                    .iter()
                    .map(|r| r.score_quantiles.get(i).copied().unwrap_or(f64::NAN))
                    .sum::<f64>()
                    / reference.len() as f64
            })
            .collect()
    };
    let all = latest.score_quantiles.iter().chain(q_ref.iter());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
        (a.min(v), b.max(v))
    });
    let bins = 40;
    let d_latest = density(&latest.score_quantiles, lo, hi, bins);
    let d_ref = density(&q_ref, lo, hi, bins);
    let top = d_latest
        .iter()
        .chain(d_ref.iter())
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-9)
        * 1.1;
    let bw = (W - 2.0 * PAD) / bins as f64;
    let y = |v: f64| H - PAD + (v / top) * (2.0 * PAD - H);
    let _ = writeln!(
        h,
        r#"<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="score histogram">"#
    );
    for (i, v) in d_latest.iter().enumerate() {
        let _ = writeln!(
            h,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{BLUE}" fill-opacity="0.55"/>"#,
            PAD + i as f64 * bw,
            y(*v),
            (bw - 1.0).max(0.5),
            y(0.0) - y(*v)
        );
    }
    if !q_ref.is_empty() {
        let pts: Vec<String> = d_ref
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", PAD + (i as f64 + 0.5) * bw, y(*v)))
            .collect();
        let _ = writeln!(
            h,
            r##"<polyline points="{}" fill="none" stroke="#333" stroke-width="1.5" stroke-dasharray="4 3"/>"##,
            pts.join(" ")
        );
    }
    if lo < 0.0 && hi > 0.0 {
        let x0 = PAD + (W - 2.0 * PAD) * (-lo / (hi - lo));
        let _ = writeln!(
            h,
            r#"<line x1="{x0:.1}" y1="{PAD}" x2="{x0:.1}" y2="{:.1}" stroke="{RED}" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}">τ (score 0): OOD at or left of it</text>"#,
            H - PAD,
            x0 + 4.0,
            PAD + 10.0
        );
    }
    for (v, anchor, x) in [(lo, "start", PAD), (hi, "end", W - PAD)] {
        let _ = writeln!(
            h,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{v:.2}</text>"#,
            H - PAD + 16.0
        );
    }
    let _ = writeln!(h, "</svg>");
    let _ = writeln!(
        h,
        "<p class=\"note\">Bars: {}. Dashed: {}.</p>",
        esc(&latest.partition),
        if let Some(g) = given {
            format!("the reference data {} ({} rows)", esc(&g.url), g.rows)
        } else if q_ref.is_empty() {
            "no reference yet (no earlier partition without drift)".to_string()
        } else {
            format!(
                "the {} earlier partition(s) without drift, pooled",
                reference.len()
            )
        }
    );
}

/// The latest partition's conformal p-values (spec §11) in bins of 1/[`P_BINS`]: rows
/// exchangeable with the model's calibration rows give a flat histogram, OOD rows
/// pile up at the left.
fn p_histogram(
    h: &mut String,
    spec: &DriftSpec,
    latest: &PartitionRecord,
    reference: Option<&ReferenceRecord>,
) {
    let _ = writeln!(h, "<h2>p-values of {}</h2>", esc(&latest.partition));
    let share = |hist: &[u64]| -> Vec<f64> {
        let n = hist.iter().sum::<u64>().max(1) as f64;
        hist.iter().map(|&c| c as f64 / n).collect()
    };
    let bars = share(&latest.p_histogram);
    let refs = reference
        .filter(|r| r.p_histogram.len() == P_BINS)
        .map(|r| share(&r.p_histogram));
    let flat = 1.0 / P_BINS as f64;
    let top = bars
        .iter()
        .chain(refs.iter().flatten())
        .fold(flat, |a, &b| a.max(b))
        * 1.1;
    let bw = (W - 2.0 * PAD) / P_BINS as f64;
    let y = |v: f64| H - PAD + (v / top) * (2.0 * PAD - H);
    let _ = writeln!(
        h,
        r#"<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="p-value histogram">"#
    );
    axis(h, top, y, "share of rows per p-value bin");
    for (i, v) in bars.iter().enumerate() {
        let _ = writeln!(
            h,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.6"><title>p in [{:.2}, {:.2}): {:.1}% of rows</title></rect>"#,
            PAD + i as f64 * bw,
            y(*v),
            (bw - 1.0).max(0.5),
            y(0.0) - y(*v),
            if (i as f64 + 1.0) / (P_BINS as f64) <= spec.alert.p_level + 1e-12 {
                RED
            } else {
                BLUE
            },
            i as f64 / P_BINS as f64,
            (i + 1) as f64 / P_BINS as f64,
            100.0 * v
        );
    }
    let _ = writeln!(
        h,
        r##"<line x1="{PAD}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
        y(flat),
        W - PAD,
        y(flat)
    );
    if let Some(r) = &refs {
        let pts: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", PAD + (i as f64 + 0.5) * bw, y(*v)))
            .collect();
        let _ = writeln!(
            h,
            r##"<polyline points="{}" fill="none" stroke="{GREY}" stroke-width="2"/>"##,
            pts.join(" ")
        );
    }
    for (v, anchor, x) in [(0.0, "start", PAD), (1.0, "end", W - PAD)] {
        let _ = writeln!(
            h,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="{anchor}">p = {v:.1}</text>"#,
            H - PAD + 16.0
        );
    }
    let _ = writeln!(h, "</svg>");
    let _ = writeln!(
        h,
        "<p class=\"note\">Red: bins below p = {}. {:.2}% of the rows have p &lt; {} (ID rows exchangeable with the model's calibration rows: at most about {:.0}%). Dashed: the flat histogram such rows give.{}</p>",
        spec.alert.p_level,
        100.0 * latest.low_p_rate.unwrap_or(0.0),
        spec.alert.p_level,
        100.0 * spec.alert.p_level,
        match (reference, &refs) {
            (Some(r), Some(_)) => format!(
                " Grey: the reference ({}), {:.2}% below {}.",
                esc(&r.url),
                100.0 * r.low_p_rate.unwrap_or(0.0),
                spec.alert.p_level
            ),
            _ => String::new(),
        }
    );
}

fn group_bars(h: &mut String, latest: &PartitionRecord) {
    if latest.groups.is_empty() {
        return;
    }
    let _ = writeln!(h, "<h2>OOD rate by group, {}</h2>", esc(&latest.partition));
    let row = 18.0;
    let height = PAD + row * latest.groups.len() as f64 + 10.0;
    let top = latest
        .groups
        .iter()
        .map(|g| g.ood_rate)
        .fold(latest.expected_rate, f64::max)
        .max(0.01)
        * 1.1;
    let left = 140.0;
    let x = |v: f64| left + (W - left - PAD) * v / top;
    let _ = writeln!(
        h,
        r#"<svg width="{W}" height="{height:.0}" viewBox="0 0 {W} {height:.0}" role="img" aria-label="OOD rate by group">"#
    );
    for (i, g) in latest.groups.iter().enumerate() {
        let yy = 20.0 + i as f64 * row;
        let _ = writeln!(
            h,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{left}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} of {} rows OOD, p = {:.3e}</title></rect><text x="{:.1}" y="{:.1}">{:.1}%</text>"#,
            left - 6.0,
            yy + 12.0,
            esc(&g.group),
            yy,
            (x(g.ood_rate) - left).max(0.5),
            row - 4.0,
            if g.drift { RED } else { BLUE },
            esc(&g.group),
            g.ood_rows,
            g.rows,
            g.p_value,
            x(g.ood_rate) + 4.0,
            yy + 12.0,
            100.0 * g.ood_rate
        );
    }
    let xe = x(latest.expected_rate);
    let _ = writeln!(
        h,
        r##"<line x1="{xe:.1}" y1="10" x2="{xe:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/></svg>"##,
        height - 6.0
    );
    let _ = writeln!(
        h,
        "<p class=\"note\">Dashed: the expected rate of the whole partition, {:.1}% (each group is tested against its own expected rate). Red groups drifted.</p>",
        100.0 * latest.expected_rate
    );
}

fn worst_table(h: &mut String, latest: &PartitionRecord) {
    if latest.worst.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h2>Most OOD rows, {}</h2>\n<table><tr><th>score</th>",
        esc(&latest.partition)
    );
    for (name, _) in &latest.worst[0].columns {
        let _ = write!(h, "<th class=\"l\">{}</th>", esc(name));
    }
    h.push_str("</tr>\n");
    for r in &latest.worst {
        let _ = write!(h, "<tr><td>{:.4}</td>", r.score);
        for (_, v) in &r.columns {
            let _ = write!(h, "<td class=\"l\">{}</td>", esc(v));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n<p class=\"note\">All columns and <code>reclag_explain</code> are in <code>worst/</code>.</p>\n");
}

fn partitions_table(h: &mut String, done: &[&PartitionRecord], skipped: &[&PartitionRecord]) {
    let _ = writeln!(
        h,
        "<h2>Partitions</h2>\n<table><tr><th class=\"l\">partition</th><th>rows</th><th>OOD rows</th><th>OOD rate</th><th>expected</th><th>p-value</th><th>rows with low p</th><th class=\"l\">verdict</th></tr>"
    );
    for r in done.iter().rev() {
        let verdict = if r.drift {
            if r.drift_groups.is_empty() {
                "<span class=\"drift\">drift</span>".to_string()
            } else {
                format!(
                    "<span class=\"drift\">drift</span> (groups: {})",
                    esc(&r.drift_groups.join(", "))
                )
            }
        } else {
            "ok".into()
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.3e}</td><td>{}</td><td class=\"l\">{verdict}</td></tr>",
            esc(&r.partition),
            r.rows,
            r.ood_rows,
            100.0 * r.ood_rate,
            100.0 * r.expected_rate,
            r.p_value,
            r.low_p_rate
                .map_or("–".to_string(), |v| format!("{:.2}%", 100.0 * v))
        );
    }
    h.push_str("</table>\n");
    if !skipped.is_empty() {
        h.push_str("<h2>Skipped partitions</h2>\n<table><tr><th class=\"l\">partition</th><th class=\"l\">why</th></tr>\n");
        for r in skipped {
            let _ = writeln!(
                h,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                esc(&r.partition),
                esc(r.reason.as_deref().unwrap_or("unknown"))
            );
        }
        h.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_of_uniform_quantiles_is_flat_and_sums_to_one() {
        let q: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
        let d = density(&q, 0.0, 1.0, 10);
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(d.iter().all(|v| (v - 0.1).abs() < 1e-9), "{d:?}");
    }

    #[test]
    fn critical_rate_is_the_alert_threshold() {
        let c = critical_rate(1000, 0.05, 0.01, None);
        let k = (c * 1000.0).round() as u64;
        assert!(super::super::stats::binomial_sf(k, 1000, 0.05) < 0.01);
        assert!(super::super::stats::binomial_sf(k - 1, 1000, 0.05) >= 0.01);
        // Against a reference's counts the threshold is Fisher's, and higher: the
        // reference is a sample too.
        let f = critical_rate(700, 0.07, 0.01, Some((4900, 343)));
        let k = (f * 700.0).round() as u64;
        assert!(super::super::stats::fisher_sf(k, 700, 343, 4900) < 0.01);
        assert!(super::super::stats::fisher_sf(k - 1, 700, 343, 4900) >= 0.01);
        assert!(f > critical_rate(700, 0.07, 0.01, None));
    }
}
