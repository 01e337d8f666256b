//! A training job cancelled in the middle (what Ctrl-C does on the command line, or a DELETE on
//! the server) stops between samples, leaves its last checkpoint up to date and no adapter, and
//! a resumed run finishes from there.

use crunch::job::{self, Job, Outcome, RunCtx, TrainJob};
use crunch::progress::{Cancel, Progress};
use std::sync::Arc;

/// Trips the cancel flag once the run reports `after` updates.
struct CancelAfter {
    cancel: Cancel,
    after: u64,
    phase: std::sync::Mutex<String>,
}

impl Progress for CancelAfter {
    fn start(&self, what: &str, _: u64) {
        *self.phase.lock().unwrap() = what.to_string();
    }
    fn advance(&self, done: u64, _: &str) {
        if *self.phase.lock().unwrap() == "finetune" && done >= self.after {
            self.cancel.cancel();
        }
    }
    fn finish(&self, _: &str) {}
}

#[test]
fn cancelled_training_keeps_its_checkpoint_and_resumes() {
    let dir = crunch_testkit::Scratch::new("train-cancel");
    let out = dir.join("ft.gguf");
    let mut j = TrainJob::new(crunch_testkit::smollm2_gguf(), crunch_testkit::wikitext_dev(), out.clone(), 2);
    j.ctx = 32;
    j.chunks = Some(4);
    j.skip_chunks = 300;
    j.steps = 5;
    j.checkpoint_every = 100; // only the cancel and the end save
    j.tensors = Some(r"^blk\.(0|1)\.".into());
    let job = Job::Finetune(j.clone());

    let cancel = Cancel::new();
    let progress = Arc::new(CancelAfter { cancel: cancel.clone(), after: 2, phase: Default::default() });
    let ctx = RunCtx::new(0).unwrap().with_progress(progress).with_cancel(cancel);
    let e = job::run(&job, &ctx).unwrap_err();
    assert!(matches!(e, crunch::Error::Cancelled), "{e}");
    assert!(!out.exists(), "no adapter from a cancelled run");
    let ck = crunch_train::checkpoint::load(&j.checkpoint_path()).unwrap();
    assert_eq!(ck.header.step, 2, "the checkpoint holds the updates made before the cancel");
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["ft.gguf.ckpt"], "nothing else is left behind");

    let mut resumed = j;
    resumed.resume = true;
    let Outcome::Finetune(o) = job::run(&Job::Finetune(resumed), &RunCtx::new(0).unwrap()).unwrap() else {
        unreachable!()
    };
    assert_eq!(o.result.resumed_at, Some(2));
    assert_eq!(o.result.curve.len(), 5);
    assert!(out.exists());
}
