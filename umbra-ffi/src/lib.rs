#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use daemon::{DaemonFile, Embedded};
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An open client: the runtime its tasks run on, and the client. Opaque to C.
pub struct UmbraClient {
    rt: tokio::runtime::Runtime,
    inner: Embedded,
}

/// A string for C (freed with [`umbra_string_free`]). Interior NULs, which
/// JSON text never holds, are replaced rather than cut the string short.
fn to_c(s: String) -> *mut c_char {
    let s = if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    };
    CString::new(s).map_or(std::ptr::null_mut(), CString::into_raw)
}

/// An error reply in the API's shape (docs/api.md).
fn error_reply(code: &str, fault: &str, message: &str) -> String {
    serde_json::json!({
        "reply": null,
        "ok": false,
        "error": {"code": code, "fault": fault, "message": message},
    })
    .to_string()
}

/// A string argument: `None` if null; an error text if not UTF-8.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, String> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(Some)
        .map_err(|_| format!("{what} is not UTF-8"))
}

/// Sets `*error` (if `error` is not null) to `msg`.
///
/// # Safety
/// `error` is null or valid for one write.
unsafe fn set_error(error: *mut *mut c_char, msg: String) {
    if !error.is_null() {
        // SAFETY: the caller's contract.
        unsafe { *error = to_c(msg) };
    }
}

/// The client's configuration: `config_toml` if given (saved as
/// `daemon.toml` in the data directory, so that later opens need none),
/// else that file.
fn config(data_dir: &Path, config_toml: Option<&str>) -> Result<daemon::DaemonConfig, String> {
    let file = data_dir.join("daemon.toml");
    let f = match config_toml {
        Some(text) => {
            let f = DaemonFile::parse(text, "config_toml").map_err(|e| e.to_string())?;
            // Checked before it is saved: a wrong text leaves the file alone.
            f.clone()
                .into_config(data_dir.to_owned(), Path::new("config_toml"))
                .map_err(|e| e.to_string())?;
            net::identity::create_private_dir(data_dir)
                .map_err(|e| format!("{}: {e}", data_dir.display()))?;
            f.save(&file).map_err(|e| e.to_string())?;
            f
        }
        None => DaemonFile::load(&file).map_err(|e| e.to_string())?,
    };
    f.into_config(data_dir.to_owned(), &file)
        .map_err(|e| e.to_string())
}

fn open(
    data_dir: Option<&str>,
    config_toml: Option<&str>,
    passphrase: &[u8],
) -> Result<Box<UmbraClient>, String> {
    let data_dir = PathBuf::from(data_dir.ok_or("data_dir is null")?);
    let cfg = config(&data_dir, config_toml)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("umbra")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client's threads: {e}"))?;
    let inner = rt
        .block_on(Embedded::open(cfg, passphrase))
        .map_err(|e| e.to_string())?;
    Ok(Box::new(UmbraClient { rt, inner }))
}

/// Opens the client in `data_dir`, creating it with a new identity on the
/// first open; see `include/umbra.h`.
///
/// # Safety
/// `data_dir` and `config_toml` are null or NUL-terminated strings;
/// `passphrase` points to `passphrase_len` readable bytes (or is null with
/// length 0); `error` is null or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_open(
    data_dir: *const c_char,
    config_toml: *const c_char,
    passphrase: *const u8,
    passphrase_len: usize,
    error: *mut *mut c_char,
) -> *mut UmbraClient {
    let run = || -> Result<Box<UmbraClient>, String> {
        // SAFETY: the caller's contract.
        let dir = unsafe { arg(data_dir, "data_dir") }?;
        // SAFETY: the caller's contract.
        let toml = unsafe { arg(config_toml, "config_toml") }?;
        let pass: &[u8] = if passphrase_len == 0 {
            &[]
        } else if passphrase.is_null() {
            return Err("passphrase is null".into());
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::slice::from_raw_parts(passphrase, passphrase_len) }
        };
        open(dir, toml, pass)
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(c)) => Box::into_raw(c),
        Ok(Err(e)) => {
            // SAFETY: the caller's contract.
            unsafe { set_error(error, e) };
            std::ptr::null_mut()
        }
        Err(_) => {
            // SAFETY: the caller's contract.
            unsafe { set_error(error, "internal error (a bug): the open panicked".into()) };
            std::ptr::null_mut()
        }
    }
}

/// The `hello` event: the API version and this client's identity.
///
/// # Safety
/// `client` is null or a pointer [`umbra_open`] returned, not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_hello(client: *const UmbraClient) -> *mut c_char {
    // SAFETY: the caller's contract.
    let Some(c) = (unsafe { client.as_ref() }) else {
        return std::ptr::null_mut();
    };
    match catch_unwind(AssertUnwindSafe(|| c.inner.hello())) {
        Ok(s) => to_c(s),
        Err(_) => std::ptr::null_mut(),
    }
}

/// Answers one request (a JSON object, as on the WebSocket API). Never
/// null for a valid client: failures are error replies.
///
/// # Safety
/// `client` is null or a pointer [`umbra_open`] returned, not yet closed;
/// `request` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_call(
    client: *const UmbraClient,
    request: *const c_char,
) -> *mut c_char {
    // SAFETY: the caller's contract.
    let Some(c) = (unsafe { client.as_ref() }) else {
        return std::ptr::null_mut();
    };
    let run = || -> String {
        // SAFETY: the caller's contract.
        match unsafe { arg(request, "the request") } {
            Ok(Some(text)) => c.rt.block_on(c.inner.call(text)),
            Ok(None) => error_reply("bad_request", "app", "the request is null"),
            Err(e) => error_reply("bad_request", "app", &e),
        }
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(s) => to_c(s),
        Err(_) => to_c(error_reply(
            "bug",
            "bug",
            "internal error: the request panicked",
        )),
    }
}

/// The next event (JSON), waiting up to `timeout_ms`; null if none came.
///
/// # Safety
/// `client` is null or a pointer [`umbra_open`] returned, not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_next_event(
    client: *const UmbraClient,
    timeout_ms: u32,
) -> *mut c_char {
    // SAFETY: the caller's contract.
    let Some(c) = (unsafe { client.as_ref() }) else {
        return std::ptr::null_mut();
    };
    let wait = Duration::from_millis(timeout_ms.into());
    match catch_unwind(AssertUnwindSafe(|| c.rt.block_on(c.inner.next_event(wait)))) {
        Ok(Some(s)) => to_c(s),
        Ok(None) | Err(_) => std::ptr::null_mut(),
    }
}

/// Writes the client's last changes, stops it and frees it. Null is
/// ignored.
///
/// # Safety
/// `client` is null or a pointer [`umbra_open`] returned, not yet closed;
/// no other call on it is running or made after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_close(client: *mut UmbraClient) {
    if client.is_null() {
        return;
    }
    // SAFETY: the caller's contract: ours, from Box::into_raw, once.
    let c = unsafe { Box::from_raw(client) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        let UmbraClient { rt, inner } = *c;
        rt.block_on(inner.close());
        rt.shutdown_timeout(Duration::from_secs(5));
    }));
}

/// Frees a string this library returned. Null is ignored.
///
/// # Safety
/// `s` is null or a string this library returned, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the caller's contract: ours, from CString::into_raw, once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Sends the library's log lines to standard error, those `filter` lets
/// through (`tracing`'s `EnvFilter` syntax, e.g. `"info"` or
/// `"warn,client_sdk=debug"`; null is `"info"`). Returns 0, 1 if a logger
/// was already set (in this process, by this call or by Rust code), or −1
/// if `filter` is not a valid filter. Lines at info level and above name
/// no addresses, dropbox ids or message contents.
///
/// # Safety
/// `filter` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_log_to_stderr(filter: *const c_char) -> i32 {
    let run = || {
        // SAFETY: the caller's contract.
        let f = match unsafe { arg(filter, "filter") } {
            Ok(f) => f.unwrap_or("info"),
            Err(_) => return -1,
        };
        let Ok(f) = tracing_subscriber::EnvFilter::try_new(f) else {
            return -1;
        };
        match tracing_subscriber::fmt()
            .with_env_filter(f)
            .with_writer(std::io::stderr)
            .try_init()
        {
            Ok(()) => 0,
            Err(_) => 1,
        }
    };
    catch_unwind(run).unwrap_or(-1)
}

/// The library's version, a static string (not to be freed).
#[unsafe(no_mangle)]
pub extern "C" fn umbra_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
