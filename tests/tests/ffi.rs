//! The C ABI (crate `umbra-ffi`, `include/umbra.h`) called as a C program
//! calls it, through its `extern "C"` functions and raw pointers: two
//! clients on a local network open from a TOML text, exchange invites and
//! a message in each direction, and reopen from the saved `daemon.toml`;
//! a wrong passphrase, a bad config and bad requests get clear errors.
//! (`scripts/c-example` runs the C example against the built library.)
//!
//! `cargo test -p tests --test ffi -- --nocapture`

use serde_json::{Value, json};
use std::ffi::{CStr, CString, c_char};
use std::path::Path;
use std::time::{Duration, Instant};
use umbra_ffi::{
    UmbraClient, umbra_call, umbra_close, umbra_hello, umbra_log_to_stderr, umbra_next_event,
    umbra_open, umbra_string_free, umbra_version,
};

mod support;

/// Bound on anything that crosses the mixnet.
const WAIT: Duration = support::WAIT;

/// Takes a string the library returned (freeing it).
fn take(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a string from the library, freed once, right after.
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned();
    unsafe { umbra_string_free(p) };
    Some(s)
}

/// `umbra_open`: the client, or the error text it set.
fn open(dir: &Path, toml: Option<&str>, pass: &[u8]) -> Result<C, String> {
    let dir = CString::new(dir.to_str().unwrap()).unwrap();
    let toml = toml.map(|t| CString::new(t).unwrap());
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: valid strings and lengths; `err` is ours to write.
    let c = unsafe {
        umbra_open(
            dir.as_ptr(),
            toml.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            pass.as_ptr(),
            pass.len(),
            &mut err,
        )
    };
    if c.is_null() {
        return Err(take(err).expect("an error text with a null client"));
    }
    assert!(err.is_null(), "no error text with a client");
    Ok(C(c))
}

/// An open client, closed when dropped.
struct C(*mut UmbraClient);

// SAFETY: the library's clients may be used from several threads at once
// (include/umbra.h; `UmbraClient` is Send + Sync, checked where it is
// defined).
unsafe impl Send for C {}
unsafe impl Sync for C {}

impl C {
    fn raw(&self, request: &str) -> Value {
        let r = CString::new(request).unwrap();
        // SAFETY: an open client and a valid string.
        let reply = take(unsafe { umbra_call(self.0, r.as_ptr()) }).expect("a reply");
        serde_json::from_str(&reply).unwrap()
    }

    /// A request that must succeed: its result.
    fn ok(&self, op: &str, args: Value) -> Value {
        let mut req = json!({"id": op, "op": op});
        req.as_object_mut()
            .unwrap()
            .extend(args.as_object().unwrap().clone());
        let r = self.raw(&req.to_string());
        assert_eq!(r["reply"], op, "{r}");
        assert_eq!(r["ok"], true, "{op}: {r}");
        r["result"].clone()
    }

    fn me(&self) -> String {
        // SAFETY: an open client.
        let h: Value =
            serde_json::from_str(&take(unsafe { umbra_hello(self.0) }).unwrap()).unwrap();
        assert_eq!(h["event"], "hello");
        assert_eq!(h["api"], 1);
        h["me"].as_str().unwrap().to_owned()
    }

    /// Waits (up to `WAIT`) for an event `accept` takes.
    fn event(&self, accept: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            // SAFETY: an open client.
            if let Some(e) = take(unsafe { umbra_next_event(self.0, 500) }) {
                let e: Value = serde_json::from_str(&e).unwrap();
                if accept(&e) {
                    return e;
                }
            }
        }
        panic!("no such event within {WAIT:?}");
    }
}

impl Drop for C {
    fn drop(&mut self) {
        // SAFETY: ours, closed once.
        unsafe { umbra_close(self.0) };
    }
}

/// `daemon.toml` for `net`.
fn toml(net: &umbra::testnet::MixNetwork) -> String {
    let cfg = net.client_config().unwrap();
    let mut t = format!(
        "threshold = {}\nfetch_interval_ms = 300\n",
        cfg.authority_threshold
    );
    for a in &cfg.authorities {
        t.push_str(&format!(
            "[[authorities]]\nurl = \"{}\"\nkey = \"{}\"\n",
            a.url, a.key
        ));
    }
    t
}

#[test]
fn two_clients_talk_through_the_c_abi() {
    // The network runs on a runtime of its own; the library's calls block
    // on theirs, as they would in a C program's thread.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = rt.block_on(support::network());
    let tmp = tempfile::tempdir().unwrap();
    let config = toml(&net);
    // SAFETY: a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(umbra_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // Logs: a bad filter is refused, a good one set once.
    // SAFETY: NUL-terminated strings.
    unsafe {
        assert_eq!(umbra_log_to_stderr(c"info,[".as_ptr()), -1);
        assert_eq!(umbra_log_to_stderr(c"warn".as_ptr()), 0);
        assert_eq!(umbra_log_to_stderr(std::ptr::null()), 1);
    }

    // A config the daemon would refuse is refused, by key, and not saved.
    let e = open(
        &tmp.path().join("x"),
        Some("threshold = 1\nlisten_port = 3\n"),
        b"p",
    )
    .err()
    .unwrap();
    assert!(
        e.contains("config_toml") && e.contains("listen_port"),
        "{e}"
    );
    assert!(!tmp.path().join("x/daemon.toml").exists());
    let e = open(&tmp.path().join("y"), None, b"p").err().unwrap();
    assert!(e.contains("authorities"), "{e}");

    let alice = open(
        &tmp.path().join("alice"),
        Some(&config),
        b"alice's passphrase",
    )
    .unwrap();
    let bob_dir = tmp.path().join("bob");
    let bob = open(&bob_dir, Some(&config), b"bob's passphrase").unwrap();
    let bob_id = bob.me();

    // Bad requests get error replies; the client goes on.
    let r = bob.raw("not json");
    assert_eq!(
        (r["ok"].clone(), r["error"]["code"].clone()),
        (json!(false), json!("bad_request"))
    );
    // SAFETY: an open client; a null request is allowed and refused.
    let r: Value =
        serde_json::from_str(&take(unsafe { umbra_call(bob.0, std::ptr::null()) }).unwrap())
            .unwrap();
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = bob.raw(&json!({"id": 1, "op": "send_text", "to": "00", "text": "x"}).to_string());
    assert_eq!(r["error"]["fault"], "app", "{r}");
    let r = bob.raw(&json!({"id": 2, "op": "x".repeat(daemon::MAX_REQUEST)}).to_string());
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert_eq!(r["reply"], Value::Null, "{r}");
    // Null clients are ignored, not dereferenced.
    // SAFETY: null is allowed.
    unsafe {
        assert!(umbra_call(std::ptr::null(), c"{}".as_ptr()).is_null());
        assert!(umbra_next_event(std::ptr::null(), 0).is_null());
        umbra_close(std::ptr::null_mut());
    }

    // Reopened with a wrong passphrase: refused, and nothing changes;
    // with the right one and no config: the saved daemon.toml, the same
    // identity.
    drop(bob);
    let saved = std::fs::read(bob_dir.join("daemon.toml")).unwrap();
    let other = config.replace("fetch_interval_ms = 300", "fetch_interval_ms = 700");
    assert_ne!(other, config);
    let e = open(&bob_dir, Some(&other), b"wrong").err().unwrap();
    assert!(e.to_lowercase().contains("passphrase"), "{e}");
    // The config given with it was not saved.
    assert_eq!(std::fs::read(bob_dir.join("daemon.toml")).unwrap(), saved);
    let bob = open(&bob_dir, None, b"bob's passphrase").unwrap();
    assert_eq!(bob.me(), bob_id);
    // One client at a time per data directory.
    let e = open(&bob_dir, None, b"bob's passphrase").err().unwrap();
    println!("a second open: {e}");
    assert!(e.contains("use"), "{e}");

    // From a thread inside a tokio runtime (a Rust caller, a host built on
    // tokio), where blocking on the library's runtime would panic: the
    // calls still work.
    rt.block_on(async {
        assert_eq!(bob.me(), bob_id);
        assert_eq!(bob.ok("contacts", json!({}))["contacts"], json!([]));
    });

    // Invites both ways, a message each way.
    let a_invite = alice.ok("invite", json!({"name": "alice"}))["invite"].clone();
    let b_invite = bob.ok("invite", json!({"name": "bob"}))["invite"].clone();
    let a_in_bob = bob.ok("add_contact", json!({"invite": a_invite}))["contact"]["id"].clone();
    let b_in_alice = alice.ok("add_contact", json!({"invite": b_invite}))["contact"]["id"].clone();
    assert_eq!(b_in_alice, bob_id);
    let t0 = Instant::now();
    let sent = alice.ok(
        "send_text",
        json!({"to": b_in_alice, "text": "hello from C"}),
    );
    let seq = sent["message"]["seq"].clone();
    // Bob waits for events in one thread while another makes requests.
    let got = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            bob.event(|e| e["event"] == "message" && !e["message"]["outgoing"].as_bool().unwrap())
        });
        let mut calls = 0;
        while !waiting.is_finished() {
            assert_eq!(bob.ok("contacts", json!({}))["contacts"][0]["id"], a_in_bob);
            calls += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(calls > 0);
        waiting.join().unwrap()
    });
    assert_eq!(got["message"]["text"], "hello from C", "{got}");
    assert_eq!(got["message"]["from"], a_in_bob, "{got}");
    println!("alice → bob in {:.1} s", t0.elapsed().as_secs_f64());
    // Alice's status events follow the message to the dropbox.
    alice.event(|e| {
        e["event"] == "status"
            && e["seq"] == seq
            && (e["status"] == "stored" || e["status"] == "read")
    });
    bob.ok("send_text", json!({"to": a_in_bob, "text": "hello back"}));
    let got =
        alice.event(|e| e["event"] == "message" && !e["message"]["outgoing"].as_bool().unwrap());
    assert_eq!(got["message"]["text"], "hello back", "{got}");
    // What arrived is in the history after a reopen.
    drop(bob);
    let bob = open(&bob_dir, None, b"bob's passphrase").unwrap();
    let h = bob.ok(
        "history",
        json!({"conversation": {"contact": a_in_bob}, "limit": 10}),
    );
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(
        texts.contains(&"hello from C") && texts.contains(&"hello back"),
        "{h}"
    );
    drop((alice, bob));
    rt.block_on(net.stop());
}
