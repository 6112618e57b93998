//! The quickstart as a user runs it: a golden run, and runs killed with SIGKILL at random instants
//! then resumed, after which every Operation has exactly one outcome and the world matches it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use saga_core::{NotUndone, NotUndoneReason, OperationState, Outcome, RecordKind, Store};
use saga_store::SledStore;

/// The quickstart binary, which `cargo test` builds next to this test's directory.
fn quickstart() -> Command {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let mut command = Command::new(debug.join("examples").join("quickstart"));
    command.env("USER", "tester");
    command
}

fn run(args: &[&str]) -> Output {
    quickstart().args(args).output().unwrap()
}

/// Replaces what changes from run to run (times, the id, the data directory) with placeholders.
fn normalise(stdout: &str, data: &Path) -> String {
    let id = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("operation "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_owned();
    stdout
        .lines()
        .map(|line| {
            let line = match line.split_once(' ') {
                Some((time, rest)) if time.len() == 24 && time.ends_with('Z') => {
                    format!("<time> {rest}")
                }
                _ => line.to_owned(),
            };
            line.replace(&id, "<id>").replace(&data.display().to_string(), "<data>")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_plain_run_prints_the_golden_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(&["--data", data.to_str().unwrap(), "--warm-ms", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let actual = normalise(&String::from_utf8(out.stdout).unwrap(), &data);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quickstart.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, format!("{actual}\n")).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(actual, expected.trim_end(), "rerun with UPDATE_GOLDEN=1 if the change is intended");

    // The stored log reads back the same, and the report lists the Operation.
    let id = actual.lines().last().unwrap();
    assert_eq!(id, "operation <id>: succeeded");
    let report = run(&["--data", data.to_str().unwrap(), "report"]);
    let csv = String::from_utf8(report.stdout).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().contains(",provision-site,succeeded,site,demo,tester,"),
        "{csv}"
    );
}

#[test]
fn bad_flags_are_errors_that_say_what() {
    let out = run(&["--fail-at", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown step \"nope\""));
    let out = run(&["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("create-site, write-config, migrate, warm-cache, publish"));
}

fn site_of(state: &OperationState) -> String {
    let params: serde_json::Value = serde_json::from_slice(&state.params).unwrap();
    params["site"].as_str().unwrap().to_owned()
}

#[test]
fn runs_killed_at_random_instants_resume_to_one_outcome_that_the_world_matches() {
    let seed = std::env::var("SAGA_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (set SAGA_KILL_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let steps = ["create-site", "write-config", "migrate", "warm-cache", "publish"];
    let runs = 50;
    for i in 0..runs {
        let site = format!("s{i}");
        let mut args = vec![
            "--data".to_owned(),
            data_arg.clone(),
            "--site".into(),
            site,
            "--warm-ms".into(),
            "300".into(),
        ];
        match rng.u8(0..3) {
            0 => {}
            1 => args.extend(["--fail-at".into(), steps[rng.usize(0..steps.len())].into()]),
            _ => args.extend(["--cancel-after".into(), rng.u64(0..400).to_string()]),
        }
        let mut child =
            quickstart().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..700)));
        // SIGKILL: no destructor, no flush, nothing runs after it.
        let _ = child.kill();
        child.wait().unwrap();
        let resumed = run(&["--data", &data_arg, "resume"]);
        assert!(
            matches!(resumed.status.code(), Some(0 | 1)),
            "run {i} ({args:?}): resume failed: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
    }

    let store = SledStore::open(data.join("store")).unwrap();
    let world = data.join("world");
    let migrations = std::fs::read_to_string(world.join("migrations.log")).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let ids = runtime.block_on(store.list_environment("quickstart", 0, u64::MAX)).unwrap();
    assert!(runtime.block_on(store.list_unfinished()).unwrap().is_empty());
    let mut sites = Vec::new();
    let mut outcomes = std::collections::BTreeMap::new();
    for id in ids {
        let records = runtime.block_on(store.read(id)).unwrap();
        let finished = records
            .iter()
            .filter(|r| matches!(r.kind, RecordKind::OperationFinished { .. }))
            .count();
        assert_eq!(finished, 1, "operation {id} has {finished} outcomes");
        let state = OperationState::fold(id, &records).unwrap();
        let site = site_of(&state);
        let outcome = state.outcome.clone().unwrap();
        *outcomes.entry(outcome.status()).or_insert(0) += 1;
        let dir = world.join("sites").join(&site);
        let public = world.join("public").join(&site);
        let migrated = migrations.lines().any(|l| l.starts_with(&format!("{site} ")));
        match &outcome {
            Outcome::Succeeded => {
                assert_eq!(
                    std::fs::read_link(&public).unwrap(),
                    PathBuf::from("../sites").join(&site)
                );
                assert!(dir.join("config.json").is_file(), "{site}");
                assert_eq!(std::fs::read_dir(dir.join("cache")).unwrap().count(), 6, "{site}");
                assert!(migrated, "{site}");
            }
            Outcome::RolledBack { .. } => {
                assert!(
                    !dir.exists() && public.symlink_metadata().is_err(),
                    "{site}: rolled back but left files"
                );
                assert!(!migrated, "{site}: rolled back but migrated");
            }
            Outcome::RollbackIncomplete { not_undone, .. } => {
                assert_eq!(
                    not_undone,
                    &[NotUndone { step: "migrate".into(), reason: NotUndoneReason::Irreversible }]
                );
                assert!(
                    !dir.exists() && public.symlink_metadata().is_err(),
                    "{site}: left more than it names"
                );
            }
        }
        sites.push(site);
    }
    // Nothing is left in the world by a run that never created its Operation.
    for entry in std::fs::read_dir(world.join("sites")).into_iter().flatten() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(sites.contains(&name), "site {name} has files but no operation");
    }
    println!("{} operations over {runs} killed runs: {outcomes:?}", sites.len());
    assert!(sites.len() >= runs / 2, "most runs create their operation before the kill");
}
