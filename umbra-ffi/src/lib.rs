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

// C may use a client from several threads at once: the compiler cannot see
// that through the raw pointers, so it is checked here.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<UmbraClient>()
};

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

/// A path argument: any bytes on Unix, UTF-8 elsewhere.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf, String> {
    if p.is_null() {
        return Err(format!("{what} is null"));
    }
    // SAFETY: the caller's contract.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| format!("{what} is not UTF-8"))
    }
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

/// Runs `f`, catching a panic (`None`). On a thread that is itself inside
/// a tokio runtime (a Rust caller, a host built on tokio), where blocking
/// on ours would panic, `f` runs on a thread of its own.
fn guard<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    let f = AssertUnwindSafe(f);
    if tokio::runtime::Handle::try_current().is_err() {
        return catch_unwind(f).ok();
    }
    std::thread::scope(|s| s.spawn(move || catch_unwind(f).ok()).join().ok()?)
}

/// The client's configuration: `config_toml` if given, else `daemon.toml`
/// in the data directory; and the file to save once the client opened.
fn config(
    data_dir: &Path,
    config_toml: Option<&str>,
) -> Result<(daemon::DaemonConfig, Option<DaemonFile>), String> {
    let file = data_dir.join("daemon.toml");
    match config_toml {
        Some(text) => {
            let f = DaemonFile::parse(text, "config_toml").map_err(|e| e.to_string())?;
            let cfg = f
                .clone()
                .into_config(data_dir.to_owned(), Path::new("config_toml"))
                .map_err(|e| e.to_string())?;
            Ok((cfg, Some(f)))
        }
        None => {
            let f = DaemonFile::load(&file).map_err(|e| e.to_string())?;
            let cfg = f
                .into_config(data_dir.to_owned(), &file)
                .map_err(|e| e.to_string())?;
            Ok((cfg, None))
        }
    }
}

fn open(
    data_dir: PathBuf,
    config_toml: Option<&str>,
    passphrase: &[u8],
) -> Result<Box<UmbraClient>, String> {
    let (cfg, save) = config(&data_dir, config_toml)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("umbra")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client's threads: {e}"))?;
    let inner = rt
        .block_on(Embedded::open(cfg, passphrase))
        .map_err(|e| e.to_string())?;
    // Saved once the client opened: a wrong passphrase, or a store in use,
    // leaves the file as it was.
    if let Some(f) = save
        && let Err(e) = f.save(&data_dir.join("daemon.toml"))
    {
        rt.block_on(inner.close());
        return Err(e.to_string());
    }
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
    let args = || -> Result<_, String> {
        // SAFETY: the caller's contract.
        let dir = unsafe { path_arg(data_dir, "data_dir") }?;
        // SAFETY: the caller's contract.
        let toml = unsafe { arg(config_toml, "config_toml") }?;
        let pass: &[u8] = if passphrase_len == 0 {
            &[]
        } else if passphrase.is_null() {
            return Err("passphrase is null".to_string());
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::slice::from_raw_parts(passphrase, passphrase_len) }
        };
        Ok((dir, toml, pass))
    };
    let opened = match args() {
        Ok((dir, toml, pass)) => guard(move || open(dir, toml, pass)),
        Err(e) => Some(Err(e)),
    };
    let e = match opened {
        Some(Ok(c)) => return Box::into_raw(c),
        Some(Err(e)) => e,
        None => "internal error (a bug): the open panicked".into(),
    };
    // SAFETY: the caller's contract.
    unsafe { set_error(error, e) };
    std::ptr::null_mut()
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
    guard(|| c.inner.hello()).map_or(std::ptr::null_mut(), to_c)
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
    // SAFETY: the caller's contract.
    let reply = match unsafe { arg(request, "the request") } {
        Ok(Some(text)) => guard(|| c.rt.block_on(c.inner.call(text)))
            .unwrap_or_else(|| error_reply("bug", "bug", "internal error: the request panicked")),
        Ok(None) => error_reply("bad_request", "app", "the request is null"),
        Err(e) => error_reply("bad_request", "app", &e),
    };
    to_c(reply)
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
    guard(|| c.rt.block_on(c.inner.next_event(wait)))
        .flatten()
        .map_or(std::ptr::null_mut(), to_c)
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
    guard(move || {
        let UmbraClient { rt, inner } = *c;
        rt.block_on(inner.close());
        rt.shutdown_timeout(Duration::from_secs(5));
    });
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
