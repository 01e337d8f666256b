//! The jobs table: a job's life, listings, and taking over the jobs of a process that died.

use crunch_registry::{JobFilter, JobState, Registry, RegistryError};
use serde_json::json;

#[test]
fn a_job_from_queued_to_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("r.db")).unwrap();
    let id = reg.insert_job("quantize", &json!({"kind": "quantize", "model": "/m.gguf"})).unwrap();
    let j = reg.job(id).unwrap();
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.job["model"], "/m.gguf");
    assert!(j.started_at.is_none());

    assert!(reg.start_job(id, &["/out/a.gguf".into()]).unwrap());
    assert!(!reg.start_job(id, &[]).unwrap(), "a running job does not start again");
    reg.set_job_progress(id, &json!({"stage": "quantize", "done": 3, "total": 10})).unwrap();
    let j = reg.job(id).unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.progress.unwrap()["done"], 3);
    assert_eq!(j.new_outputs, vec!["/out/a.gguf".to_string()]);

    assert!(reg.finish_job(id, JobState::Succeeded, Some(&json!({"ok": 1})), None, None).unwrap());
    assert!(!reg.finish_job(id, JobState::Failed, None, Some("late"), None).unwrap(), "an ended job stays ended");
    let j = reg.job(id).unwrap();
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.result.unwrap()["ok"], 1);
    assert!(j.error.is_none());
    assert!(j.finished_at.unwrap() >= j.started_at.unwrap());
    assert!(matches!(reg.job(id + 1), Err(RegistryError::NoSuchJob(_))));
}

#[test]
fn listings_filter_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("r.db")).unwrap();
    let a = reg.insert_job("quantize", &json!({})).unwrap();
    let b = reg.insert_job("fit", &json!({})).unwrap();
    let c = reg.insert_job("quantize", &json!({})).unwrap();
    reg.finish_job(b, JobState::Canceled, None, Some("canceled"), None).unwrap();
    let all = reg.list_jobs(&JobFilter::default()).unwrap();
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), vec![c, b, a]);
    let q = reg.list_jobs(&JobFilter { kind: Some("quantize".into()), ..Default::default() }).unwrap();
    assert_eq!(q.len(), 2);
    let canceled = reg.list_jobs(&JobFilter { state: Some(JobState::Canceled), ..Default::default() }).unwrap();
    assert_eq!(canceled.len(), 1);
    let page = reg.list_jobs(&JobFilter { before: Some(c), limit: Some(1), ..Default::default() }).unwrap();
    assert_eq!(page[0].id, b);
    let mut counts = reg.count_jobs().unwrap();
    counts.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(counts, vec![("fit".into(), JobState::Canceled, 1), ("quantize".into(), JobState::Queued, 2)]);
}

#[test]
fn jobs_of_a_dead_process_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(dir.path().join("r.db")).unwrap();
    let running = reg.insert_job("quantize", &json!({})).unwrap();
    reg.start_job(running, &["/out/x.gguf".into()]).unwrap();
    let queued = reg.insert_job("fit", &json!({})).unwrap();
    let mine = reg.insert_job("fit", &json!({})).unwrap();
    // A child that has exited: its pid no longer runs the process that owned the jobs.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    reg.connection()
        .execute("UPDATE jobs SET owner_pid = ?1, owner_start = 'gone' WHERE id IN (?2, ?3)", (dead, running, queued))
        .unwrap();

    let adopted = reg.adopt_jobs("server stopped").unwrap();
    assert_eq!(adopted.failed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![running]);
    assert_eq!(adopted.failed[0].error.as_deref(), Some("server stopped"));
    assert_eq!(adopted.failed[0].new_outputs, vec!["/out/x.gguf".to_string()]);
    assert_eq!(adopted.queued.iter().map(|j| j.id).collect::<Vec<_>>(), vec![queued]);
    assert_eq!(reg.job(mine).unwrap().state, JobState::Queued, "this process's own jobs are left alone");
    assert_eq!(reg.job(running).unwrap().state, JobState::Failed);

    // Once taken over, they are this process's: nothing more to adopt.
    let again = reg.adopt_jobs("server stopped").unwrap();
    assert!(again.failed.is_empty() && again.queued.is_empty());
    reg.integrity_check().unwrap();
}
