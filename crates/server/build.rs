//! Stamps the binary with the commit it was built from (`refund_gateway_build_info`'s
//! `commit` label): `git rev-parse` when the source is a git checkout, else `unknown`. Reruns
//! when the checked-out commit changes.

use std::path::Path;
use std::process::Command;

fn main() {
    let git_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Ok(text) = std::fs::read_to_string(&head)
        && let Some(reference) = text.trim().strip_prefix("ref: ")
    {
        // A branch moves without HEAD changing: watch the branch too (and packed refs, where
        // git may keep it).
        println!(
            "cargo:rerun-if-changed={}",
            git_dir.join(reference).display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            git_dir.join("packed-refs").display()
        );
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=REFUND_GATEWAY_COMMIT={commit}");
}
