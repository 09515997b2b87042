//! Build script: records the commit and the build profile for
//! `wayfinder --version` (`WAYFINDER_COMMIT`, `WAYFINDER_PROFILE`).
//!
//! The commit is `git rev-parse --short HEAD` when the sources are a git
//! checkout and git runs, else "unknown". The script runs again when HEAD
//! moves (the files git keeps it in are watched), so the version never
//! names a stale commit.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Asks cargo to rerun this script when git's file `name` (e.g. `HEAD`,
/// `refs/heads/main`) changes; files that do not exist are skipped (cargo
/// would otherwise rerun the script on every build).
fn watch_git_file(name: &str) {
    if let Some(path) = git(&["rev-parse", "--git-path", name]) {
        let path = PathBuf::from(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    if commit.is_some() {
        watch_git_file("HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch_git_file(&branch);
        }
        watch_git_file("packed-refs");
    }
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    // "debug" or "release" (custom profiles report the one they inherit).
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=WAYFINDER_COMMIT={commit}");
    println!("cargo:rustc-env=WAYFINDER_PROFILE={profile}");
}
