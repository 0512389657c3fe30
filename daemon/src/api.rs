//! The API's operations and events (docs/api.md), and the tasks that turn
//! the client's inbox, statuses and group changes into history and events.

use crate::Ctx;
use crate::history::{AttachmentMeta, Conv, Message};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use client_sdk::state::Changes;
use client_sdk::{ContactId, ContentKind, GroupId, MessageId, Received, Status};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of one upload call (decoded).
pub const MAX_UPLOAD_CHUNK: usize = 256 * 1024;
/// Uploads one connection may hold at once.
pub const MAX_UPLOADS: usize = 4;
/// An upload not sent within this time is dropped.
pub const UPLOAD_TTL: Duration = Duration::from_secs(600);
/// Messages one `history` call returns at most.
pub const MAX_PAGE: usize = 500;

/// What one connection holds between requests.
#[derive(Default)]
pub struct Conn {
    uploads: HashMap<u64, (Vec<u8>, Instant)>,
    next_upload: u64,
}

/// An API failure: code, whose fault, text.
struct Fail {
    code: &'static str,
    fault: &'static str,
    message: String,
    extra: Option<Value>,
}

impl Fail {
    fn app(code: &'static str, message: impl Into<String>) -> Self {
        Fail {
            code,
            fault: "app",
            message: message.into(),
            extra: None,
        }
    }

    fn user(code: &'static str, message: impl Into<String>) -> Self {
        Fail {
            code,
            fault: "user",
            message: message.into(),
            extra: None,
        }
    }
}

impl From<client_sdk::Error> for Fail {
    fn from(e: client_sdk::Error) -> Self {
        use client_sdk::{Error as E, Fault};
        let code = match &e {
            E::InvalidInvite(_) => "invalid_invite",
            E::UnknownContact(_) => "unknown_contact",
            E::UnknownGroup(_) => "unknown_group",
            E::MessageTooLarge { .. } => "too_large",
            E::KeyChanged { .. } => "key_changed",
            E::Busy => "busy",
            E::Closed => "closed",
            E::Group(_) => "group",
            _ => "client",
        };
        let extra = match &e {
            E::KeyChanged { name, old, new } => Some(json!({
                "name": name, "old": hex::encode(old.0), "new": hex::encode(new.0)
            })),
            _ => None,
        };
        let fault = match e.fault() {
            Fault::Application => "app",
            Fault::User => "user",
            Fault::Network => "network",
            Fault::Local => "local",
            _ => "bug",
        };
        Fail {
            code,
            fault,
            message: e.to_string(),
            extra,
        }
    }
}

impl From<crate::Error> for Fail {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Client(c) => c.into(),
            other => Fail {
                code: "local",
                fault: "local",
                message: other.to_string(),
                extra: None,
            },
        }
    }
}

fn fail_json(reply: Value, f: Fail) -> String {
    let mut err = json!({"code": f.code, "fault": f.fault, "message": f.message});
    if let (Some(Value::Object(x)), Value::Object(e)) = (f.extra, &mut err) {
        e.extend(x);
    }
    json!({"reply": reply, "ok": false, "error": err}).to_string()
}

/// A reply to something that was not a request.
pub fn bad_request(why: &str) -> String {
    fail_json(Value::Null, Fail::app("bad_request", why))
}

/// The first frame of every connection.
pub fn hello(ctx: &Ctx) -> String {
    json!({
        "event": "hello",
        "api": 1,
        "version": env!("CARGO_PKG_VERSION"),
        "me": hex::encode(ctx.me.0),
    })
    .to_string()
}

/// Answers one request frame.
pub async fn request(ctx: &Arc<Ctx>, conn: &mut Conn, text: &str) -> String {
    let req: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request("a request is a JSON object"),
        Err(e) => return bad_request(&format!("not JSON: {e}")),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(op) = req.get("op").and_then(Value::as_str) else {
        return fail_json(id, Fail::app("bad_request", "a request needs \"op\""));
    };
    match dispatch(ctx, conn, op, &req).await {
        Ok(result) => json!({"reply": id, "ok": true, "result": result}).to_string(),
        Err(f) => fail_json(id, f),
    }
}

fn s<'a>(req: &'a Value, key: &str) -> Result<&'a str, Fail> {
    req.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Fail::app("bad_request", format!("\"{key}\" (a string) is missing")))
}

fn u(req: &Value, key: &str) -> Result<Option<u64>, Fail> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Fail::app("bad_request", format!("\"{key}\" is not a whole number"))),
    }
}

fn id32(hexs: &str, what: &str) -> Result<[u8; 32], Fail> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexs, &mut out)
        .map_err(|_| Fail::app("bad_request", format!("{what} is not 64 hex digits")))?;
    Ok(out)
}

fn contact(req: &Value, key: &str) -> Result<ContactId, Fail> {
    Ok(ContactId(id32(s(req, key)?, key)?))
}

fn group(req: &Value, key: &str) -> Result<GroupId, Fail> {
    Ok(GroupId(id32(s(req, key)?, key)?))
}

fn conversation(req: &Value) -> Result<Conv, Fail> {
    let c = req
        .get("conversation")
        .ok_or_else(|| Fail::app("bad_request", "\"conversation\" is missing"))?;
    if let Some(x) = c.get("contact").and_then(Value::as_str) {
        id32(x, "contact")?;
        Ok(Conv::Contact(x.to_ascii_lowercase()))
    } else if let Some(x) = c.get("group").and_then(Value::as_str) {
        id32(x, "group")?;
        Ok(Conv::Group(x.to_ascii_lowercase()))
    } else {
        Err(Fail::app(
            "bad_request",
            "\"conversation\" is {\"contact\": id} or {\"group\": id}",
        ))
    }
}

/// Where a send goes: `to` (a contact) or `group`.
fn target(req: &Value) -> Result<Conv, Fail> {
    if let Some(x) = req.get("to").and_then(Value::as_str) {
        id32(x, "to")?;
        Ok(Conv::Contact(x.to_ascii_lowercase()))
    } else if let Some(x) = req.get("group").and_then(Value::as_str) {
        id32(x, "group")?;
        Ok(Conv::Group(x.to_ascii_lowercase()))
    } else {
        Err(Fail::app("bad_request", "a send needs \"to\" or \"group\""))
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Queued => "queued",
        Status::Sent => "sent",
        Status::Stored => "stored",
        Status::Read => "read",
        Status::FailedAttempts => "failed_attempts",
        Status::FailedExpired => "failed_expired",
        Status::FailedRefused => "failed_refused",
        Status::FailedUndecryptable => "failed_undecryptable",
    }
}

fn kind_name(k: Option<ContentKind>, mime: Option<&str>) -> &'static str {
    match k {
        Some(ContentKind::Text) => "text",
        Some(ContentKind::Image) => "image",
        Some(ContentKind::Audio) => "audio",
        Some(ContentKind::File) => "file",
        // A preview says what is coming by its MIME type.
        Some(ContentKind::Preview) => match mime {
            Some(m) if m.starts_with("image/") => "image",
            Some(m) if m.starts_with("audio/") => "audio",
            _ => "file",
        },
        _ => "bytes",
    }
}

fn parse_kind(k: &str) -> Result<ContentKind, Fail> {
    match k {
        "image" => Ok(ContentKind::Image),
        "audio" => Ok(ContentKind::Audio),
        "file" => Ok(ContentKind::File),
        _ => Err(Fail::app("bad_request", "\"kind\" is image, audio or file")),
    }
}

/// 60 digits in twelve groups of five.
fn grouped(digits: &str) -> String {
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn contacts_json(ctx: &Ctx) -> Value {
    let h = ctx.history.lock().await;
    let counts = h.unread_all();
    let list: Vec<Value> = ctx
        .client
        .contacts()
        .into_iter()
        .map(|c| {
            let id = hex::encode(c.0);
            let (unread, last) = counts
                .get(&Conv::Contact(id.clone()))
                .copied()
                .unwrap_or((0, 0));
            json!({
                "id": id,
                "name": ctx.client.contact_name(&c).unwrap_or_default(),
                "verified": h.verified(&id),
                "safety_number": grouped(ctx.client.safety_number(&c).as_digits()),
                "unread": unread,
                "last_seq": last,
            })
        })
        .collect();
    Value::Array(list)
}

/// A group, with its unread count from `counts` (`History::unread_all`).
fn group_json(ctx: &Ctx, g: &GroupId, counts: &HashMap<&Conv, (u64, u64)>) -> Value {
    let id = hex::encode(g.0);
    let (epoch, members) = ctx.client.group_members(g).unwrap_or((0, Vec::new()));
    let (unread, last) = counts
        .get(&Conv::Group(id.clone()))
        .copied()
        .unwrap_or((0, 0));
    let members: Vec<Value> = members
        .into_iter()
        .map(|(c, name)| {
            let me = c == ctx.me;
            let name = if name.is_empty() {
                ctx.client.contact_name(&c).unwrap_or_default()
            } else {
                name
            };
            json!({"id": hex::encode(c.0), "name": name, "me": me})
        })
        .collect();
    json!({
        "id": id,
        "name": ctx.client.group_name(g).unwrap_or_default(),
        "epoch": epoch,
        "members": members,
        "unread": unread,
        "last_seq": last,
    })
}

async fn groups_json(ctx: &Ctx) -> Value {
    let h = ctx.history.lock().await;
    let counts = h.unread_all();
    Value::Array(
        ctx.client
            .groups()
            .iter()
            .map(|g| group_json(ctx, g, &counts))
            .collect(),
    )
}

async fn one_group(ctx: &Ctx, g: &GroupId) -> Value {
    let h = ctx.history.lock().await;
    group_json(ctx, g, &h.unread_all())
}

fn network_json(ctx: &Ctx) -> Value {
    let h = ctx.client.health();
    let (msgs, bytes) = ctx.client.outbox_len();
    let topo = ctx.client.topology();
    let age_s = ctx
        .client
        .network_time_ms()
        .saturating_sub(topo.valid_from_ms)
        / 1000;
    json!({
        "connected": ctx.client.since_last_frame() < Duration::from_secs(10),
        "cover": ctx.client.cover_on(),
        "topology_epoch": h.topology_epoch,
        "topology_age_s": age_s,
        "topology_nodes": topo.nodes.len(),
        "topology_usable_until_ms": h.topology_usable_until_ms,
        "clock_offset_ms": h.clock_offset_ms,
        "outbox_messages": msgs,
        "outbox_bytes": bytes,
    })
}

async fn emit_contacts(ctx: &Ctx) {
    let c = contacts_json(ctx).await;
    ctx.emit(json!({"event": "contacts", "contacts": c}));
}

async fn emit_groups(ctx: &Ctx) {
    let g = groups_json(ctx).await;
    ctx.emit(json!({"event": "groups", "groups": g}));
}

fn message_event(m: &Message) -> Value {
    json!({"event": "message", "message": m})
}

/// Records an outgoing message and tells every connection.
async fn record_sent(
    ctx: &Ctx,
    conv: Conv,
    id: MessageId,
    kind: &str,
    text: Option<String>,
    attachment: Option<AttachmentMeta>,
    data: Option<Vec<u8>>,
) -> Result<Value, Fail> {
    let m = Message {
        seq: 0,
        id: hex::encode(id),
        conversation: conv,
        from: hex::encode(ctx.me.0),
        outgoing: true,
        time_ms: ctx.client.network_time_ms(),
        kind: kind.into(),
        text,
        has_data: data.is_some(),
        attachment,
        status: Some(
            ctx.client
                .status(&id)
                .map(status_name)
                .unwrap_or("queued")
                .into(),
        ),
        awaiting: None,
        data_id: None,
    };
    let mut h = ctx.history.lock().await;
    let (m, ch) = h.add(m, data);
    if let Err(e) = ctx.save(&mut h, ch).await {
        // The message is on its way (the SDK has it): report it, and write
        // the record with the next change.
        tracing::warn!(error = %e, "cannot write the history; will retry");
    }
    // Announced under the lock: its status events come after it.
    ctx.emit(message_event(&m));
    drop(h);
    Ok(json!({"message": m}))
}

async fn send_text(ctx: &Ctx, conv: Conv, text: String) -> Result<Value, Fail> {
    let id = match &conv {
        Conv::Contact(c) => {
            let to = ContactId(id32(c, "to")?);
            ctx.client
                .send_content(&to, ContentKind::Text, None, text.as_bytes())
                .await?
        }
        Conv::Group(g) => {
            let g = GroupId(id32(g, "group")?);
            ctx.client
                .send_group_content(&g, ContentKind::Text, None, text.as_bytes())
                .await?
        }
    };
    record_sent(ctx, conv, id, "text", Some(text), None, None).await
}

async fn send_file(
    ctx: &Ctx,
    conv: Conv,
    kind: ContentKind,
    meta: AttachmentMeta,
    data: Vec<u8>,
) -> Result<Value, Fail> {
    let att = meta.to_sdk();
    let id = match &conv {
        Conv::Contact(c) => {
            let to = ContactId(id32(c, "to")?);
            ctx.client.send_attachment(&to, kind, &att, &data).await?.1
        }
        Conv::Group(g) => {
            let g = GroupId(id32(g, "group")?);
            ctx.client
                .send_group_content(&g, kind, Some(&att), &data)
                .await?
        }
    };
    let k = kind_name(Some(kind), None);
    record_sent(ctx, conv, id, k, None, Some(meta), Some(data)).await
}

async fn dispatch(ctx: &Arc<Ctx>, conn: &mut Conn, op: &str, req: &Value) -> Result<Value, Fail> {
    match op {
        "network" => Ok(network_json(ctx)),
        "identities" => Ok(json!({"identities": [{
            "id": hex::encode(ctx.me.0),
            "default": true,
        }]})),
        "invite" => {
            let name = s(req, "name")?;
            let invite = ctx.client.invite(name);
            let qr = client_sdk::verify::qr_svg(&invite)
                .map_err(|e| Fail::app("invite", e.to_string()))?;
            Ok(json!({"invite": invite, "qr_svg": qr}))
        }
        "contacts" => Ok(json!({"contacts": contacts_json(ctx).await})),
        "add_contact" => {
            let c = ctx.client.add_contact(s(req, "invite")?.trim())?;
            if let Some(name) = req.get("name").and_then(Value::as_str)
                && !name.trim().is_empty()
            {
                ctx.client.rename_contact(&c, name.trim())?;
            }
            emit_contacts(ctx).await;
            Ok(json!({"contact": one_contact(ctx, &c).await}))
        }
        "rename_contact" => {
            let c = contact(req, "contact")?;
            ctx.client.rename_contact(&c, s(req, "name")?)?;
            emit_contacts(ctx).await;
            Ok(json!({"contact": one_contact(ctx, &c).await}))
        }
        "remove_contact" => {
            let c = contact(req, "contact")?;
            ctx.client.remove_contact(&c)?;
            let mut h = ctx.history.lock().await;
            let ch = h.set_verified(&hex::encode(c.0), false);
            ctx.save(&mut h, ch).await?;
            drop(h);
            emit_contacts(ctx).await;
            Ok(json!({}))
        }
        "verify_contact" => {
            let c = contact(req, "contact")?;
            if !ctx.client.contacts().contains(&c) {
                return Err(client_sdk::Error::UnknownContact(c).into());
            }
            if !ctx
                .client
                .safety_number(&c)
                .matches(s(req, "safety_number")?)
            {
                return Err(Fail::user(
                    "mismatch",
                    "the safety numbers differ: the invites may have been swapped; do not \
                     trust this contact until you know why",
                ));
            }
            let mut h = ctx.history.lock().await;
            let ch = h.set_verified(&hex::encode(c.0), true);
            ctx.save(&mut h, ch).await?;
            drop(h);
            emit_contacts(ctx).await;
            Ok(json!({"contact": one_contact(ctx, &c).await}))
        }
        "history" => {
            let conv = conversation(req)?;
            let limit = u(req, "limit")?.unwrap_or(50).min(MAX_PAGE as u64) as usize;
            let before = u(req, "before")?;
            let msgs = ctx.history.lock().await.page(&conv, before, limit);
            Ok(json!({"messages": msgs}))
        }
        "mark_read" => {
            let conv = conversation(req)?;
            let mut h = ctx.history.lock().await;
            let ch = h.mark_read(&conv);
            ctx.save(&mut h, ch).await?;
            drop(h);
            match conv {
                Conv::Contact(_) => emit_contacts(ctx).await,
                Conv::Group(_) => emit_groups(ctx).await,
            }
            Ok(json!({}))
        }
        "send_text" => {
            let conv = target(req)?;
            send_text(ctx, conv, s(req, "text")?.to_string()).await
        }
        "upload" => {
            let data = B64
                .decode(s(req, "data")?)
                .map_err(|_| Fail::app("bad_request", "\"data\" is not base64"))?;
            if data.len() > MAX_UPLOAD_CHUNK {
                return Err(Fail::app(
                    "too_large",
                    format!("an upload call carries at most {MAX_UPLOAD_CHUNK} bytes"),
                ));
            }
            conn.uploads.retain(|_, (_, t)| t.elapsed() < UPLOAD_TTL);
            let up = match u(req, "upload")? {
                Some(up) => up,
                None => {
                    if conn.uploads.len() >= MAX_UPLOADS {
                        return Err(Fail::app(
                            "busy",
                            format!("at most {MAX_UPLOADS} uploads at once: send or drop one"),
                        ));
                    }
                    conn.next_upload += 1;
                    conn.uploads
                        .insert(conn.next_upload, (Vec::new(), Instant::now()));
                    conn.next_upload
                }
            };
            let (buf, t) = conn
                .uploads
                .get_mut(&up)
                .ok_or_else(|| Fail::app("unknown_upload", "no such upload (or it expired)"))?;
            if buf.len() + data.len() > client_sdk::MAX_BODY_LEN {
                conn.uploads.remove(&up);
                return Err(Fail::app(
                    "too_large",
                    format!(
                        "a message is at most {} bytes; the upload was dropped",
                        client_sdk::MAX_BODY_LEN
                    ),
                ));
            }
            buf.extend_from_slice(&data);
            *t = Instant::now();
            Ok(json!({"upload": up, "size": buf.len()}))
        }
        "send_file" => {
            let conv = target(req)?;
            let kind = parse_kind(s(req, "kind")?)?;
            conn.uploads.retain(|_, (_, t)| t.elapsed() < UPLOAD_TTL);
            let upload = u(req, "upload")?;
            let data = match (upload, req.get("data").and_then(Value::as_str)) {
                // Copied, not taken: a send refused for now (busy) can be
                // tried again with the same upload.
                (Some(up), _) => conn
                    .uploads
                    .get(&up)
                    .ok_or_else(|| Fail::app("unknown_upload", "no such upload (or it expired)"))?
                    .0
                    .clone(),
                (None, Some(d)) => B64
                    .decode(d)
                    .map_err(|_| Fail::app("bad_request", "\"data\" is not base64"))?,
                (None, None) => {
                    return Err(Fail::app(
                        "bad_request",
                        "send_file needs \"upload\" or \"data\"",
                    ));
                }
            };
            let thumbnail = req.get("thumbnail").and_then(Value::as_str).unwrap_or("");
            let thumb = B64
                .decode(thumbnail)
                .map_err(|_| Fail::app("bad_request", "\"thumbnail\" is not base64"))?;
            if thumb.len() > client_sdk::content::MAX_THUMBNAIL {
                return Err(Fail::app(
                    "too_large",
                    format!(
                        "a thumbnail is at most {} bytes",
                        client_sdk::content::MAX_THUMBNAIL
                    ),
                ));
            }
            let meta = AttachmentMeta {
                name: s(req, "name")?.to_string(),
                mime: s(req, "mime")?.to_string(),
                size: data.len() as u64,
                width: u(req, "width")?.unwrap_or(0).min(u16::MAX as u64) as u16,
                height: u(req, "height")?.unwrap_or(0).min(u16::MAX as u64) as u16,
                duration_ms: u(req, "duration_ms")?.unwrap_or(0).min(u32::MAX as u64) as u32,
                thumbnail: B64.encode(&thumb),
            };
            let sent = send_file(ctx, conv, kind, meta, data).await?;
            if let Some(up) = upload {
                conn.uploads.remove(&up);
            }
            Ok(sent)
        }
        "attachment" => {
            let seq =
                u(req, "seq")?.ok_or_else(|| Fail::app("bad_request", "\"seq\" is missing"))?;
            let h = ctx.history.lock().await;
            let m = h
                .get(seq)
                .ok_or_else(|| Fail::app("unknown_message", "no message with that seq"))?;
            let a = m
                .attachment
                .clone()
                .ok_or_else(|| Fail::app("bad_request", "that message has no attachment"))?;
            let data = h.data(seq).ok_or_else(|| {
                Fail::app(
                    if m.awaiting.is_some() { "not_arrived" } else { "dropped" },
                    "the data is not here (still on its way, or dropped to keep the history's bound)",
                )
            })?;
            Ok(json!({"mime": a.mime, "name": a.name, "data": B64.encode(data)}))
        }
        "retry" => {
            let seq =
                u(req, "seq")?.ok_or_else(|| Fail::app("bad_request", "\"seq\" is missing"))?;
            let (m, data) = {
                let h = ctx.history.lock().await;
                let m = h
                    .get(seq)
                    .cloned()
                    .ok_or_else(|| Fail::app("unknown_message", "no message with that seq"))?;
                let data = h.data(seq).map(<[u8]>::to_vec);
                (m, data)
            };
            if !m.outgoing || !m.status.as_deref().is_some_and(|s| s.starts_with("failed")) {
                return Err(Fail::app(
                    "bad_request",
                    "only a failed outgoing message is retried",
                ));
            }
            match (m.kind.as_str(), m.attachment, data) {
                ("text", _, _) => send_text(ctx, m.conversation, m.text.unwrap_or_default()).await,
                (k, Some(meta), Some(data)) => {
                    send_file(ctx, m.conversation, parse_kind(k)?, meta, data).await
                }
                _ => Err(Fail::app("dropped", "the message's data is no longer kept")),
            }
        }
        "groups" => Ok(json!({"groups": groups_json(ctx).await})),
        "create_group" => {
            let g = ctx.client.create_group(s(req, "name")?).await?;
            emit_groups(ctx).await;
            Ok(json!({"group": one_group(ctx, &g).await}))
        }
        "group_invite" => {
            let (g, c) = (group(req, "group")?, contact(req, "contact")?);
            ctx.client.invite_to_group(&g, &c).await?;
            emit_groups(ctx).await;
            Ok(json!({"group": one_group(ctx, &g).await}))
        }
        "group_remove" => {
            let (g, c) = (group(req, "group")?, contact(req, "contact")?);
            ctx.client.remove_from_group(&g, &c).await?;
            emit_groups(ctx).await;
            Ok(json!({"group": one_group(ctx, &g).await}))
        }
        "group_leave" => {
            ctx.client.leave_group(&group(req, "group")?).await?;
            emit_groups(ctx).await;
            Ok(json!({}))
        }
        other => Err(Fail::app("unknown_op", format!("no operation \"{other}\""))),
    }
}

async fn one_contact(ctx: &Ctx, c: &ContactId) -> Value {
    let id = hex::encode(c.0);
    match contacts_json(ctx).await {
        Value::Array(v) => v
            .into_iter()
            .find(|x| x["id"] == id.as_str())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Records what arrived; returns the message to announce.
async fn take_received(ctx: &Ctx, r: Received) -> Result<Option<Message>, crate::Error> {
    let from = hex::encode(r.from.0);
    let id = hex::encode(r.id);
    let mut h = ctx.history.lock().await;
    if let Some(seq) = h.awaiting(&from, &id)
        && let Some((m, ch)) = h.complete(seq, r.body.clone())
    {
        ctx.save(&mut h, ch).await?;
        return Ok(Some(m));
    }
    if h.has_incoming(&from, &id) {
        return Ok(None); // handed over again after a restart: recorded already
    }
    let conv = match r.group {
        Some(g) => Conv::Group(hex::encode(g.0)),
        None => Conv::Contact(from.clone()),
    };
    let mime = r.attachment.as_ref().map(|a| a.mime.as_str());
    let kind = kind_name(r.kind, mime);
    let preview = r.kind == Some(ContentKind::Preview);
    let text = match r.kind {
        Some(ContentKind::Text) | None => String::from_utf8(r.body.clone()).ok(),
        _ => None,
    };
    let data = (!preview && text.is_none()).then_some(r.body);
    let m = Message {
        seq: 0,
        id,
        conversation: conv,
        from,
        outgoing: false,
        time_ms: ctx.client.network_time_ms(),
        kind: kind.into(),
        text,
        attachment: r.attachment.as_ref().map(AttachmentMeta::from_sdk),
        has_data: data.is_some(),
        status: None,
        awaiting: r
            .attachment
            .as_ref()
            .and_then(|a| a.preview_of)
            .filter(|_| preview)
            .map(hex::encode),
        data_id: None,
    };
    let (m, ch) = h.add(m, data);
    ctx.save(&mut h, ch).await?;
    Ok(Some(m))
}

/// The client's inbox into the history: each message is written before
/// the next is asked for (which tells the SDK the last one is saved).
pub async fn inbox_task(ctx: Arc<Ctx>, mut inbox: client_sdk::Inbox) {
    while let Some(r) = inbox.recv().await {
        let group = r.group.is_some();
        let mut taken = take_received(&ctx, r).await;
        let mut wait = Duration::from_millis(500);
        while let Err(e) = &taken {
            // Not on disk yet: do not ask for the next message (that would
            // tell the SDK this one is saved) until the write goes through.
            tracing::error!(error = %e, "cannot write the history; retrying before taking more");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
            let mut h = ctx.history.lock().await;
            taken = match ctx.save(&mut h, Changes::default()).await {
                Ok(()) => Ok(None),
                Err(e) => Err(e),
            };
        }
        if let Ok(Some(m)) = taken {
            ctx.emit(message_event(&m));
            if group {
                emit_groups(&ctx).await;
            } else {
                emit_contacts(&ctx).await;
            }
        }
    }
}

async fn set_status(ctx: &Ctx, id: &MessageId, st: Status) {
    let idh = hex::encode(id);
    let mut h = ctx.history.lock().await;
    let Some(seq) = h.outgoing_seq(&idh) else {
        return;
    };
    let Some((_, ch)) = h.set_status(seq, status_name(st)) else {
        return; // unchanged, or a stale report of an earlier status
    };
    if let Err(e) = ctx.save(&mut h, ch).await {
        tracing::warn!(error = %e, "cannot write a status to the history; will retry");
    }
    // Under the lock: status events go out in the order they were recorded.
    ctx.emit(json!({"event": "status", "seq": seq, "id": idh, "status": status_name(st)}));
}

/// Status changes into the history and to every connection.
pub async fn status_task(ctx: Arc<Ctx>) {
    let mut updates = ctx.client.subscribe_status();
    while let Some((id, st)) = updates.next().await {
        set_status(&ctx, &id, st).await;
    }
}

/// Group changes to every connection.
pub async fn groups_task(ctx: Arc<Ctx>) {
    let mut changes = ctx.client.subscribe_groups();
    // Each event lists every group: changes skipped by a slow reader are
    // in the next one.
    while changes.next().await.is_some() {
        emit_groups(&ctx).await;
    }
}

/// Every 500 ms: transfer progress, statuses a missed update left behind
/// (a status that changed before its message was recorded); every 5 s the
/// network's state.
pub async fn ticker_task(ctx: Arc<Ctx>) {
    let mut last: HashMap<(u64, bool), (u32, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let (unfinished, awaiting) = {
            let mut h = ctx.history.lock().await;
            // Writes that failed earlier go again.
            if let Err(e) = ctx.save(&mut h, Changes::default()).await {
                tracing::warn!(error = %e, "cannot write the history; will retry");
            }
            (h.unfinished(), h.awaiting_all())
        };
        let mut seen = Vec::new();
        for (seq, idh) in unfinished {
            let mut id = [0u8; 16];
            if hex::decode_to_slice(&idh, &mut id).is_err() {
                continue;
            }
            if let Some(st) = ctx.client.status(&id) {
                set_status(&ctx, &id, st).await;
            }
            if let Some(p) = ctx.client.progress(&id) {
                progress(&ctx, &mut last, seq, "send", p);
                seen.push((seq, true));
            }
        }
        for (seq, from, idh) in awaiting {
            let (mut id, mut c) = ([0u8; 16], [0u8; 32]);
            if hex::decode_to_slice(&idh, &mut id).is_err()
                || hex::decode_to_slice(&from, &mut c).is_err()
            {
                continue;
            }
            if let Some(p) = ctx.client.receive_progress(&ContactId(c), &id) {
                progress(&ctx, &mut last, seq, "receive", p);
                seen.push((seq, false));
            }
        }
        last.retain(|k, _| seen.contains(k));
        if n % 10 == 1 {
            ctx.emit(json!({"event": "network", "network": network_json(&ctx)}));
        }
    }
}

fn progress(
    ctx: &Ctx,
    last: &mut HashMap<(u64, bool), (u32, u64)>,
    seq: u64,
    dir: &str,
    p: client_sdk::Progress,
) {
    if p.count <= 1 {
        return;
    }
    let key = (seq, dir == "send");
    if last.get(&key) == Some(&(p.have, p.bytes)) {
        return;
    }
    last.insert(key, (p.have, p.bytes));
    ctx.emit(json!({
        "event": "progress", "seq": seq, "direction": dir,
        "have": p.have, "count": p.count, "bytes": p.bytes, "total": p.total,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_numbers_are_shown_in_groups_of_five() {
        let d: String = (0..60).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
        let g = grouped(&d);
        assert_eq!(g.split(' ').count(), 12);
        assert!(g.split(' ').all(|x| x.len() == 5));
        assert_eq!(g.replace(' ', ""), d);
    }

    #[test]
    fn previews_say_their_kind_by_mime() {
        assert_eq!(
            kind_name(Some(ContentKind::Preview), Some("image/jpeg")),
            "image"
        );
        assert_eq!(
            kind_name(Some(ContentKind::Preview), Some("audio/webm")),
            "audio"
        );
        assert_eq!(kind_name(Some(ContentKind::Preview), Some("x/y")), "file");
        assert_eq!(kind_name(None, None), "bytes");
    }
}
