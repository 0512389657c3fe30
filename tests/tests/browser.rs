//! The web chat page in a real browser: headless Chromium (Debian's
//! `chromium`) driven over the DevTools protocol, against two `umbra
//! daemon`s on a local network, with a third daemon (Carol) driven over
//! the API. Alice and Bob exchange invites through their pages, verify
//! safety numbers, send text, a picture (scaled down by the page, thumbnail
//! first) and a voice note (a generated WAV file), each to Read, make a group
//! of three and talk in it; an invite under a known name with another
//! key is refused with a warning; then Alice's daemon stops and her page,
//! reloaded, still shows the shell and the history, and a message written
//! offline is sent once the daemon is back. Screenshots of each
//! screen at desktop and phone size go to `$UMBRA_SCREENSHOTS` (default
//! `target/screenshots`).
//!
//! Needs Chromium: `scripts/browser-test` installs it and runs this test,
//! which is ignored by a plain `cargo test` for that reason.
//!
//! `scripts/browser-test`, or `cargo test -p tests --test browser -- --ignored --nocapture`

use daemon::Daemon;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use umbra::testnet::MixNetwork;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PASS: &[u8] = b"browser test passphrase";
/// Bound on anything that crosses the mixnet.
const NET_WAIT: Duration = Duration::from_secs(90);
/// Bound on what happens in the page alone.
const PAGE_WAIT: Duration = Duration::from_secs(20);
const DESKTOP: (u32, u32) = (1100, 760);
const PHONE: (u32, u32) = (390, 844);

/// One headless Chromium, killed when dropped.
struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium runs (scripts/browser-test installs it)");
        // Chromium writes the port it chose to this file.
        let file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + PAGE_WAIT;
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Browser {
            child,
            _profile: profile,
            port,
        }
    }

    /// The browser's first tab.
    async fn page(&self, name: &'static str) -> Page {
        let list = http_get(self.port, "/json/list").await;
        let targets: Value = serde_json::from_str(&list).unwrap();
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut p = Page { ws, next: 0, name };
        p.cmd("Page.enable", json!({})).await;
        p.cmd("Runtime.enable", json!({})).await;
        p
    }
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("chromium")
}

async fn http_get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    // DevTools keeps the connection open: read the head, then Content-Length bytes.
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len || n == 0 {
                    return body.to_string();
                }
            } else if n == 0 {
                return String::new();
            }
        }
    };
    tokio::time::timeout(PAGE_WAIT, read)
        .await
        .expect("DevTools answers")
}

/// One tab, over the DevTools protocol.
struct Page {
    ws: Ws,
    next: u64,
    name: &'static str,
}

impl Page {
    async fn cmd(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(PAGE_WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no answer to {method}", self.name))
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{}: {method}: {v}", self.name);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited); its value.
    async fn js(&mut self, expr: &str) -> Value {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{}: {expr}: {e}", self.name);
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    async fn wait(&mut self, what: &str, expr: &str, bound: Duration) {
        let deadline = Instant::now() + bound;
        let guarded =
            format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        while Instant::now() < deadline {
            if self.js(&guarded).await == true {
                println!("{}: {what}", self.name);
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let toast = self
            .js("document.getElementById('toast')?.textContent")
            .await;
        panic!(
            "{}: not within {bound:?}: {what} ({expr}); toast: {toast}",
            self.name
        );
    }

    async fn goto(&mut self, url: &str) {
        self.cmd("Page.navigate", json!({"url": url})).await;
        self.wait(
            "page loaded",
            "document.readyState === 'complete'",
            PAGE_WAIT,
        )
        .await;
    }

    async fn click(&mut self, sel: &str) {
        self.js(&format!("document.querySelector({}).click()", js_str(sel)))
            .await;
    }

    async fn fill(&mut self, sel: &str, value: &str) {
        self.js(&format!(
            "(() => {{ const e = document.querySelector({}); e.focus(); e.value = {}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); }})()",
            js_str(sel),
            js_str(value)
        ))
        .await;
    }

    async fn text(&mut self, sel: &str) -> String {
        self.js(&format!(
            "(() => {{ const e = document.querySelector({}); return e ? (e.value ?? e.textContent) : ''; }})()",
            js_str(sel)
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    async fn set_files(&mut self, sel: &str, files: &[&Path]) {
        let doc = self.cmd("DOM.getDocument", json!({"depth": 0})).await;
        let node = self
            .cmd(
                "DOM.querySelector",
                json!({"nodeId": doc["root"]["nodeId"], "selector": sel}),
            )
            .await;
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        self.cmd(
            "DOM.setFileInputFiles",
            json!({"nodeId": node["nodeId"], "files": files}),
        )
        .await;
    }

    async fn size(&mut self, (w, h): (u32, u32)) {
        self.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": w, "height": h, "deviceScaleFactor": 1, "mobile": w < 700}),
        )
        .await;
    }

    /// Screenshots at desktop and phone size (the page left at desktop size).
    async fn shots(&mut self, name: &str) {
        let dir = screenshot_dir();
        for (label, size) in [("desktop", DESKTOP), ("phone", PHONE)] {
            self.size(size).await;
            tokio::time::sleep(Duration::from_millis(300)).await; // layout settles
            let r = self
                .cmd("Page.captureScreenshot", json!({"format": "png"}))
                .await;
            use base64::Engine;
            let png = base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap())
                .unwrap();
            std::fs::write(dir.join(format!("{name}-{label}.png")), png).unwrap();
        }
        self.size(DESKTOP).await;
    }
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn screenshot_dir() -> PathBuf {
    let d = std::env::var_os("UMBRA_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 24-bit BMP of `w`×`h` with a pattern that does not compress to nothing.
fn bmp(w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    let mut x: u32 = 12345;
    for y in 0..h {
        for i in 0..w {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            let n = (x >> 24) as u8 / 4;
            b.extend_from_slice(&[
                (i * 255 / w) as u8 / 2 + n,
                (y * 255 / h) as u8 / 2 + n,
                128 + n,
            ]);
        }
        b.resize(b.len() + (row - w * 3) as usize, 0);
    }
    b
}

/// A WAV file: `ms` of a 440 Hz tone, 8 kHz 16-bit mono.
fn wav(ms: u32) -> Vec<u8> {
    let n = 8 * ms;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + n * 2).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let v = ((i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16;
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

mod support;
use support::Api;

async fn start(net: &MixNetwork, dir: &Path) -> Daemon {
    start_on(net, dir, "127.0.0.1:0".parse().unwrap()).await
}

async fn start_on(net: &MixNetwork, dir: &Path, listen: std::net::SocketAddr) -> Daemon {
    support::start_on(net, dir, PASS, listen).await.unwrap()
}

/// The page's first start: the token from the address, a display name.
async fn first_run(p: &mut Page, d: &Daemon, name: &str) {
    p.size(DESKTOP).await;
    p.goto(&d.page_url()).await;
    p.wait(
        "connected",
        "document.getElementById('conn').textContent === 'connected'",
        PAGE_WAIT,
    )
    .await;
    p.wait(
        "asks for a name",
        "document.getElementById('name-dialog').open",
        PAGE_WAIT,
    )
    .await;
    p.fill("#name-input", name).await;
    p.click("#name-save").await;
    p.wait(
        "name saved",
        "!document.getElementById('name-dialog').open",
        PAGE_WAIT,
    )
    .await;
}

/// The page's own invite, from "My invite".
async fn my_invite(p: &mut Page) -> String {
    p.click("#my-invite").await;
    p.wait(
        "shows its invite",
        "document.getElementById('my-invite-text').value.startsWith('umbra')",
        PAGE_WAIT,
    )
    .await;
    p.wait(
        "and its QR",
        "document.querySelector('#my-invite-qr svg, #my-invite-qr img')",
        PAGE_WAIT,
    )
    .await;
    let inv = p.text("#my-invite-text").await;
    p.js("document.getElementById('invite-dialog').close()")
        .await;
    inv
}

async fn add_contact(p: &mut Page, invite: &str, name: &str, id: &str) {
    p.click("#add-contact").await;
    p.fill("#invite-input", invite).await;
    p.fill("#invite-name", name).await;
    p.click("#invite-submit").await;
    p.wait(
        "contact added",
        &format!("document.querySelector('#contacts button[data-id=\"{id}\"]')"),
        PAGE_WAIT,
    )
    .await;
}

async fn open_contact(p: &mut Page, id: &str) {
    p.click(&format!("#contacts button[data-id=\"{id}\"]"))
        .await;
    p.wait(
        "chat open",
        "!document.getElementById('chat-main').hidden",
        PAGE_WAIT,
    )
    .await;
}

async fn send_text(p: &mut Page, text: &str) {
    p.fill("#text-input", text).await;
    p.click("#send").await;
}

fn bubble_with(dir: &str, text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .bubble.{dir}')].find(b => b.textContent.includes({}))",
        js_str(text)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: run by scripts/browser-test, which installs it"]
async fn two_people_chat_in_their_browsers() {
    let started = Instant::now();
    let net = support::network().await;
    let tmp = tempfile::tempdir().unwrap();
    let alice = start(&net, &tmp.path().join("alice")).await;
    let bob = start(&net, &tmp.path().join("bob")).await;
    let carol = start(&net, &tmp.path().join("carol")).await;
    let (aid, bid, cid) = (
        hex::encode(alice.id().0),
        hex::encode(bob.id().0),
        hex::encode(carol.id().0),
    );
    let (ab, bb) = (Browser::launch().await, Browser::launch().await);
    let (mut a, mut b) = (ab.page("alice").await, bb.page("bob").await);
    let mut steps = 0;
    let mut step = |what: &str| {
        steps += 1;
        println!(
            "step {steps} passed at {:.1} s: {what}",
            started.elapsed().as_secs_f64()
        );
    };

    // 1. First run.
    first_run(&mut a, &alice, "Alice").await;
    first_run(&mut b, &bob, "Bob").await;
    a.shots("01-contacts-empty").await;
    step("first run: token from the address, a name");

    // 2. Invites through the pages.
    let ainv = my_invite(&mut a).await;
    a.click("#my-invite").await;
    a.wait(
        "invite dialog",
        "document.getElementById('invite-dialog').open",
        PAGE_WAIT,
    )
    .await;
    a.shots("02-my-invite").await;
    a.js("document.getElementById('invite-dialog').close()")
        .await;
    let binv = my_invite(&mut b).await;
    add_contact(&mut b, &ainv, "Alice", &aid).await;
    add_contact(&mut a, &binv, "Bob", &bid).await;
    step("invites exchanged through the pages");

    // 3. Safety numbers: Bob reads his out, Alice types it.
    open_contact(&mut a, &bid).await;
    open_contact(&mut b, &aid).await;
    b.click("#verify-open").await;
    b.wait(
        "safety number shown",
        "document.getElementById('safety-number').textContent.replace(/\\s/g,'').length === 60",
        PAGE_WAIT,
    )
    .await;
    let bob_reads = b.text("#safety-number").await;
    b.js("document.getElementById('verify-dialog').close()")
        .await;
    a.click("#verify-open").await;
    a.wait(
        "safety number shown",
        "document.getElementById('safety-number').textContent.replace(/\\s/g,'').length === 60",
        PAGE_WAIT,
    )
    .await;
    assert_eq!(
        a.text("#safety-number")
            .await
            .split_whitespace()
            .collect::<String>(),
        bob_reads.split_whitespace().collect::<String>(),
        "both sides see the same number"
    );
    a.fill("#safety-input", &bob_reads).await;
    a.click("#safety-submit").await;
    a.wait(
        "verified",
        "document.getElementById('verify-result').textContent.includes('Verified')",
        PAGE_WAIT,
    )
    .await;
    a.shots("03-verify").await;
    a.js("document.getElementById('verify-dialog').close()")
        .await;
    a.wait(
        "verified mark in the list",
        &format!("document.querySelector('#contacts button[data-id=\"{bid}\"] .verified-mark')"),
        PAGE_WAIT,
    )
    .await;
    step("safety numbers match and the contact is marked verified");

    // 4. Text, to Read.
    send_text(&mut a, "hello Bob, from a browser").await;
    b.wait(
        "text arrived",
        &bubble_with("in", "hello Bob, from a browser"),
        NET_WAIT,
    )
    .await;
    a.wait(
        "text read",
        &format!(
            "{}?.querySelector('.status[data-status=\"read\"]')",
            bubble_with("out", "hello Bob")
        ),
        NET_WAIT,
    )
    .await;
    send_text(&mut b, "hi Alice!").await;
    a.wait("answer arrived", &bubble_with("in", "hi Alice!"), NET_WAIT)
        .await;
    step("text both ways, the first to Read");

    // 5. A picture: scaled down in the page, thumbnail first.
    let files = tempfile::tempdir().unwrap();
    let pic = files.path().join("holiday.bmp");
    std::fs::write(&pic, bmp(2400, 1800)).unwrap();
    a.set_files("#picture-input", &[&pic]).await;
    b.wait(
        "picture arrived in full",
        "document.querySelector('#messages .bubble.in[data-kind=\"image\"] img')?.src.startsWith('blob:')",
        NET_WAIT,
    )
    .await;
    let dims = b
        .js("(() => { const i = document.querySelector('#messages .bubble.in[data-kind=\"image\"] img'); return [i.naturalWidth, i.naturalHeight]; })()")
        .await;
    let w = dims[0].as_u64().unwrap();
    assert!(w > 0 && w <= 1600, "scaled to at most 1600 px: {dims}");
    step("a picture, scaled down to at most 1600 px, arrived");

    // 6. A voice note (a generated audio file).
    let voice = files.path().join("voice.wav");
    std::fs::write(&voice, wav(1500)).unwrap();
    a.set_files("#audio-input", &[&voice]).await;
    b.wait(
        "voice note arrived",
        "document.querySelector('#messages .bubble.in[data-kind=\"audio\"] audio')?.src.startsWith('blob:')",
        NET_WAIT,
    )
    .await;
    for kind in ["image", "audio"] {
        a.wait(
            &format!("{kind} read"),
            &format!("document.querySelector('#messages .bubble.out[data-kind=\"{kind}\"] .status[data-status=\"read\"]')"),
            NET_WAIT,
        )
        .await;
    }
    b.shots("04-chat").await;
    a.shots("05-chat-sender").await;
    step("a voice note arrived; picture and voice note reached Read");

    // 7. A group of three: Carol is Alice's contact (over the API).
    let mut c = Api::open(&carol).await;
    let cinv = c.ok("invite", json!({"name": "Carol"})).await["invite"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok("add_contact", json!({"invite": ainv})).await;
    add_contact(&mut a, &cinv, "Carol", &cid).await;
    a.click("#new-group").await;
    a.fill("#group-name", "Trio").await;
    a.click("#group-create").await;
    a.wait(
        "group listed",
        "document.querySelector('#groups button[data-id]')",
        PAGE_WAIT,
    )
    .await;
    let gid = a
        .js("document.querySelector('#groups button[data-id]').dataset.id")
        .await
        .as_str()
        .unwrap()
        .to_string();
    a.click(&format!("#groups button[data-id=\"{gid}\"]")).await;
    a.click("#members-open").await;
    for who in [&bid, &cid] {
        a.wait(
            "member can be added",
            &format!("document.querySelector('#member-select option[value=\"{who}\"]')"),
            PAGE_WAIT,
        )
        .await;
        a.fill("#member-select", who).await;
        a.click("#member-add").await;
        a.wait(
            "member added",
            &format!("!document.querySelector('#member-select option[value=\"{who}\"]')"),
            NET_WAIT,
        )
        .await;
    }
    a.shots("06-group-members").await;
    a.js("document.getElementById('members-dialog').close()")
        .await;
    b.wait(
        "Bob joined",
        &format!("document.querySelector('#groups button[data-id=\"{gid}\"]')"),
        NET_WAIT,
    )
    .await;
    b.click(&format!("#groups button[data-id=\"{gid}\"]")).await;
    send_text(&mut b, "hello Trio").await;
    a.wait(
        "group message at Alice",
        &bubble_with("in", "hello Trio"),
        NET_WAIT,
    )
    .await;
    let v = c
        .event("the group message at Carol", |v| {
            v["event"] == "message" && v["message"]["text"] == "hello Trio"
        })
        .await;
    assert_eq!(v["message"]["conversation"]["group"], gid.as_str());
    send_text(&mut a, "hi both").await;
    b.wait(
        "Alice's group message at Bob",
        &bubble_with("in", "hi both"),
        NET_WAIT,
    )
    .await;
    b.shots("07-group-chat").await;
    step("a group of three: Bob's message reached Alice and Carol, Alice's reached Bob");

    // 8. An invite under a known name with another key: a clear warning.
    let forged = c.ok("invite", json!({"name": "Alice"})).await["invite"]
        .as_str()
        .unwrap()
        .to_string();
    b.click("#add-contact").await;
    b.fill("#invite-input", &forged).await;
    b.click("#invite-submit").await;
    b.wait(
        "key change warned",
        "document.getElementById('invite-error').textContent.includes('key has changed')",
        PAGE_WAIT,
    )
    .await;
    b.shots("09-key-changed").await;
    b.js("document.getElementById('add-dialog').close()").await;
    assert_eq!(
        b.js("document.querySelectorAll('#contacts button[data-id]').length")
            .await,
        1,
        "the forged invite added nothing"
    );
    step("an invite with a known name and another key is refused with a warning");

    // 9. Alice's daemon stops; her page, reloaded, keeps shell and history.
    a.click(&format!("#contacts button[data-id=\"{bid}\"]"))
        .await;
    a.wait("Bob's chat", &bubble_with("in", "hi Alice!"), PAGE_WAIT)
        .await;
    let alice_addr = alice.addr();
    alice.stop().await;
    a.wait(
        "offline",
        "document.getElementById('conn').textContent === 'offline'",
        PAGE_WAIT,
    )
    .await;
    a.cmd("Page.reload", json!({})).await;
    a.wait(
        "page reloaded",
        "document.readyState === 'complete'",
        PAGE_WAIT,
    )
    .await;
    a.wait(
        "contacts from the cache",
        &format!("document.querySelector('#contacts button[data-id=\"{bid}\"]')"),
        PAGE_WAIT,
    )
    .await;
    a.click(&format!("#contacts button[data-id=\"{bid}\"]"))
        .await;
    a.wait(
        "history from the cache",
        &bubble_with("in", "hi Alice!"),
        PAGE_WAIT,
    )
    .await;
    send_text(&mut a, "written offline").await;
    a.wait(
        "queued while offline",
        &format!(
            "{}?.querySelector('.status[data-status=\"queued-offline\"]')",
            bubble_with("out", "written offline")
        ),
        PAGE_WAIT,
    )
    .await;
    a.shots("08-offline").await;
    step("offline: shell, contacts and history load; a message waits in the page's queue");

    // 10. The daemon is back (same address, same token): the page
    // reconnects by itself and sends what was written offline.
    let alice = start_on(&net, &tmp.path().join("alice"), alice_addr).await;
    a.wait(
        "reconnected",
        "document.getElementById('conn').textContent === 'connected'",
        PAGE_WAIT,
    )
    .await;
    b.click(&format!("#contacts button[data-id=\"{aid}\"]"))
        .await;
    b.wait(
        "the offline message arrived",
        &bubble_with("in", "written offline"),
        NET_WAIT,
    )
    .await;
    a.wait(
        "no longer queued offline",
        &format!(
            "{}?.querySelector('.status[data-status=\"read\"]')",
            bubble_with("out", "written offline")
        ),
        NET_WAIT,
    )
    .await;
    step("back online: the message written offline was sent and read");

    println!(
        "browser test: {steps} steps passed in {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshot_dir().display()
    );
    alice.stop().await;
    bob.stop().await;
    carol.stop().await;
    net.stop().await;
}
