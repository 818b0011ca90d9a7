//! `[pretrain] from`: a run starts from a teacher exported earlier (the shipped demo teacher,
//! or another run's `pretrain/`) instead of training one — checked, copied, evaluated, and
//! refused with a clear error when it is not a teacher for this run's model.

mod common;

use std::path::Path;

use common::*;

/// Every tensor of two safetensors files, by name.
fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_run_imports_an_exported_teacher_instead_of_training_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let o = apt(&smoke_args(
        &a,
        &cache,
        &["--stage", "pretrain", "--set", "pretrain.train.steps=2"],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let from = format!("pretrain.from={:?}", a.join("pretrain").to_string_lossy());

    // The plan says so, and no pre-training memory is planned.
    let o = apt(&smoke_args(&b, &cache, &["--dry-run", "--set", &from]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan = text(&o.stdout);
    assert!(plan.contains("teacher      imported from"), "{plan}");
    assert!(
        !plan.lines().any(|l| l.starts_with("pretrain ")),
        "an imported teacher is not trained: {plan}"
    );

    let o = apt(&smoke_args(
        &b,
        &cache,
        &["--stage", "pretrain", "--set", &from],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The same weights, a fresh integrity record, no training state.
    let (ta, tb) = (
        tensors(&a.join("pretrain/teacher.safetensors")),
        tensors(&b.join("pretrain/teacher.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(xa.equal(xb), "{na} differs after the import");
    }
    assert!(!b.join("pretrain/checkpoints").exists());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("pretrain/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["steps"], 2, "{report}");
    assert!(
        report["imported_from"]
            .as_str()
            .unwrap()
            .ends_with("teacher.safetensors"),
        "{report}"
    );
    assert!(report["val_loss_end"].as_f64().unwrap().is_finite());
    // The next stage runs on it.
    let o = apt(&smoke_args(
        &b,
        &cache,
        &[
            "--stage",
            "distill",
            "--set",
            &from,
            "--set",
            "distill.train.steps=2",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Not a teacher for this run: a different model, a student's export, no such directory.
    let c = dir.path().join("c");
    let o = apt(&smoke_args(
        &c,
        &cache,
        &[
            "--stage",
            "pretrain",
            "--set",
            &from,
            "--set",
            "model.config.depth=3",
        ],
    ));
    assert_clear_error(&o, &["pretrain.from", "depth = 3", "depth = 2"]);
    let student = format!(
        "pretrain.from={:?}",
        b.join("distill/student.safetensors").to_string_lossy()
    );
    let o = apt(&smoke_args(
        &c,
        &cache,
        &["--stage", "pretrain", "--set", &student],
    ));
    assert_clear_error(&o, &["pretrain.from", "`distill` stage"]);
    let missing = format!(
        "pretrain.from={:?}",
        dir.path().join("nowhere").to_string_lossy()
    );
    let o = apt(&smoke_args(
        &c,
        &cache,
        &["--stage", "pretrain", "--set", &missing],
    ));
    assert_clear_error(&o, &["pretrain.from", "nowhere", "teacher.safetensors"]);
}

/// The demo imports the shipped teacher: it must stay loadable (integrity record, finite
/// weights) and match the demo's model config, or `cargo xtask train` breaks.
#[test]
fn the_demo_teacher_matches_the_demo_config() {
    let run = apt_pipeline::RunConfig::from_file(Path::new(&config("demo.toml"))).unwrap();
    let from = run
        .pretrain
        .as_ref()
        .and_then(|p| p.import_from())
        .expect("configs/demo.toml imports a teacher");
    let teacher = repo().join(from).join("teacher.safetensors");
    let loaded = apt_pipeline::run_dir::load_exported(&teacher, tch::Device::Cpu).unwrap();
    assert_eq!(loaded.config, run.model().unwrap());
    let record = apt_pipeline::run_dir::export_record(&teacher)
        .unwrap()
        .expect("the shipped teacher has its export record");
    assert_eq!(record.stage, "pretrain");
}
