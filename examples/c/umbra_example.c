/*
 * A command-line Umbra client in C, on the C ABI (umbra-ffi/include/umbra.h).
 *
 *   umbra_example DATA_DIR invite NAME       print an invite for NAME
 *   umbra_example DATA_DIR add INVITE        add a contact from an invite
 *   umbra_example DATA_DIR contacts          print each contact's id and name
 *   umbra_example DATA_DIR send CONTACT TEXT send, wait until stored
 *   umbra_example DATA_DIR listen COUNT      print COUNT messages as they come
 *
 * The passphrase is read from UMBRA_PASSPHRASE. UMBRA_CONFIG names a
 * daemon.toml (it lists the network's directory authorities); when set it
 * is used and saved in DATA_DIR, so later runs may leave it unset. UMBRA_LOG
 * ("warn", "info", …) sends the library's log lines to stderr, through a
 * callback as an app would pass them to its own logger.
 *
 * Build (from the repository's root):
 *   cargo build -p umbra-ffi
 *   cc -o umbra_example examples/c/umbra_example.c -I umbra-ffi/include \
 *      -L target/debug -lumbra_ffi -Wl,-rpath,$PWD/target/debug
 *
 * It reads the few JSON fields it needs with a small helper that relies on
 * the library's compact output with keys in alphabetical order; a real
 * application would use a JSON library.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "umbra.h"

/* The string value of the first "key": in json (escapes kept as they
 * are), malloc'd; NULL if there is none. */
static char *field(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(json, pat);
  if (!p) return NULL;
  p += strlen(pat);
  /* The closing quote: one not escaped by an odd run of backslashes. */
  const char *q = p;
  for (; *q; q++) {
    if (*q == '\\') {
      if (!*++q) break;
    } else if (*q == '"') {
      break;
    }
  }
  char *out = malloc((size_t)(q - p) + 1);
  if (!out) return NULL;
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = '\0';
  return out;
}

/* Reads a whole file, malloc'd; NULL on failure. */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
    free(s);
    s = NULL;
  }
  if (s) s[n] = '\0';
  fclose(f);
  return s;
}

/* A string made like sprintf's, malloc'd; exits if out of memory. */
static char *format(const char *fmt, ...) {
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (!s) exit(1);
  vsnprintf(s, (size_t)n + 1, fmt, again);
  va_end(again);
  return s;
}

/* Sends one request; exits with its error if it failed. The reply is
 * the caller's to free with umbra_string_free. */
static char *call(UmbraClient *c, const char *request) {
  char *reply = umbra_call(c, request);
  if (!reply || !strstr(reply, "\"ok\":true")) {
    fprintf(stderr, "request failed: %s\n", reply ? reply : "(no reply)");
    umbra_string_free(reply);
    umbra_close(c);
    exit(1);
  }
  return reply;
}

/* A JSON string literal of s (quotes, backslashes and control characters
 * escaped), malloc'd. */
static char *quote(const char *s) {
  char *out = malloc(strlen(s) * 6 + 3), *o = out;
  if (!out) exit(1);
  *o++ = '"';
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      *o++ = '\\';
      *o++ = (char)ch;
    } else if (ch < 0x20) {
      o += sprintf(o, "\\u%04x", ch);
    } else {
      *o++ = (char)ch;
    }
  }
  *o++ = '"';
  *o = '\0';
  return out;
}

/* The library's log lines, called from its threads: one fprintf each,
 * which stdio locks, so lines from two threads do not mix. */
static void log_line(void *user, int level, const char *target, const char *line) {
  static const char *names[] = {"?", "error", "warn", "info", "debug", "trace"};
  (void)user;
  fprintf(stderr, "umbra[%s] %s: %s\n", names[level >= 1 && level <= 5 ? level : 0], target, line);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s DATA_DIR invite|add|contacts|send|listen …\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1], *cmd = argv[2];
  const char *pass = getenv("UMBRA_PASSPHRASE");
  if (!pass) {
    fprintf(stderr, "set UMBRA_PASSPHRASE\n");
    return 2;
  }
  if (getenv("UMBRA_LOG") && umbra_log_to_callback(getenv("UMBRA_LOG"), log_line, NULL) < 0) {
    fprintf(stderr, "UMBRA_LOG: not a log filter\n");
    return 2;
  }
  char *config = NULL;
  if (getenv("UMBRA_CONFIG") && !(config = slurp(getenv("UMBRA_CONFIG")))) {
    fprintf(stderr, "cannot read %s\n", getenv("UMBRA_CONFIG"));
    return 2;
  }
  char *error = NULL;
  UmbraClient *c = umbra_open(dir, config, (const uint8_t *)pass, strlen(pass), &error);
  free(config);
  if (!c) {
    fprintf(stderr, "cannot open %s: %s\n", dir, error);
    umbra_string_free(error);
    return 1;
  }
  int status = 0;
  if (!strcmp(cmd, "invite") && argc == 4) {
    char *name = quote(argv[3]);
    char *req = format("{\"id\":1,\"op\":\"invite\",\"name\":%s}", name);
    free(name);
    char *r = call(c, req);
    free(req);
    char *invite = field(r, "invite");
    printf("%s\n", invite ? invite : "");
    free(invite);
    umbra_string_free(r);
  } else if (!strcmp(cmd, "add") && argc == 4) {
    char *inv = quote(argv[3]);
    char *req = format("{\"id\":1,\"op\":\"add_contact\",\"invite\":%s}", inv);
    free(inv);
    char *r = call(c, req);
    free(req);
    char *id = field(r, "id"), *name = field(r, "name");
    printf("added %s (%s)\n", name ? name : "?", id ? id : "?");
    free(id);
    free(name);
    umbra_string_free(r);
  } else if (!strcmp(cmd, "contacts") && argc == 3) {
    char *r = call(c, "{\"id\":1,\"op\":\"contacts\"}");
    /* Each contact object starts with its "id". */
    for (const char *p = strstr(r, "\"contacts\":["); p && (p = strstr(p, "{\"id\":\""));) {
      char *id = field(p, "id"), *name = field(p, "name");
      printf("%s  %s\n", id ? id : "?", name ? name : "?");
      free(id);
      free(name);
      p++;
    }
    umbra_string_free(r);
  } else if (!strcmp(cmd, "send") && argc == 5) {
    char *to = quote(argv[3]), *text = quote(argv[4]);
    char *req = format("{\"id\":1,\"op\":\"send_text\",\"to\":%s,\"text\":%s}", to, text);
    free(to);
    free(text);
    char *r = call(c, req);
    free(req);
    /* Its seq, to follow its status until the dropbox gateway holds it. */
    const char *s = strstr(r, "\"seq\":");
    long seq = s ? strtol(s + 6, NULL, 10) : -1;
    umbra_string_free(r);
    if (seq < 0) {
      fprintf(stderr, "no seq in the reply\n");
      umbra_close(c);
      return 1;
    }
    printf("sent #%ld\n", seq);
    char want[64];
    snprintf(want, sizeof want, "\"seq\":%ld,", seq);
    time_t until = time(NULL) + 120;
    status = 1;
    while (time(NULL) < until && status) {
      char *e = umbra_next_event(c, 1000);
      if (e && strstr(e, "\"event\":\"status\"") && strstr(e, want)) {
        char *st = field(e, "status");
        printf("  #%ld: %s\n", seq, st ? st : "?");
        if (st && (!strcmp(st, "stored") || !strcmp(st, "read"))) status = 0;
        if (st && !strncmp(st, "failed", 6)) until = 0;
        free(st);
      }
      umbra_string_free(e);
    }
    if (status) fprintf(stderr, "message #%ld not stored\n", seq);
  } else if (!strcmp(cmd, "listen") && argc == 4) {
    long left = strtol(argv[3], NULL, 10);
    time_t until = time(NULL) + 180;
    while (left > 0 && time(NULL) < until) {
      char *e = umbra_next_event(c, 1000);
      if (e && strstr(e, "\"event\":\"message\"") && strstr(e, "\"outgoing\":false")) {
        char *from = field(e, "from"), *text = field(e, "text");
        printf("from %.12s…: %s\n", from ? from : "?", text ? text : "[not text]");
        fflush(stdout);
        free(from);
        free(text);
        left--;
      }
      umbra_string_free(e);
    }
    if (left > 0) {
      fprintf(stderr, "%ld messages did not come\n", left);
      status = 1;
    }
  } else {
    fprintf(stderr, "unknown command or wrong arguments: %s\n", cmd);
    status = 2;
  }
  umbra_close(c);
  return status;
}
