//! A study on a tiny model: the shared init is trained once, every variant × seed runs its
//! adversarial stage from it, the results table has every seed with intervals, running it
//! again trains nothing, and a variant that changes anything but [apt] is refused.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_flow::RunEnd;
use apt_pipeline::study::{evaluate_study, run_study, write_results, Study, StudyConfig};
use apt_pipeline::{RunDir, Stage};
use common::{tiny_run, QUICK_TEACHER_AND_STUDENT};

/// The study's base config: the quick teacher and student, two APT updates, a small report.
fn base_config() -> String {
    format!(
        "{}{QUICK_TEACHER_AND_STUDENT}{}",
        tiny_run("unused", 5, None),
        r#"
[apt]
[apt.train]
steps = 2
batch_size = 2
optimizer = { kind = "rmsprop", lr = 1e-4, alpha = 0.9 }
optimizer_d = { kind = "rmsprop", lr = 1e-4, alpha = 0.9 }
checkpoint_every = 2

[report]
prompts = 6
bootstrap = 50
"#
    )
}

fn study(dir: &Path, variants: &str) -> Study {
    let base = dir.join("base.toml");
    std::fs::write(&base, base_config()).unwrap();
    let text = format!(
        "base = \"base.toml\"\nout = {:?}\nseeds = [1, 2]\n{variants}",
        dir.join("study")
    );
    let file = dir.join("study.toml");
    std::fs::write(&file, text).unwrap();
    Study::load(&file).unwrap()
}

const VARIANTS: &str = r#"
[[variants]]
name = "paper"
about = "the base recipe"

[[variants]]
name = "translate"
set = ["apt.translate=3", "apt.loss=\"relativistic\""]
"#;

#[test]
fn a_study_trains_its_init_once_and_every_variant_seed_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = study(dir.path(), VARIANTS);
    assert_eq!(s.runs.len(), 4);
    let stop = Arc::new(AtomicBool::new(false));
    assert_eq!(
        run_study(&s, &mut (), stop.clone()).unwrap(),
        RunEnd::Completed
    );
    let shared = RunDir::new(dir.path().join("study/shared"));
    assert!(shared.is_finished(Stage::Pretrain) && shared.is_finished(Stage::Distill));
    assert!(!shared.stage(Stage::Apt).exists());
    for (variant, seed, cfg) in &s.runs {
        let run = RunDir::new(&cfg.out);
        assert!(run.is_finished(Stage::Apt), "{variant} {seed}");
        // The init is the shared one, linked, not retrained.
        let link = std::fs::symlink_metadata(run.stage(Stage::Pretrain)).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(cfg.seed, *seed);
    }
    let seeds: Vec<u64> = s.runs.iter().map(|r| r.2.seed).collect();
    assert_eq!(seeds, [1, 2, 1, 2]);
    // The two seeds of a variant train different generators.
    let g = |i: usize| std::fs::read(RunDir::new(&s.runs[i].2.out).export_path(Stage::Apt));
    assert_ne!(g(0).unwrap(), g(1).unwrap());

    let results = evaluate_study(&s, &stop, |_, _, _| {}).unwrap();
    assert_eq!(results.variants.len(), 2);
    for v in &results.variants {
        assert_eq!(v.seeds.len(), 2);
        let f = &v.summary["frechet"];
        assert_eq!(f.seeds, 2);
        assert!(f.mean.is_finite() && f.spread >= 0.0);
        let i = &v.seeds[0].vs_reference["frechet"];
        assert!(
            i.lo <= i.estimate + 1e-9 && i.estimate <= i.hi + 1e-9,
            "{i:?}"
        );
    }
    let md = write_results(&s, &results).unwrap();
    let text = std::fs::read_to_string(md).unwrap();
    assert!(text.contains("| translate | 2 |") && text.contains("| paper | 1 |"));
    assert!(dir.path().join("study/results.json").is_file());

    // Again: everything is finished, nothing trains (the exports keep their bytes and times).
    let before = std::fs::metadata(shared.export_path(Stage::Pretrain))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(run_study(&s, &mut (), stop).unwrap(), RunEnd::Completed);
    let after = std::fs::metadata(shared.export_path(Stage::Pretrain))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // A variant whose recipe changed since its runs finished: not silently reused.
    let changed = study(
        dir.path(),
        &VARIANTS.replace("apt.translate=3", "apt.translate=2"),
    );
    let err = run_study(&changed, &mut (), Arc::new(AtomicBool::new(false)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apt.translate") && err.contains("translate/seed-1"),
        "{err}"
    );
}

#[test]
fn a_variant_may_only_change_apt_keys() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    std::fs::write(&base, base_config()).unwrap();
    let config = |variant_set: &str| -> StudyConfig {
        toml::from_str(&format!(
            "base = \"base.toml\"\nout = \"x\"\nseeds = [0]\n[[variants]]\nname = \"v\"\n\
             set = [{variant_set}]\n"
        ))
        .unwrap()
    };
    let err = Study::build(config("\"model.config.depth=3\""), &base)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.config.depth") && err.contains("only [apt]"),
        "{err}"
    );
    let err = Study::build(config("\"apt.d_steps=0\""), &base)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apt.d_steps") && err.contains("variant `v`"),
        "{err}"
    );
    assert!(Study::build(config("\"apt.translate=3\""), &base).is_ok());
    let mut dup = config("");
    dup.seeds = vec![1, 1];
    assert!(Study::build(dup, &base)
        .unwrap_err()
        .to_string()
        .contains("seeds"));
    let mut bad = config("");
    bad.variants[0].name = "a/b".into();
    assert!(Study::build(bad, &base)
        .unwrap_err()
        .to_string()
        .contains("variants.name"));
}

#[test]
fn the_shipped_studies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/studies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Study::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(s.runs.len(), s.config.variants.len() * s.config.seeds.len());
            n += 1;
        }
    }
    assert!(n >= 1, "no study in {}", dir.display());
}
