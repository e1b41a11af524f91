//! Every file of the fuzz corpus (`fuzz/corpus/<target>/`: the seeds and the regression inputs of
//! past findings) replayed through the same entry points the fuzz targets call
//! (`kizen_gateway::fuzzing`), on the stable toolchain: an input that once broke an invariant
//! breaks this test if the bug comes back.
//!
//! `config_load` sets environment variables and changes the working directory (figment's jail),
//! which would leak into the tests that run alongside it and into the processes they start: its
//! files are replayed in a child process of this test binary.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::Command,
};

use kizen_gateway::fuzzing::TARGETS;

/// Targets replayed in a child process: they change process-wide state.
const ISOLATED: [&str; 1] = ["config_load"];
/// Set in the child process; names the target it replays.
const CHILD_ENV: &str = "KIZEN_FUZZ_CORPUS_CHILD";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus file", dir.display());
    files
}

/// Runs every corpus file of `target`: how many, and the failures by file.
fn replay(target: &str) -> (usize, Vec<String>) {
    let entry = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, entry)| *entry)
        .expect("a known target");
    let mut failures = Vec::new();
    let files = corpus_files(target);
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!("{}: {why}", file.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "fuzz/fuzz_targets and fuzzing::TARGETS differ"
    );
    for (name, _) in TARGETS {
        corpus_files(name);
    }
}

#[test]
fn the_corpus_replays_through_the_fuzz_entry_points() {
    let mut failures = Vec::new();
    for (name, _) in TARGETS {
        if ISOLATED.contains(&name) {
            let output = Command::new(std::env::current_exe().expect("the test binary"))
                .args([
                    "--exact",
                    "fuzz_corpus::isolated_target_replay",
                    "--include-ignored",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(CHILD_ENV, name)
                .output()
                .expect("the test binary runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            // A filter that matches nothing would pass without replaying anything.
            if !stdout.contains(&format!("replayed {name}: ")) {
                failures.push(format!(
                    "{name}: the child process replayed nothing:\n{stdout}"
                ));
            }
            if !output.status.success() {
                failures.push(format!(
                    "{name} (child process, {}):\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        } else {
            failures.extend(replay(name).1);
        }
    }
    assert!(
        failures.is_empty(),
        "corpus files that break an invariant:\n{}",
        failures.join("\n")
    );
}

/// The child process's part of the replay; does nothing unless started by it.
#[test]
#[ignore = "run by the_corpus_replays_through_the_fuzz_entry_points in a child process"]
fn isolated_target_replay() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (count, failures) = replay(&target);
    println!("replayed {target}: {count} files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
