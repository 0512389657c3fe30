//! The Prometheus `/metrics` endpoint every role serves, beside
//! `/healthz` and `/readyz` ([`crate::health`]).

use prometheus::{Encoder, Registry, TextEncoder};
use std::future::Future;

/// Serves `registry` at `GET /metrics`, and `ready`'s checks at `/readyz`
/// (with `/healthz`), on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: crate::health::Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = Vec::new();
                    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        out,
                    )
                }
            }),
        )
        .merge(crate::health::routes(ready));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
