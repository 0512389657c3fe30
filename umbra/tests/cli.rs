//! The `umbra` binary as operators use it: separate processes, config files,
//! signals. Everything on loopback; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn umbra() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_umbra"));
    c.env("RUST_LOG", "warn");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    wait_for("process exit", secs, || child.try_wait().ok().flatten())
}

#[test]
fn help_describes_the_commands() {
    for (args, needle) in [
        (vec!["--help"], "mix network"),
        (vec!["mixnode", "--help"], "peels one layer"),
        (vec!["directory", "--help"], "signed topology"),
        (vec!["mixnode", "run", "--help"], "SIGTERM"),
    ] {
        let out = umbra().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(needle),
            "{args:?} help lacks {needle:?}:\n{text}"
        );
    }
}

#[test]
fn bad_config_names_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("mix.toml");
    std::fs::write(&p, "authority_threshold = 1\nworker_queu = 5\n").unwrap();
    let out = umbra()
        .args(["mixnode", "run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mix.toml") && err.contains("worker_queu"),
        "{err}"
    );

    std::fs::write(
        &p,
        "[[authorities]]\nurl = \"http://127.0.0.1:1\"\nkey = \"zz\"\n",
    )
    .unwrap();
    let out = umbra()
        .args(["mixnode", "run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authorities") && err.contains("mix.toml") && err.contains("\"zz\""),
        "{err}"
    );
    // A threshold above the authorities listed is refused by name.
    std::fs::write(
        &p,
        format!(
            "authority_threshold = 2\n[[authorities]]\nurl = \"http://127.0.0.1:1\"\nkey = \"{}\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let out = umbra()
        .args(["mixnode", "run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("threshold 2"), "{err}");
}

fn edit(path: &Path, pairs: &[(&str, String)]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for (key, value) in pairs {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            .to_string();
        text = text.replace(&line, &format!("{key} = {value}"));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn directory_and_mixnode_processes_run_and_stop_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir_cfg = tmp.path().join("directory.toml");
    assert!(
        umbra()
            .args(["directory", "init", "--config"])
            .arg(&dir_cfg)
            .status()
            .unwrap()
            .success()
    );
    let dir_port = free_port();
    edit(
        &dir_cfg,
        &[
            ("listen", format!("\"127.0.0.1:{dir_port}\"")),
            ("data_dir", format!("{:?}", tmp.path().join("dir"))),
            ("test_network", "true".into()),
        ],
    );
    let mut dir = Killer(
        umbra()
            .args(["directory", "run", "--config"])
            .arg(&dir_cfg)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(dir.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let key = line
        .trim()
        .strip_prefix("authority key: ")
        .expect("authority key line")
        .to_string();
    assert_eq!(key.len(), 64);
    let dir_addr = format!("127.0.0.1:{dir_port}");
    wait_for("directory", 20, || {
        http_get(&dir_addr, "/v1/authority").filter(|r| r.contains(&key))
    });

    let mix_cfg = tmp.path().join("mix.toml");
    assert!(
        umbra()
            .args([
                "mixnode",
                "init",
                "--authority-key",
                &key,
                "--directory-url",
                &format!("http://{dir_addr}"),
                "--config"
            ])
            .arg(&mix_cfg)
            .status()
            .unwrap()
            .success()
    );
    let metrics_port = free_port();
    edit(
        &mix_cfg,
        &[
            ("listen", format!("\"127.0.0.1:{}\"", free_udp_port())),
            ("metrics_listen", format!("\"127.0.0.1:{metrics_port}\"")),
            ("data_dir", format!("{:?}", tmp.path().join("mix"))),
            // Re-registers (after its admission) within a second.
            ("topology_refresh_secs", "1".into()),
        ],
    );
    // The config checks out, and `check` names the identity `key` prints.
    let out = umbra()
        .args(["mixnode", "key", "--config"])
        .arg(&mix_cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mix_key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(mix_key.len(), 64);
    let out = umbra()
        .args(["mixnode", "check", "--config"])
        .arg(&mix_cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("ok: ") && stdout.contains(&mix_key),
        "{stdout}"
    );
    // A node configured with a wrong authority key fails at once, naming
    // the key, instead of waiting for a topology it can never accept.
    let wrong_cfg = tmp.path().join("wrong.toml");
    std::fs::write(
        &wrong_cfg,
        std::fs::read_to_string(&mix_cfg)
            .unwrap()
            .replace(&key, &"ab".repeat(32)),
    )
    .unwrap();
    let started = Instant::now();
    let out = umbra()
        .args(["mixnode", "run", "--config"])
        .arg(&wrong_cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("untrusted topology")
            && err.contains("authorities")
            && err.contains("wrong.toml"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Started before it is admitted: alive, but not ready, and /readyz
    // says why.
    let mut mix = Killer(
        umbra()
            .args(["mixnode", "run", "--config"])
            .arg(&mix_cfg)
            .spawn()
            .unwrap(),
    );
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let unready = wait_for("mix node /readyz", 30, || {
        http_get(&metrics_addr, "/readyz").filter(|r| r.contains("[+]topology ok"))
    });
    assert!(
        unready.starts_with("HTTP/1.0 503")
            && unready.contains("[-]registered failed: not in the topology"),
        "{unready}"
    );
    let alive = http_get(&metrics_addr, "/healthz").unwrap();
    assert!(
        alive.starts_with("HTTP/1.0 200") && alive.ends_with("ok\n"),
        "{alive}"
    );
    // The operator admits the node: the allowlist edited while the
    // authority runs; the node's next registration is taken.
    let out = umbra()
        .args(["directory", "admit", "--role", "mix", "--config"])
        .arg(&dir_cfg)
        .arg("not-a-key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
    assert!(
        umbra()
            .args(["directory", "admit", "--role", "mix", "--config"])
            .arg(&dir_cfg)
            .arg(&mix_key)
            .status()
            .unwrap()
            .success()
    );
    let out = umbra()
        .args(["directory", "admitted", "--config"])
        .arg(&dir_cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&mix_key));
    let ready = wait_for("mix node ready", 30, || {
        http_get(&metrics_addr, "/readyz").filter(|r| r.starts_with("HTTP/1.0 200"))
    });
    for check in ["topology", "registered", "clock", "links"] {
        assert!(ready.contains(&format!("[+]{check} ok")), "{ready}");
    }
    let dir_ready = http_get(&dir_addr, "/readyz").unwrap();
    assert!(
        dir_ready.starts_with("HTTP/1.0 200") && dir_ready.contains("[+]topology ok"),
        "{dir_ready}"
    );
    let metrics = wait_for("mix node metrics", 30, || {
        http_get(&metrics_addr, "/metrics").filter(|m| m.contains("umbra_mixnode_topology_nodes 1"))
    });
    for series in [
        "umbra_mixnode_packets_received_total",
        "umbra_mixnode_packets_forwarded_total",
        "umbra_mixnode_packets_dropped_total{reason=\"replay\"}",
        "umbra_mixnode_queue_depth",
        "umbra_mixnode_processing_seconds",
    ] {
        assert!(metrics.contains(series), "metrics lack {series}");
    }
    // The mix node appears in the signed topology.
    let topo = http_get(&dir_addr, "/v1/topology").unwrap();
    assert!(topo.contains("mix"), "{topo}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("mix/identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(tmp.path().join("dir/authority.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        for (path, want) in [
            ("dir", 0o700),
            ("mix", 0o700),
            ("dir/directory.redb", 0o600),
        ] {
            let mode = std::fs::metadata(tmp.path().join(path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, want, "{path}");
        }
    }

    sigterm(&mix.0);
    assert!(
        wait_exit(&mut mix.0, 20).success(),
        "mix node exits cleanly on SIGTERM"
    );
    sigterm(&dir.0);
    assert!(
        wait_exit(&mut dir.0, 20).success(),
        "directory exits cleanly on SIGTERM"
    );
}

#[test]
fn version_names_the_commit_and_build_date() {
    let out = umbra().arg("--version").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8(out.stdout).unwrap();
    // "umbra 0.1.0 (commit 0123456789ab, built 2026-12-02)"
    let commit = v
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no commit in {v:?}"));
    let hex = commit.trim_end_matches("-modified");
    assert!(
        hex == "unknown" || (hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit())),
        "{v:?}"
    );
    let date = v
        .split("built ")
        .nth(1)
        .map(|d| d.trim().trim_end_matches(')'))
        .unwrap_or_else(|| panic!("no build date in {v:?}"));
    let parts: Vec<&str> = date.split('-').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "{v:?}"
    );
}

/// The first `n` log lines a `umbra testnet` writes to a pipe with `args`.
fn first_log_lines(args: &[&str], n: usize) -> Vec<String> {
    let mut child = umbra()
        .env("RUST_LOG", "info")
        .args(args)
        .arg("testnet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = Killer(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()).take(n) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while lines.len() < n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.0.kill();
    assert_eq!(lines.len(), n, "the testnet logged only {lines:?}");
    lines
}

#[test]
fn logs_to_a_pipe_are_plain_text_or_json_lines() {
    for line in first_log_lines(&[], 3) {
        assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
        assert!(
            line.contains(" INFO ") || line.contains(" WARN "),
            "{line:?}"
        );
    }
    for line in first_log_lines(&["--log-format", "json"], 3) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
    }
}

/// `umbra ROLE check --config CFG`.
fn check(role: &str, cfg: &Path) -> std::process::Output {
    umbra()
        .args([role, "check", "--config"])
        .arg(cfg)
        .output()
        .unwrap()
}

/// `umbra ARGS… PATH` (an `init`), which must succeed.
fn init(args: &[&str], path: &Path) {
    assert!(umbra().args(args).arg(path).status().unwrap().success());
}

#[test]
fn check_names_every_problem_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("mix.toml");
    let key = "cd".repeat(32);
    init(
        &["mixnode", "init", "--authority-key", &key, "--config"],
        &cfg,
    );
    let data = tmp.path().join("never-made");
    edit(&cfg, &[("data_dir", format!("{data:?}"))]);
    let out = check("mixnode", &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("does not exist yet"), "{stdout}");
    // The example listens on loopback: fine for a test network, and said.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("key `listen`"),
        "{stderr}"
    );
    assert!(!data.exists(), "check created the data directory");

    // Four problems at once, each named.
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("identity.key"), "ab".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            data.join("identity.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    edit(
        &cfg,
        &[
            ("authority_threshold", "2".into()),
            ("worker_queue", "0".into()),
        ],
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace(
        "# public_address = \"203.0.113.7:9000\"",
        "public_address = \"no-such-host.invalid:9000\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = check("mixnode", &cfg);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = cfg.display().to_string();
    let mut wanted = vec![
        "key `authority_threshold`: threshold 2 must be between 1 and the 1 authorities",
        "key `worker_queue`: must be above zero",
        "key `public_address`: no-such-host.invalid:9000 does not resolve",
    ];
    #[cfg(unix)]
    wanted.extend(["mode 755", "chmod 600"]);
    for want in wanted {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("config file {file}: ")) && l.contains(want)),
            "missing {want:?} in:\n{stderr}"
        );
    }
    // A broken file is one problem, with the line.
    std::fs::write(&cfg, "workers = 1\nlistn = 3\n").unwrap();
    let out = check("mixnode", &cfg);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field `listn`") && stderr.contains(&file),
        "{stderr}"
    );

    // The other roles' checks.
    let gw = tmp.path().join("gw.toml");
    init(
        &["gateway", "init", "--authority-key", &key, "--config"],
        &gw,
    );
    edit(&gw, &[("client_listen", "\"127.0.0.1:9500\"".into())]);
    let out = check("gateway", &gw);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("key `client_listen`: 127.0.0.1:9500 is also `listen`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("dir.toml");
    init(&["directory", "init", "--config"], &dir);
    edit(&dir, &[("threshold", "0".into())]);
    let out = check("directory", &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key `threshold`: 0 must be between 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
