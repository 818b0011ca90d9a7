//! The main command run a second time (what `cargo xtask train` passes: `--continue`): on a
//! finished run it skips every stage, prints the report again and changes no weights; a
//! config that differs from the run's is refused naming the key and `--fresh`; `--fresh`
//! moves the old run aside and starts over.

mod common;

use common::*;

const EXPORTS: [&str; 3] = [
    "pretrain/teacher.safetensors",
    "distill/student.safetensors",
    "apt/generator.safetensors",
];

#[test]
fn a_second_run_continues_a_finished_run_and_fresh_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let sets = ["--set", "threads=1", "--set", "report.prompts=8"];
    let with = |extra: &[&str]| -> Vec<String> {
        let all: Vec<&str> = sets.iter().chain(extra).copied().collect();
        smoke_args(&out, &cache, &all)
    };
    // The first run starts the directory (--continue with nothing to continue starts).
    let o = apt(&with(&["--continue"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let read = |root: &std::path::Path| -> Vec<Vec<u8>> {
        EXPORTS
            .iter()
            .map(|e| std::fs::read(root.join(e)).unwrap())
            .collect()
    };
    let first = read(&out);

    // The second: every stage skipped, the report printed, no weight changed.
    let o = apt(&with(&["--continue"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("report      "),
        "{}",
        text(&o.stdout)
    );
    assert!(
        read(&out) == first,
        "a second run changed the exported weights"
    );

    // Another config on the same run: refused, naming the key and how to start over.
    let o = apt(&with(&["--continue", "--set", "apt.lambda_r1=50.0"]));
    assert_clear_error(&o, &["apt.lambda_r1", "--fresh"]);

    // A --fresh that a check refuses leaves the old run where it was.
    let o = apt(&with(&[
        "--fresh",
        "--set",
        "pretrain.train.batch_size=100000000",
    ]));
    assert_clear_error(&o, &["pretrain.train.batch_size"]);
    assert!(read(&out) == first && !dir.path().join("run.old-1").exists());

    // --fresh moves the run aside and trains a new one.
    let o = apt(&with(&["--fresh", "--set", "apt.lambda_r1=50.0"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("run.old-1"), "{}", text(&o.stderr));
    let aside = dir.path().join("run.old-1");
    assert!(read(&aside) == first, "the old run was kept whole");
    assert!(
        read(&out)[2] != first[2],
        "the new run trained its own generator"
    );
}
