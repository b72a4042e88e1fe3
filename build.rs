//! Build script: stamps the source revision into the binary for `bms_exporter_build_info`.
//!
//! `BMS_EXPORTER_REVISION` from the environment wins (a container build has no `.git` and passes it as a build
//! argument); otherwise `git rev-parse --short=12 HEAD` of the checkout; outside git (a source tarball) nothing is
//! set and the metric says "unknown"; so is a tarball unpacked inside another repository. No dependency: git is asked, and its absence is not an error.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BMS_EXPORTER_REVISION");
    if std::env::var_os("BMS_EXPORTER_REVISION").is_some() {
        // Cargo passes the variable through to option_env! itself.
        return;
    }
    // Only this checkout's own history: a source tarball unpacked inside some other repository (a packaging
    // tree) must not be stamped with that repository's commit.
    let Some(top) = git(&["rev-parse", "--show-toplevel"]) else { return };
    let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR") else { return };
    if std::fs::canonicalize(&top).ok() != std::fs::canonicalize(&manifest).ok() {
        return;
    }
    let Some(revision) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    println!("cargo:rustc-env=BMS_EXPORTER_REVISION={revision}");
    // Rebuild when HEAD moves: a checkout changes HEAD, a commit changes the branch's ref (loose or packed).
    // `--git-path` finds them in a linked worktree too, where `.git` is a file pointing elsewhere.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &reference]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        // A missing file would make cargo rerun this script on every build; only existing files are watched.
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// One line of git's output in the manifest directory, or `None` when git is missing or says no.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
