//! A study on a tiny model: the shared init is trained once, every variant × seed runs its
//! adversarial stage from it, the results table has every seed with intervals, running it
//! again trains nothing, and a variant that changes anything but [apt] is refused.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_flow::RunEnd;
use apt_pipeline::study::results::markdown;
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
    for r in &s.runs {
        let run = RunDir::new(&r.config.out);
        assert!(run.is_finished(Stage::Apt), "{} {}", r.variant, r.seed);
        // The init is the shared one, linked, not retrained.
        let link = std::fs::symlink_metadata(run.stage(Stage::Pretrain)).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(r.config.seed, r.seed);
    }
    let seeds: Vec<u64> = s.runs.iter().map(|r| r.config.seed).collect();
    assert_eq!(seeds, [1, 2, 1, 2]);
    // The two seeds of a variant train different generators.
    let g = |i: usize| std::fs::read(RunDir::new(&s.runs[i].config.out).export_path(Stage::Apt));
    assert_ne!(g(0).unwrap(), g(1).unwrap());

    let results = evaluate_study(&s, &stop, |_, _, _| {}).unwrap();
    assert_eq!(results.variants.len(), 2);
    for v in &results.variants {
        assert_eq!(v.seeds.len(), 2);
        let f = &v.summary["frechet"];
        assert_eq!(f.seeds, 2);
        assert!(f.mean.is_finite() && f.spread >= 0.0);
        for i in [
            &v.seeds[0].vs_reference["frechet"],
            &v.seeds[0].vs_two_step["frechet"],
        ] {
            assert!(i.lo <= i.hi && i.estimate.is_finite(), "{i:?}");
        }
        assert_eq!(v.summary_vs_two_step["shape_accuracy"].seeds, 2);
        assert_eq!((v.updates, v.batch, v.clips), (2, 2, 4));
    }
    // The baselines: the shared student in one and two steps, and the teacher.
    let names: Vec<&str> = results.baselines.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "distilled one-step",
            "distilled two-step",
            "teacher (25-step CFG 2)"
        ]
    );
    let two = results.baseline("distilled two-step").unwrap();
    assert_eq!(two.vs_two_step["frechet"].estimate, 0.0);
    assert_eq!(
        two.vs_reference["frechet"].estimate,
        two.report.frechet - results.reference.frechet
    );
    let md = write_results(&s, &results).unwrap();
    let text = std::fs::read_to_string(md).unwrap();
    assert!(
        text.contains("| translate | 4 | 2 |")
            && text.contains("| paper | 2 × 2 | 2 |")
            && text.contains("| paper | 1 | ")
    );
    assert!(text.contains("Δ vs distilled two-step"));
    assert!(dir.path().join("study/results.json").is_file());

    // Again: everything is finished, nothing trains (the exports keep their bytes and times).
    let before = std::fs::metadata(shared.export_path(Stage::Pretrain))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        run_study(&s, &mut (), stop.clone()).unwrap(),
        RunEnd::Completed
    );
    let after = std::fs::metadata(shared.export_path(Stage::Pretrain))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // Scores are kept between evaluations: a second one reads them back (here a doctored
    // timing shows it) as long as the weights, prompts and sampler are unchanged.
    let cache = dir.path().join("study/scores/distilled-one-step.json");
    let mut cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    cached["seconds_per_clip"] = serde_json::json!(123.0);
    std::fs::write(&cache, serde_json::to_vec(&cached).unwrap()).unwrap();
    let again = evaluate_study(&s, &stop, |_, _, _| {}).unwrap();
    assert_eq!(again.reference.seconds_per_clip, 123.0);
    assert_eq!(
        again.variants[1].seeds[0].report,
        results.variants[1].seeds[0].report
    );
    cached["key"]["weights_fnv64"] = serde_json::json!("0");
    std::fs::write(&cache, serde_json::to_vec(&cached).unwrap()).unwrap();
    let rescored = evaluate_study(&s, &stop, |_, _, _| {}).unwrap();
    assert_ne!(rescored.reference.seconds_per_clip, 123.0);
    assert_eq!(rescored.reference.frechet, results.reference.frechet);

    // A variant not trained yet is left out of the evaluation, and listed.
    let more = study(
        dir.path(),
        &format!(
            "[[inits]]\nname = \"untrained\"\nset = [\"distill.train.steps=5\"]\n{VARIANTS}\n\
             [[variants]]\nname = \"later\"\nset = [\"apt.translate=1\"]\n"
        ),
    );
    let partial = evaluate_study(&more, &stop, |_, _, _| {}).unwrap();
    assert_eq!(
        partial.pending,
        ["init untrained", "later seed 1", "later seed 2"]
    );
    assert!(partial.variants[2].seeds.is_empty() && partial.variants[0].seeds.len() == 2);
    assert!(markdown(&partial)
        .contains("**Not finished yet** (left out): init untrained, later seed 1"));

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
            let runs: usize = s
                .config
                .variants
                .iter()
                .map(|v| v.seeds(&s.config).len())
                .sum();
            assert_eq!(s.runs.len(), runs);
            n += 1;
        }
    }
    assert!(n >= 1, "no study in {}", dir.display());
}

/// A further init (a longer distillation and a consistency-distilled student), variants with
/// their own seeds that start from them, and a `curve` over the clips seen.
const WITH_INITS: &str = r#"
[[inits]]
name = "longer"
about = "three distillation updates instead of two"
set = ["distill.train.steps=3"]

[[inits]]
name = "consistency"
set = [
  "apt.generator_init=\"consistency\"",
  "consistency={ points = 4, shift = 1.0, cfg_scale = 2.0, train = { steps = 2, batch_size = 2, optimizer = { kind = \"adamw\", lr = 1e-4 } } }",
]

[[variants]]
name = "short"
seeds = [1]
curve = "updates"

[[variants]]
name = "long"
set = ["apt.train.steps=4", "apt.train.checkpoint_every=4"]
seeds = [1]
curve = "updates"

[[variants]]
name = "from-longer"
init = "longer"
seeds = [2]

[[variants]]
name = "from-consistency"
init = "consistency"
seeds = [2]
"#;

#[test]
fn variants_start_from_further_inits_with_their_own_seeds_and_draw_a_scaling_curve() {
    let dir = tempfile::tempdir().unwrap();
    let s = study(dir.path(), WITH_INITS);
    let labels: Vec<(String, u64)> = s.runs.iter().map(|r| (r.variant.clone(), r.seed)).collect();
    assert_eq!(labels.len(), 4, "{labels:?}");
    assert_eq!((s.runs[0].seed, s.runs[2].seed), (1, 2));
    assert_eq!((s.runs[2].init, s.runs[3].init), (Some(0), Some(1)));
    assert_eq!(s.runs[1].updates_and_batch(), (4, 2));
    let stop = Arc::new(AtomicBool::new(false));
    assert_eq!(
        run_study(&s, &mut (), stop.clone()).unwrap(),
        RunEnd::Completed
    );

    // Each init trained its student from the shared teacher (linked, not retrained).
    let shared = RunDir::new(dir.path().join("study/shared"));
    let longer = RunDir::new(dir.path().join("study/inits/longer"));
    let consistency = RunDir::new(dir.path().join("study/inits/consistency"));
    assert!(longer.is_finished(Stage::Distill) && consistency.is_finished(Stage::Consistency));
    for init in [&longer, &consistency] {
        let pretrain = std::fs::read_link(init.stage(Stage::Pretrain)).unwrap();
        assert_eq!(
            pretrain,
            std::path::absolute(shared.stage(Stage::Pretrain)).unwrap()
        );
    }
    let read = |d: &RunDir, stage| std::fs::read(d.export_path(stage)).unwrap();
    assert_ne!(read(&longer, Stage::Distill), read(&shared, Stage::Distill));
    // A variant starts from its init's student.
    let from = RunDir::new(&s.runs[2].config.out);
    let student = std::fs::read_link(from.stage(Stage::Distill)).unwrap();
    assert_eq!(
        student,
        std::path::absolute(longer.stage(Stage::Distill)).unwrap()
    );
    let from = RunDir::new(&s.runs[3].config.out);
    assert!(from.is_finished(Stage::Apt) && from.stage(Stage::Consistency).exists());

    let results = evaluate_study(&s, &stop, |_, _, _| {}).unwrap();
    let names: Vec<&str> = results.baselines.iter().map(|b| b.name.as_str()).collect();
    assert!(
        names.contains(&"init longer: distilled two-step"),
        "{names:?}"
    );
    assert!(
        names.contains(&"init consistency: consistency-distilled one-step"),
        "{names:?}"
    );
    assert_eq!(results.variants[1].clips, 8);
    assert_eq!(results.variants[2].init.as_deref(), Some("longer"));
    write_results(&s, &results).unwrap();
    let plot = dir.path().join("study/plots/scaling.png");
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
    // The samples: real, teacher, distilled one- and two-step, one row per variant; 4 prompts.
    let grid = image_size(&dir.path().join("study/plots/samples.png"));
    let (t, h, w) = (2, 16, 16);
    let row_width = 4 * (t * w + t - 1) + 3 * 3;
    assert_eq!(grid, (3 * row_width, 3 * (8 * h + 7 * 3)), "{grid:?}");

    // An init may not change the teacher; a variant may not name an unknown init.
    let bad = WITH_INITS.replace("distill.train.steps=3", "pretrain.train.steps=4");
    let base = dir.path().join("base.toml");
    let file = dir.path().join("bad.toml");
    let text = |v: &str| format!("base = \"base.toml\"\nout = \"x\"\nseeds = [1]\n{v}");
    std::fs::write(&file, text(&bad)).unwrap();
    let err = Study::load(&file).unwrap_err().to_string();
    assert!(
        err.contains("pretrain.train.steps") && err.contains("init `longer`"),
        "{err}"
    );
    std::fs::write(
        &file,
        text(&WITH_INITS.replace("init = \"longer\"", "init = \"nope\"")),
    )
    .unwrap();
    let err = Study::load(&file).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("[[inits]]"), "{err}");
    assert!(base.is_file());
}

/// Width and height of a PNG, from its header.
fn image_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}
