//! HTTP on loopback: the web page's files and the WebSocket API, behind
//! the checks of [`crate::access`].

use crate::Ctx;
use crate::access::{Access, Refusal};
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Largest request frame: a 256 KiB upload chunk in base64 fits.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// The page's files, built into the binary (no install step, no CDN).
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
    (
        "/sw.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/sw.js"),
    ),
    (
        "/manifest.webmanifest",
        "application/manifest+json",
        include_str!("../web/manifest.webmanifest"),
    ),
    (
        "/icon.svg",
        "image/svg+xml",
        include_str!("../web/icon.svg"),
    ),
];

/// What the HTTP server's handlers share: the daemon's context and the
/// checks every request passes.
pub struct Served {
    pub ctx: Arc<Ctx>,
    pub access: Access,
}

/// Serves until the daemon stops.
pub async fn serve(served: Arc<Served>, listener: tokio::net::TcpListener) {
    let ctx = &served.ctx;
    let mut app = Router::new().route("/v1/ws", get(ws));
    for (path, _, _) in FILES {
        app = app.route(path, get(file));
    }
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            served.clone(),
            host_check,
        ))
        .with_state(served.clone());
    let mut stop = ctx.stop.subscribe();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "the daemon's HTTP server stopped");
    }
}

fn refuse(r: Refusal) -> Response {
    tracing::debug!(reason = r.text(), "refused a request");
    (
        StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN),
        r.text(),
    )
        .into_response()
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every request: the `Host` is ours (DNS rebinding refused).
async fn host_check(State(s): State<Arc<Served>>, req: Request, next: Next) -> Response {
    if let Err(r) = s.access.check_host(header_str(req.headers(), header::HOST)) {
        return refuse(r);
    }
    next.run(req).await
}

async fn file(req: Request) -> Response {
    let Some((_, mime, body)) = FILES.iter().find(|(p, _, _)| *p == req.uri().path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut res = (*body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    // The page's scripts and styles come from here alone; pictures and
    // audio are blob: URLs made from API data.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: blob:; media-src 'self' blob:; \
             connect-src 'self' ws://127.0.0.1:* ws://localhost:* ws://[::1]:*; \
             object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The token from the query string (`?token=…`).
fn query_token(q: Option<&str>) -> Option<&str> {
    q?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

async fn ws(State(s): State<Arc<Served>>, req: Request) -> Response {
    let h = req.headers();
    if let Err(r) = s.access.check_api(
        header_str(h, header::ORIGIN),
        query_token(req.uri().query()),
        header_str(h, header::AUTHORIZATION),
    ) {
        return refuse(r);
    }
    let (mut parts, _) = req.into_parts();
    let upgrade =
        match <WebSocketUpgrade as axum::extract::FromRequestParts<_>>::from_request_parts(
            &mut parts, &s,
        )
        .await
        {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
    upgrade
        .max_message_size(MAX_REQUEST)
        .max_frame_size(MAX_REQUEST)
        .on_upgrade(move |socket| connection(s.ctx.clone(), socket))
}

/// One API connection: requests answered in order, events passed on.
async fn connection(ctx: Arc<Ctx>, mut socket: WebSocket) {
    let mut events = ctx.events.subscribe();
    let mut stop = ctx.stop.subscribe();
    let mut conn = crate::api::Conn::default();
    let hello = crate::api::hello(&ctx);
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            m = socket.recv() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let e = crate::api::bad_request("binary frames are not used: send JSON text");
                        if socket.send(Message::Text(e.into())).await.is_err() { return; }
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping, pong: axum answers pings
                    Some(Err(e)) => {
                        if too_large(e) {
                            // Say why, so the page can tell its user; the
                            // rest of the frame is not read (it could be
                            // any size), so the connection ends here.
                            let _ = socket
                                .send(Message::Close(Some(CloseFrame {
                                    code: 1009,
                                    reason: "a frame over 1 MiB: split uploads into upload calls".into(),
                                })))
                                .await;
                        }
                        return;
                    }
                    None => return,
                };
                let reply = crate::api::request(&ctx, &mut conn, text.as_str()).await;
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
            e = events.recv() => match e {
                Ok(e) => {
                    if socket.send(Message::Text(e.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A reader this slow would hold every event in memory.
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: 1008,
                            reason: "events not read fast enough: reconnect and ask history".into(),
                        })))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stopped(&mut stop) => {
                let _ = socket.send(Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: "the daemon is stopping".into(),
                }))).await;
                return;
            }
        }
    }
}

/// Whether a read failed on a frame or message over [`MAX_REQUEST`].
fn too_large(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Resolves once the daemon stops.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_query() {
        assert_eq!(query_token(Some("token=ab")), Some("ab"));
        assert_eq!(query_token(Some("x=1&token=cd")), Some("cd"));
        assert_eq!(query_token(Some("x=1")), None);
        assert_eq!(query_token(None), None);
    }
}
