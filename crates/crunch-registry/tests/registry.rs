//! The registry on real SQLite files: round trip, migrations, concurrent writers (threads and
//! processes), and a writer process killed mid-write.

use crunch_registry::{Filter, NewRun, OutputFile, Registry, RegistryError, RunStatus, TensorChoice};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn round_trip_of_a_run() {
    let dir = scratch();
    let db = dir.path().join("sub/registry.db");
    let reg = Registry::open(&db).unwrap();
    let mut run = reg
        .start_run(NewRun::new("fit").label("q4-budget").params(serde_json::json!({"max_size": 1000})).input(
            "model",
            "/m.gguf",
            Some("ab".into()),
            Some(10),
        ))
        .unwrap();
    let id = run.id();
    let listed = reg.list(&Filter::default()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, RunStatus::Running);
    run.set_tensors(&[
        TensorChoice { name: "a".into(), ty: "Q4_0".into(), n_elements: 64, bytes: 36, predicted_kld: Some(0.01) },
        TensorChoice { name: "b".into(), ty: "Q8_0".into(), n_elements: 32, bytes: 34, predicted_kld: None },
    ])
    .unwrap();
    run.set_output(&OutputFile { path: "/o.gguf".into(), sha256: Some("cd".into()), bytes: Some(70) }).unwrap();
    run.data("plan", &serde_json::json!({"solver": "dp"})).unwrap();
    run.finish(&[("kld", 0.02), ("ppl", 12.5), ("nan_is_skipped", f64::NAN)]).unwrap();

    let r = reg.get(id).unwrap();
    assert_eq!(r.summary.status, RunStatus::Ok);
    assert_eq!(r.summary.kind, "fit");
    assert_eq!(r.summary.label.as_deref(), Some("q4-budget"));
    assert_eq!(r.summary.metrics.get("kld"), Some(&0.02));
    assert!(!r.summary.metrics.contains_key("nan_is_skipped"));
    assert_eq!(r.tensors.len(), 2);
    assert_eq!(r.tensors[0].predicted_kld, Some(0.01));
    assert_eq!(r.inputs[0].sha256.as_deref(), Some("ab"));
    assert_eq!(r.output.as_ref().unwrap().bytes, Some(70));
    assert_eq!(r.data["plan"]["solver"], "dp");
    assert_eq!(r.params["max_size"], 1000);
    assert!(r.summary.duration_s.unwrap() >= 0.0);
    assert!(r.summary.peak_rss_bytes.unwrap_or(1) > 0);
    assert!(matches!(reg.get(id + 100), Err(RegistryError::NoSuchRun(_))));
    reg.integrity_check().unwrap();
}

#[test]
fn dropped_or_failed_runs_are_marked_failed() {
    let dir = scratch();
    let reg = Registry::open(dir.path().join("r.db")).unwrap();
    let a = reg.start_run(NewRun::new("quantize")).unwrap().id();
    // Dropped at the end of the statement above without finish.
    let b = reg.start_run(NewRun::new("eval")).unwrap();
    let bid = b.id();
    b.fail("bad model").unwrap();
    let r = std::panic::catch_unwind(|| {
        let reg = Registry::open(dir.path().join("r.db")).unwrap();
        let _run = reg.start_run(NewRun::new("convert")).unwrap();
        panic!("boom");
    });
    assert!(r.is_err());
    let runs = reg.list(&Filter::default()).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.status == RunStatus::Failed), "{runs:?}");
    assert_eq!(reg.get(bid).unwrap().summary.error.as_deref(), Some("bad model"));
    assert!(reg.get(a).unwrap().summary.error.unwrap().contains("without finishing"));
    assert_eq!(runs[0].error.as_deref(), Some("panicked"));
    let failed = reg.list(&Filter { status: Some(RunStatus::Failed), kind: Some("eval".into()), ..Default::default() });
    assert_eq!(failed.unwrap().len(), 1);
}

#[test]
fn migrations_are_versioned_and_newer_schemas_refused() {
    let dir = scratch();
    let db = dir.path().join("r.db");
    drop(Registry::open(&db).unwrap());
    let reg = Registry::open(&db).unwrap(); // second open: nothing to migrate
    let v: u32 = reg.connection().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, crunch_registry::schema::SCHEMA_VERSION);
    let mode: String = reg.connection().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    reg.connection().pragma_update(None, "user_version", 999).unwrap();
    drop(reg);
    let err = Registry::open(&db).unwrap_err();
    assert!(matches!(err, RegistryError::TooNew { found: 999, .. }), "{err}");
    assert!(err.to_string().contains("newer"));

    // Not a database at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let err = Registry::open(&junk).unwrap_err();
    assert!(err.to_string().contains("junk.db"), "{err}");
}

#[test]
fn hash_cache() {
    let dir = scratch();
    let reg = Registry::open(dir.path().join("r.db")).unwrap();
    assert_eq!(reg.cached_hash("/a", 1, 2).unwrap(), None);
    reg.store_hash("/a", 1, 2, "ff").unwrap();
    assert_eq!(reg.cached_hash("/a", 1, 2).unwrap().as_deref(), Some("ff"));
    assert_eq!(reg.cached_hash("/a", 1, 3).unwrap(), None);
}

#[test]
fn concurrent_writer_threads() {
    let dir = scratch();
    let db = dir.path().join("r.db");
    Registry::open(&db).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let reg = Registry::open(&db).unwrap();
                for i in 0..10 {
                    let mut run = reg.start_run(NewRun::new("quantize").label(format!("t{t}-{i}"))).unwrap();
                    run.metrics(&[("x", i as f64)]).unwrap();
                    run.finish(&[("y", t as f64)]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let reg = Registry::open(&db).unwrap();
    let runs = reg.list(&Filter::default()).unwrap();
    assert_eq!(runs.len(), 40);
    assert!(runs.iter().all(|r| r.status == RunStatus::Ok && r.metrics.len() == 2));
    reg.integrity_check().unwrap();
}

/// The body of the child process used below: writes runs as fast as it can until killed.
const CHILD_ENV: &str = "CRUNCH_REGISTRY_TEST_CHILD";

#[test]
fn child_writer() {
    let Some(db) = std::env::var_os(CHILD_ENV) else { return };
    let reg = Registry::open(db).unwrap();
    let mut i = 0u64;
    loop {
        let mut run = reg.start_run(NewRun::new("search").label(format!("child-{i}"))).unwrap();
        let tensors: Vec<TensorChoice> = (0..200)
            .map(|k| TensorChoice {
                name: format!("blk.{k}.ffn_down.weight"),
                ty: "Q4_K".into(),
                n_elements: 1 << 20,
                bytes: 1 << 19,
                predicted_kld: Some(k as f64 * 1e-4),
            })
            .collect();
        run.set_tensors(&tensors).unwrap();
        run.data("blob", &serde_json::json!({ "pad": "x".repeat(20_000) })).unwrap();
        if i % 10 != 5 {
            run.finish(&[("i", i as f64)]).unwrap();
        } else {
            // Left running on purpose: the next iteration starts while this run is open.
            std::mem::forget(run);
        }
        i += 1;
    }
}

fn spawn_child(db: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child test process")
}

#[test]
fn killed_writer_leaves_a_sound_registry_and_failed_runs() {
    let dir = scratch();
    let db = dir.path().join("r.db");
    Registry::open(&db).unwrap();
    for round in 0..3 {
        let mut child = spawn_child(&db);
        let reg = Registry::open(&db).unwrap();
        let t0 = Instant::now();
        // Wait until the child has written a few runs, then kill it at a moment it is writing.
        loop {
            let n = reg.list(&Filter { kind: Some("search".into()), ..Default::default() }).unwrap().len();
            if n >= 6 * (round + 1) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "child wrote only {n} runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(7 * round as u64 + 3));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        drop(reg);

        let reg = Registry::open(&db).unwrap();
        reg.integrity_check().unwrap();
        let runs = reg.list(&Filter::default()).unwrap();
        assert!(runs.iter().all(|r| r.status != RunStatus::Running), "a run of the dead process is still running");
        let failed: Vec<_> = runs.iter().filter(|r| r.status == RunStatus::Failed).collect();
        assert!(!failed.is_empty());
        assert!(failed.iter().all(|r| r.error.as_deref().unwrap_or("").starts_with("interrupted")), "{failed:?}");
        for r in runs.iter().filter(|r| r.status == RunStatus::Ok) {
            let full = reg.get(r.id).unwrap();
            assert_eq!(full.tensors.len(), 200, "a finished run lost its plan");
        }
    }
}

#[test]
fn concurrent_writer_processes() {
    let dir = scratch();
    let db = dir.path().join("r.db");
    Registry::open(&db).unwrap();
    let mut kids: Vec<_> = (0..2).map(|_| spawn_child(&db)).collect();
    let reg = Registry::open(&db).unwrap();
    let t0 = Instant::now();
    // Write from this process too while the two children write.
    let mut mine = 0;
    while t0.elapsed() < Duration::from_secs(2) || mine < 5 {
        reg.start_run(NewRun::new("eval")).unwrap().finish(&[("k", 1.0)]).unwrap();
        mine += 1;
    }
    for k in &mut kids {
        k.kill().unwrap();
        k.wait().unwrap();
    }
    drop(reg);
    let reg = Registry::open(&db).unwrap();
    reg.integrity_check().unwrap();
    let evals = reg.list(&Filter { kind: Some("eval".into()), ..Default::default() }).unwrap();
    assert_eq!(evals.len(), mine);
    assert!(evals.iter().all(|r| r.status == RunStatus::Ok));
    assert!(reg.list(&Filter { kind: Some("search".into()), ..Default::default() }).unwrap().len() >= 2);
}
