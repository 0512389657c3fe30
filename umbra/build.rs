//! Stamps the binary with its commit and build date for `umbra --version`.

use std::process::Command;

/// Runs git without optional locks: `git status` would otherwise refresh
/// and rewrite the index, which this script watches, so every build would
/// re-run it and rebuild the crate.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    // SOURCE_DATE_EPOCH makes the date reproducible; else today (UTC).
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| {
            let out = Command::new("date")
                .args(["-u", "-d", &format!("@{s}"), "+%Y-%m-%d"])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .or_else(|| {
            let out = Command::new("date")
                .args(["-u", "+%Y-%m-%d"])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=UMBRA_COMMIT={commit}{}",
        if dirty { "-modified" } else { "" }
    );
    println!("cargo:rustc-env=UMBRA_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Re-run when HEAD moves (a commit, a checkout) or the index changes.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        // Only files that exist: cargo re-runs for a missing one every time.
        for f in ["HEAD", "index", "packed-refs"] {
            if std::path::Path::new(&dir).join(f).exists() {
                println!("cargo:rerun-if-changed={dir}/{f}");
            }
        }
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
}
