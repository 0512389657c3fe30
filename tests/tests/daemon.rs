//! `umbra daemon` over its real sockets (docs/api.md): two daemons on a
//! local network talk through the WebSocket API — invites, safety numbers,
//! text, a picture with its thumbnail first, statuses to Read, a group —
//! and the history survives a restart; a page from another origin, a
//! rebound DNS name and a missing token are refused.
//!
//! `cargo test -p tests --test daemon -- --nocapture`

use daemon::Daemon;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;
use umbra::testnet::MixNetwork;

const PASS: &[u8] = b"correct horse battery staple";

mod support;
use support::{Api, network, read};

async fn start(net: &MixNetwork, dir: &Path, pass: &[u8]) -> Result<Daemon, daemon::Error> {
    support::start_on(net, dir, pass, "127.0.0.1:0".parse().unwrap()).await
}

/// A raw HTTP request; returns the status code of the answer.
async fn http_status(d: &Daemon, path: &str, headers: &[(&str, String)]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| *k == "Connection") {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The status line is all we need (an upgraded connection stays open).
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_other_origins_rebound_hosts_and_missing_tokens() {
    let net = network().await;
    let tmp = tempfile::tempdir().unwrap();
    let d = start(&net, &tmp.path().join("a"), PASS).await.unwrap();
    let host = d.addr().to_string();
    let upgrade = |origin: Option<&str>, host: &str| {
        let mut h = vec![
            ("Host", host.to_string()),
            ("Upgrade", "websocket".into()),
            ("Connection", "Upgrade".into()),
            ("Sec-WebSocket-Version", "13".into()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
        ];
        if let Some(o) = origin {
            h.push(("Origin", o.to_string()));
        }
        h
    };
    let with_token = format!("/v1/ws?token={}", d.token());
    let page = format!("http://{host}");
    // The daemon's own page, with the token: upgraded.
    assert_eq!(
        http_status(&d, &with_token, &upgrade(Some(&page), &host)).await,
        101
    );
    // A page from another origin, even one that knows the token.
    for evil in [
        "http://evil.example",
        "https://attacker.example:443",
        "null",
    ] {
        assert_eq!(
            http_status(&d, &with_token, &upgrade(Some(evil), &host)).await,
            403,
            "{evil}"
        );
    }
    // DNS rebinding: the attacker's name, pointed at 127.0.0.1.
    let rebound = format!("evil.example:{}", d.addr().port());
    let rebound_origin = format!("http://{rebound}");
    assert_eq!(
        http_status(&d, &with_token, &upgrade(Some(&rebound_origin), &rebound)).await,
        421
    );
    assert_eq!(http_status(&d, "/", &[("Host", rebound)]).await, 421);
    // No token, a wrong one.
    assert_eq!(
        http_status(&d, "/v1/ws", &upgrade(Some(&page), &host)).await,
        401
    );
    let wrong = format!("/v1/ws?token={}", "0".repeat(64));
    assert_eq!(http_status(&d, &wrong, &upgrade(None, &host)).await, 401);
    // The page itself loads for its own host.
    assert_eq!(http_status(&d, "/", &[("Host", host.clone())]).await, 200);
    assert_eq!(http_status(&d, "/sw.js", &[("Host", host)]).await, 200);
    // The token file is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let on_disk = std::fs::read_to_string(d.token_path()).unwrap();
        assert_eq!(on_disk.trim(), d.token());
    }
    // A bad frame is answered and the connection goes on.
    let mut api = Api::open(&d).await;
    api.ws
        .send(tungstenite::Message::text("not json"))
        .await
        .unwrap();
    let r = read(&mut api.ws).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "bad_request");
    let r = api.call("no_such_op", json!({})).await;
    assert_eq!(r["error"]["code"], "unknown_op");
    let n = api.ok("network", json!({})).await;
    assert_eq!(n["connected"], true, "{n}");
    assert_eq!(n["cover"], true, "{n}");
    assert!(n["topology_usable_until_ms"].as_u64().unwrap() > 0, "{n}");
    // A local network of 1 mix node per layer and 1 gateway.
    assert_eq!(n["topology_nodes"], 4, "{n}");
    assert!(n["topology_age_s"].as_u64().unwrap() < 3600, "{n}");
    let ids = api.ok("identities", json!({})).await;
    assert_eq!(ids["identities"][0]["id"], hex::encode(d.id().0));
    // A frame over 1 MiB ends the connection with a close frame that says
    // why (1009), not an abnormal close; other connections go on.
    let mut big = Api::open(&d).await;
    let oversized = "x".repeat(daemon::MAX_REQUEST + 1);
    // The daemon may stop reading before all of it is written.
    let _ = big.ws.send(tungstenite::Message::text(oversized)).await;
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match big.ws.next().await {
                Some(Ok(tungstenite::Message::Close(c))) => break c,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame within 10 s")
    .expect("a close code");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    let n = api.ok("network", json!({})).await;
    assert_eq!(n["connected"], true, "{n}");
    d.stop().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_talk_through_the_api_and_keep_their_history() {
    let net = network().await;
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let alice = start(&net, &adir, PASS).await.unwrap();
    let bob = start(&net, &bdir, PASS).await.unwrap();
    let (mut a, mut b) = (Api::open(&alice).await, Api::open(&bob).await);
    let (aid, bid) = (hex::encode(alice.id().0), hex::encode(bob.id().0));

    // Invites both ways, as two people would paste them.
    let inv = a.ok("invite", json!({"name": "alice"})).await;
    assert!(inv["qr_svg"].as_str().unwrap().contains("<svg"));
    let c = b.ok("add_contact", json!({"invite": inv["invite"]})).await;
    assert_eq!(c["contact"]["id"], aid);
    assert_eq!(c["contact"]["verified"], false);
    let inv = b.ok("invite", json!({"name": "bob"})).await;
    a.ok("add_contact", json!({"invite": inv["invite"]})).await;

    // Verification: a wrong number is refused, the right one marks it.
    let contacts = a.ok("contacts", json!({})).await;
    let sn = contacts["contacts"][0]["safety_number"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sn.replace(' ', "").len(), 60);
    let mut wrong = sn.clone().into_bytes();
    wrong[0] = if wrong[0] == b'1' { b'2' } else { b'1' };
    let r = a
        .call(
            "verify_contact",
            json!({"contact": bid, "safety_number": String::from_utf8(wrong).unwrap()}),
        )
        .await;
    assert_eq!(r["error"]["code"], "mismatch");
    assert_eq!(r["error"]["fault"], "user");
    let v = a
        .ok(
            "verify_contact",
            json!({"contact": bid, "safety_number": sn}),
        )
        .await;
    assert_eq!(v["contact"]["verified"], true);

    // Text, to Read.
    let sent = a
        .ok("send_text", json!({"to": bid, "text": "hello bob"}))
        .await;
    let seq = sent["message"]["seq"].clone();
    let got = b
        .event("bob's message", |v| {
            v["event"] == "message" && v["message"]["text"] == "hello bob"
        })
        .await;
    assert_eq!(got["message"]["from"], aid);
    assert_eq!(got["message"]["outgoing"], false);
    a.event("Read", |v| {
        v["event"] == "status" && v["seq"] == seq && v["status"] == "read"
    })
    .await;

    // A picture: upload in two chunks, thumbnail first, data after.
    let picture: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let b64 = |d: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(d)
    };
    let up = a
        .ok("upload", json!({"data": b64(&picture[..200_000])}))
        .await;
    let up = a
        .ok(
            "upload",
            json!({"upload": up["upload"], "data": b64(&picture[200_000..])}),
        )
        .await;
    assert_eq!(up["size"], 300_000);
    let thumb = vec![0xffu8, 0xd8, 0xff, 0xe0, 1, 2, 3];
    let pic = a
        .ok(
            "send_file",
            json!({"to": bid, "kind": "image", "name": "cat.jpg", "mime": "image/jpeg",
                   "width": 1600, "height": 1200, "thumbnail": b64(&thumb), "upload": up["upload"]}),
        )
        .await;
    let pseq = pic["message"]["seq"].clone();
    let preview = b
        .event("the picture's preview", |v| {
            v["event"] == "message" && v["message"]["kind"] == "image"
        })
        .await;
    let bseq = preview["message"]["seq"].clone();
    assert_eq!(preview["message"]["attachment"]["thumbnail"], b64(&thumb));
    assert_eq!(preview["message"]["attachment"]["width"], 1600);
    // Progress is reported while the data travels (several fragments).
    b.event("receive progress", |v| {
        v["event"] == "progress" && v["direction"] == "receive" && v["seq"] == bseq
    })
    .await;
    b.event("the picture's data", |v| {
        v["event"] == "message" && v["message"]["seq"] == bseq && v["message"]["has_data"] == true
    })
    .await;
    let att = b.ok("attachment", json!({"seq": bseq})).await;
    assert_eq!(att["data"], b64(&picture));
    assert_eq!(att["mime"], "image/jpeg");
    a.event("picture stored", |v| {
        v["event"] == "status"
            && v["seq"] == pseq
            && (v["status"] == "stored" || v["status"] == "read")
    })
    .await;

    // A group of two: created, joined, a message each way.
    let g = a.ok("create_group", json!({"name": "pair"})).await;
    let gid = g["group"]["id"].as_str().unwrap().to_string();
    a.ok("group_invite", json!({"group": gid, "contact": bid}))
        .await;
    b.event("joined the group", |v| {
        v["event"] == "groups"
            && v["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| x["id"] == gid.as_str()))
    })
    .await;
    b.ok("send_text", json!({"group": gid, "text": "hi group"}))
        .await;
    a.event("group message", |v| {
        v["event"] == "message"
            && v["message"]["text"] == "hi group"
            && v["message"]["conversation"]["group"] == gid.as_str()
    })
    .await;

    // Bob restarts: his history comes back, and a wrong passphrase is refused.
    let before = b
        .ok("history", json!({"conversation": {"contact": aid}}))
        .await;
    drop(b);
    let token = bob.token().to_string();
    bob.stop().await;
    let err = start(&net, &bdir, b"wrong").await.err().expect("refused");
    assert!(err.to_string().contains("passphrase"), "{err}");
    let bob = start(&net, &bdir, PASS).await.unwrap();
    // The same token: an open page reconnects by itself.
    assert_eq!(bob.token(), token);
    let mut b = Api::open(&bob).await;
    let after = b
        .ok("history", json!({"conversation": {"contact": aid}}))
        .await;
    assert_eq!(after, before);
    assert_eq!(after["messages"].as_array().unwrap().len(), 2, "{after}");
    let contacts = b.ok("contacts", json!({})).await;
    assert_eq!(contacts["contacts"][0]["unread"], 2);
    b.ok("mark_read", json!({"conversation": {"contact": aid}}))
        .await;
    let contacts = b.ok("contacts", json!({})).await;
    assert_eq!(contacts["contacts"][0]["unread"], 0);

    alice.stop().await;
    bob.stop().await;
    net.stop().await;
}
