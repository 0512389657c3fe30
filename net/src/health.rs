//! `/healthz` and `/readyz`: what orchestrators (systemd, Kubernetes, a load
//! balancer) ask a server before sending it work.
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz`
//! runs the role's checks and answers 200 if every one passes, 503 if any
//! fails; the body has one line per check in the style of Kubernetes'
//! verbose readyz: `[+]name ok` or `[-]name failed: reason`.

use std::sync::Arc;

/// One readiness check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name (`topology`, `registered`, `clock`, `links`, `storage`).
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed, or a note on why it passed (`skipped: …`).
    pub detail: String,
}

impl Check {
    /// A passing check, with an optional note.
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    /// A failing check and why.
    pub fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Runs a role's checks (called on every `/readyz` request, so cheap).
pub type Readiness = Arc<dyn Fn() -> Vec<Check> + Send + Sync>;

/// Whether every check passed, and the body `/readyz` answers with.
pub fn render(checks: &[Check]) -> (bool, String) {
    let mut body = String::new();
    let mut ready = true;
    for c in checks {
        ready &= c.ok;
        let (mark, word) = if c.ok { ('+', "ok") } else { ('-', "failed") };
        body += &format!("[{mark}]{} {word}", c.name);
        if !c.detail.is_empty() {
            body += &format!(": {}", c.detail);
        }
        body.push('\n');
    }
    body += if ready {
        "readyz check passed\n"
    } else {
        "readyz check failed\n"
    };
    (ready, body)
}

/// The `/healthz` and `/readyz` routes, to merge into a role's router.
pub fn routes<S: Clone + Send + Sync + 'static>(ready: Readiness) -> axum::Router<S> {
    use axum::http::StatusCode;
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready.clone();
                async move {
                    // The checks take locks the packet path also takes:
                    // off the async threads.
                    let checks = tokio::task::spawn_blocking(move || ready())
                        .await
                        .unwrap_or_else(|e| vec![Check::fail("checks", e.to_string())]);
                    let (ok, body) = render(&checks);
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, body)
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_check_makes_the_server_unready_and_is_named() {
        let (ok, body) = render(&[
            Check::pass("topology", ""),
            Check::fail("clock", "120 s behind the directory's"),
            Check::pass("links", "skipped: no loops"),
        ]);
        assert!(!ok);
        assert_eq!(
            body,
            "[+]topology ok\n[-]clock failed: 120 s behind the directory's\n\
             [+]links ok: skipped: no loops\nreadyz check failed\n"
        );
        let (ok, body) = render(&[Check::pass("topology", "")]);
        assert!(ok);
        assert!(body.ends_with("readyz check passed\n"), "{body}");
    }
}
