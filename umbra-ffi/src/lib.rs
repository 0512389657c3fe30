#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use daemon::{DaemonFile, Embedded};
use std::ffi::{CStr, CString, c_char, c_void};
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

/// A log filter from C: null is `"info"`; `None` if not valid.
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn env_filter(p: *const c_char) -> Option<tracing_subscriber::EnvFilter> {
    // SAFETY: the caller's contract.
    let f = unsafe { arg(p, "filter") }.ok()?.unwrap_or("info");
    tracing_subscriber::EnvFilter::try_new(f).ok()
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
        let Some(f) = (unsafe { env_filter(filter) }) else {
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

/// A C function that takes the library's log lines.
pub type UmbraLogFn =
    unsafe extern "C" fn(user: *mut c_void, level: i32, target: *const c_char, line: *const c_char);

/// The callback and its argument, shared by every thread that logs.
#[derive(Clone, Copy)]
struct Callback {
    f: UmbraLogFn,
    user: *mut c_void,
}

// SAFETY: the caller of `umbra_log_to_callback` promises that `f` may be
// called with `user` from any thread, at once, for the life of the process.
unsafe impl Send for Callback {}
unsafe impl Sync for Callback {}

/// Makes one [`LineWriter`] per log event, knowing its level and target.
#[derive(Clone, Copy)]
struct ToCallback(Callback);

/// Gathers one formatted event; hands it to C when dropped.
struct LineWriter {
    cb: Callback,
    level: i32,
    target: String,
    buf: Vec<u8>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // Bounded: a log line is short; a runaway one is cut.
        let room = (64 * 1024usize).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&b[..b.len().min(room)]);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        while self.buf.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            self.buf.pop();
        }
        if self.buf.is_empty() {
            return;
        }
        let clean = |v: Vec<u8>| {
            let v: Vec<u8> = v
                .into_iter()
                .map(|c| if c == 0 { b'?' } else { c })
                .collect();
            CString::new(v).unwrap_or_default()
        };
        let line = clean(std::mem::take(&mut self.buf));
        let target = clean(std::mem::take(&mut self.target).into_bytes());
        // SAFETY: the caller's contract (`umbra_log_to_callback`); both
        // strings live until the call returns.
        unsafe { (self.cb.f)(self.cb.user, self.level, target.as_ptr(), line.as_ptr()) }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ToCallback {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            cb: self.0,
            level: 3,
            target: String::new(),
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        use tracing::Level;
        let l = *meta.level();
        let level = if l == Level::ERROR {
            1
        } else if l == Level::WARN {
            2
        } else if l == Level::INFO {
            3
        } else if l == Level::DEBUG {
            4
        } else {
            5
        };
        LineWriter {
            cb: self.0,
            level,
            target: meta.target().to_string(),
            buf: Vec::new(),
        }
    }
}

/// Sends the library's log lines, those `filter` lets through (as for
/// [`umbra_log_to_stderr`]), to `callback`: one call per line, with
/// `user`, the level (1 error, 2 warn, 3 info, 4 debug, 5 trace), the
/// target (the module that logged, e.g. `client_sdk::state`) and the line
/// (its fields, without time, level or target), both valid only during
/// the call. For apps whose standard error goes nowhere (Android's
/// logcat, Apple's os_log, a GUI's own log). Returns 0, 1 if a logger was
/// already set, or −1 if `filter` is not valid or `callback` is null.
///
/// # Safety
/// `filter` is null or a NUL-terminated string. `callback` may be called
/// from any of the library's threads, several at once, with `user`, for
/// the rest of the process's life; it must not unwind, block for long or
/// call this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umbra_log_to_callback(
    filter: *const c_char,
    callback: Option<UmbraLogFn>,
    user: *mut c_void,
) -> i32 {
    let Some(f) = callback else {
        return -1;
    };
    let cb = Callback { f, user };
    let run = move || {
        // SAFETY: the caller's contract.
        let Some(filter) = (unsafe { env_filter(filter) }) else {
            return -1;
        };
        match tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(ToCallback(cb))
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .try_init()
        {
            Ok(()) => 0,
            Err(_) => 1,
        }
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or(-1)
}

/// The library's version, a static string (not to be freed).
#[unsafe(no_mangle)]
pub extern "C" fn umbra_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Line = (usize, i32, String, String);
    static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

    unsafe extern "C" fn take(
        user: *mut c_void,
        level: i32,
        target: *const c_char,
        line: *const c_char,
    ) {
        // SAFETY: the library passes NUL-terminated strings.
        let (t, l) = unsafe { (CStr::from_ptr(target), CStr::from_ptr(line)) };
        LINES.lock().unwrap().push((
            user as usize,
            level,
            t.to_string_lossy().into_owned(),
            l.to_string_lossy().into_owned(),
        ));
    }

    /// The only test in this binary: a logger is set once per process.
    #[test]
    fn log_lines_reach_the_callback_as_the_filter_lets_them() {
        let user = 7usize as *mut c_void;
        // SAFETY: literals and null; `take` may run on any thread.
        unsafe {
            assert_eq!(umbra_log_to_callback(c"warn".as_ptr(), None, user), -1);
            assert_eq!(
                umbra_log_to_callback(c"info,[".as_ptr(), Some(take), user),
                -1
            );
            let filter = c"warn,umbra_ffi=debug";
            assert_eq!(umbra_log_to_callback(filter.as_ptr(), Some(take), user), 0);
        }
        tracing::warn!(code = 3, "a warning");
        tracing::debug!("a debug line");
        tracing::trace!("below the filter");
        tracing::info!(target: "client_sdk::state", "below the filter");
        tracing::error!(target: "client_sdk::state", "an error\0and more");
        std::thread::spawn(|| tracing::warn!("from another thread"))
            .join()
            .unwrap();
        // SAFETY: null filters.
        unsafe {
            assert_eq!(umbra_log_to_callback(std::ptr::null(), Some(take), user), 1);
            assert_eq!(umbra_log_to_stderr(std::ptr::null()), 1);
        }
        let lines = LINES.lock().unwrap().clone();
        let me = "umbra_ffi::tests";
        assert_eq!(
            lines,
            vec![
                (7, 2, me.into(), "a warning code=3".into()),
                (7, 4, me.into(), "a debug line".into()),
                (7, 1, "client_sdk::state".into(), "an error?and more".into()),
                (7, 2, me.into(), "from another thread".into()),
            ]
        );
    }
}
