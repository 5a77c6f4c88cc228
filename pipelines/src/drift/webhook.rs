//! POSTs a run's summary to a URL, retrying what may be transient. A failed delivery
//! never undoes or fails the run: its outputs are committed, and the summary and
//! stderr say the webhook failed.

use std::time::Duration;

use super::spec::WebhookSpec;

/// Returns the attempt that succeeded (1-based), or why the last one failed.
pub fn post(spec: &WebhookSpec, body: &str) -> Result<u32, String> {
    crate::store::block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("webhook {}: {e}", spec.url))?;
        let mut delay = Duration::from_millis(spec.backoff_ms);
        let mut last = String::new();
        for attempt in 1..=spec.retries + 1 {
            let sent = client
                .post(&spec.url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(attempt),
                // A client error other than rate limiting will not get better.
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    return Err(format!(
                        "webhook {} refused the summary with HTTP {}; check webhook.url",
                        spec.url,
                        r.status()
                    ));
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if attempt <= spec.retries {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(format!(
            "webhook {}: {} attempt(s) failed, the last with {last}",
            spec.url,
            spec.retries + 1
        ))
    })
}
