/*
 * umbra.h: the Umbra client behind a C ABI (crate umbra-ffi).
 *
 * The client that `umbra daemon` runs, in your process: its encrypted
 * store, its history, and the daemon's JSON API (docs/api.md) as strings
 * instead of WebSocket frames. Requests, replies and events are UTF-8 JSON
 * text exactly as on the WebSocket.
 *
 * Build: cargo build --release -p umbra-ffi
 * Link:  cc app.c -I umbra-ffi/include -L target/release -lumbra_ffi \
 *           -Wl,-rpath,$PWD/target/release
 *        (or link target/release/libumbra_ffi.a and the system libraries
 *        `cargo rustc --release -p umbra-ffi --crate-type staticlib --
 *        --print native-static-libs` lists)
 *
 * Every string the library returns is yours: free it with
 * umbra_string_free. Functions may be called from any thread. Calls on one
 * client are answered one at a time, in order; umbra_next_event may wait
 * in one thread while another calls umbra_call (two threads waiting for
 * events take turns). No function unwinds into C: a panic inside (a bug)
 * becomes a "bug" error reply from umbra_call, an error text from
 * umbra_open, and NULL from umbra_hello and umbra_next_event.
 */
#ifndef UMBRA_H
#define UMBRA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An open client. */
typedef struct UmbraClient UmbraClient;

/*
 * Opens the client kept in data_dir (made 0700 if missing), creating it
 * with a new identity on the first open. The store is encrypted under
 * passphrase (passphrase_len bytes, at least one, any bytes); a wrong one
 * is refused and changes nothing. One client at a time may hold a data
 * directory: a second open is refused while the first is open.
 *
 * config_toml: NULL to read data_dir/daemon.toml (as `umbra daemon`
 * writes it), or the text of one, which replaces that file once the
 * client has opened, so that later opens may pass NULL. It must list the network's
 * directory authorities:
 *
 *   threshold = 1
 *   [[authorities]]
 *   url = "http://127.0.0.1:8000"
 *   key = "<64 hex digits>"
 *
 * (`listen` is not used here.) Returns NULL on failure and, if error is
 * not NULL, sets *error to a message naming what is wrong (free it with
 * umbra_string_free). Opening waits until the client has a topology from
 * the directory, so it can take a few seconds.
 */
UmbraClient *umbra_open(const char *data_dir, const char *config_toml,
                        const uint8_t *passphrase, size_t passphrase_len,
                        char **error);

/* The hello event: {"event":"hello","api":1,"version":…,"me":"<id>"}. */
char *umbra_hello(const UmbraClient *client);

/*
 * Answers one request, e.g.
 *   {"id":1,"op":"send_text","to":"<contact id>","text":"hello"}
 * with its reply,
 *   {"reply":1,"ok":true,"result":{…}}  or  {"reply":1,"ok":false,"error":{…}}.
 * Operations, arguments and error codes: docs/api.md. Never NULL for an
 * open client; a request over 1 MiB gets a bad_request reply.
 */
char *umbra_call(const UmbraClient *client, const char *request);

/*
 * The next event (a message received, a status change, contacts, …: see
 * docs/api.md), waiting at most timeout_ms; NULL if none came. Up to 1,024
 * events wait to be taken; beyond that the oldest are dropped and the next
 * call returns {"event":"lagged","missed":N}: ask "history" for them.
 */
char *umbra_next_event(const UmbraClient *client, uint32_t timeout_ms);

/*
 * Writes the client's last changes, stops it and frees it. Messages not
 * sent yet stay in the store and leave at the next open. No other call on
 * client may be running or made after: a thread waiting in
 * umbra_next_event must return (its timeout) and stop first. NULL is
 * ignored.
 */
void umbra_close(UmbraClient *client);

/* Frees a string the library returned. NULL is ignored. */
void umbra_string_free(char *s);

/*
 * Sends the library's log lines to standard error, those filter lets
 * through (tracing's EnvFilter syntax: "info", "warn,client_sdk=debug";
 * NULL is "info"). Without it or umbra_log_to_callback the library logs
 * nothing. Returns 0, 1 if a
 * logger was already set in this process, -1 if filter is not valid.
 * Lines at info level and above name no addresses, dropbox ids or
 * message contents.
 */
int umbra_log_to_stderr(const char *filter);

/*
 * A function that takes the library's log lines: level 1 error, 2 warn,
 * 3 info, 4 debug, 5 trace; target the module that logged
 * ("client_sdk::state", …); line the event's message and fields, without
 * time, level or target. Both strings are valid only during the call.
 */
typedef void (*umbra_log_fn)(void *user, int level, const char *target,
                             const char *line);

/*
 * Sends the library's log lines that filter lets through (as for
 * umbra_log_to_stderr) to callback, with user: for apps whose standard
 * error goes nowhere (Android's logcat, Apple's os_log, a GUI's own log).
 * callback is called from any of the library's threads, several at once,
 * for the rest of the process's life; it must not block for long or call
 * this library. Returns 0, 1 if a logger was already set in this process,
 * -1 if filter is not valid or callback is NULL.
 */
int umbra_log_to_callback(const char *filter, umbra_log_fn callback,
                          void *user);

/* The library's version (a static string: do not free). */
const char *umbra_version(void);

#ifdef __cplusplus
}
#endif

#endif /* UMBRA_H */
