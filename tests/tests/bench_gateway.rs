//! `umbra bench gateway` on a small run (20 clients, 10 s): the network runs
//! as separate processes, the JSON line parses, and the figures are real
//! measurements of the gateway's process: CPU and memory read, loops back
//! through the gateway, fetches answered.
//!
//! Needs the `umbra` binary: `cargo test --workspace` builds it (as
//! target/<profile>/umbra); set UMBRA_BIN to use another.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENTS: u64 = 20;

/// Stops the bench (SIGTERM: it stops the network's processes) if the test
/// ends before it does.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn small_run_measures_the_gateway_process() {
    let bin = umbra::testnet::built_binary("UMBRA_BIN", "umbra", "cargo build -p umbra");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["bench", "gateway", "--clients", &CLIENTS.to_string()])
        .args(["--seconds", "10", "--warmup", "5", "--json"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("umbra starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut bench = Stop(child);
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = started + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = bench.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the bench did not finish within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().expect("stdout read");
    println!("{out}");
    println!("bench ran {:.0} s", started.elapsed().as_secs_f64());
    assert!(status.success(), "the bench failed: {status}");

    let line = out.lines().last().expect("a JSON line");
    let r: serde_json::Value = serde_json::from_str(line).expect("the last line is JSON");
    let f = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is a number: {r}"))
    };
    assert_eq!(r["clients"].as_u64(), Some(CLIENTS), "{r}");
    assert!(f("seconds") >= 9.0, "{r}");
    let cpu = f("gateway_cpu_cores");
    assert!(cpu.is_finite() && cpu > 0.0, "gateway cpu {cpu}");
    assert!(f("gateway_rss_start_mib") > 0.0, "{r}");
    assert!(f("gateway_rss_end_mib") > 0.0, "{r}");
    assert!(f("rss_per_client_kib").is_finite(), "{r}");
    assert!(f("clients_per_gateway_core").is_finite(), "{r}");
    // Loops really went out through the gateway and came back through it.
    let sent = r["loops_sent"].as_u64().expect("loops_sent");
    let back = r["loops_returned"].as_u64().expect("loops_returned");
    assert!(sent > 0 && back > 0, "loops sent {sent}, returned {back}");
    // The gateway saw its clients' streams (about λ_P + λ_L each) and
    // answered their fetches.
    let want = CLIENTS as f64 * f("client_pps");
    let got = f("client_packets_in_per_s");
    assert!(
        got > 0.5 * want && got < 1.5 * want,
        "{got} client packets/s in, {want} expected"
    );
    assert!(f("fetches_per_s") > 0.0, "{r}");
    // Its loops, drop cover and fetch replies came back to it through
    // the mix nodes, separate processes.
    assert!(f("mix_packets_in_per_s") > 0.0, "{r}");
    assert!(f("client_cpu_cores") > 0.0, "{r}");
    let idle = f("machine_idle_share");
    assert!((0.0..=1.0).contains(&idle), "{r}");
}
