//! End to end on a tiny model: every flow stage runs, checkpoints, resumes exactly, and
//! reports; config errors name the key.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_pipeline::stages::{Outcome, Progress, StageReport};
use apt_pipeline::{run_stage, RunConfig, RunDir, Stage, StageRun};
use common::{tiny_run, StopAt};

fn config(out: &Path, cache: &Path) -> RunConfig {
    let text = format!(
        "{}{}",
        tiny_run(&out.display().to_string(), 3, Some(cache)),
        r#"
[pretrain]
val_clips = 4
[pretrain.train]
steps = 6
batch_size = 2
checkpoint_every = 2
ema_decay = 0.9
optimizer = { kind = "adamw", lr = 1e-3 }
[pretrain.eval]
prompts = 4
batch = 4
sampler = { steps = 3, method = "euler", shift = 1.0, cfg_scale = 2.0 }

[distill]
pairs = 6
shard_size = 4
teacher = { steps = 2, method = "euler", shift = 1.0, cfg_scale = 2.0 }
eval = { prompts = 2, batch = 2, sampler = { steps = 1, method = "euler", shift = 1.0, cfg_scale = 1.0 } }
[distill.train]
steps = 4
batch_size = 2
optimizer = { kind = "rmsprop", lr = 1e-4, alpha = 0.9 }

[consistency]
points = 4
cfg_scale = 2.0
target = "ema"
[consistency.train]
steps = 3
batch_size = 2
ema_decay = 0.5
optimizer = { kind = "adamw", lr = 1e-4 }
"#
    );
    let path = out.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::from_file(&path).unwrap()
}

fn stage(run: &RunConfig, stage: Stage, resume: bool) -> Outcome {
    stage_with(
        run,
        stage,
        resume,
        &mut (),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

fn stage_with(
    run: &RunConfig,
    stage: Stage,
    resume: bool,
    progress: &mut dyn Progress,
    stop: Arc<AtomicBool>,
) -> apt_pipeline::Result<Outcome> {
    let dir = RunDir::new(&run.out);
    let mut ctx = StageRun {
        world: std::rc::Rc::new(apt_flow::train::SingleProcess),
        config: run,
        dir: &dir,
        resume,
        stop,
        progress,
    };
    run_stage(&mut ctx, stage)
}

fn weights(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn pretraining_resumed_after_a_stop_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let straight = config(&dir.path().join("straight"), &cache);
    let Outcome::Completed(report) = stage(&straight, Stage::Pretrain, false) else {
        panic!("stopped")
    };
    let StageReport::Pretrain(report) = *report else {
        panic!("not a pretraining report")
    };
    assert!(
        report.val_loss_start.unwrap() > 0.0 && report.alignment.as_ref().unwrap().prompts == 4
    );

    let interrupted = config(&dir.path().join("interrupted"), &cache);
    let stop = Arc::new(AtomicBool::new(false));
    let mut at_3 = StopAt {
        at: 3,
        stop: stop.clone(),
    };
    let outcome = stage_with(&interrupted, Stage::Pretrain, false, &mut at_3, stop).unwrap();
    assert!(matches!(outcome, Outcome::Stopped));
    // Starting over without resuming refuses to clobber the checkpoints.
    let err = stage_with(
        &interrupted,
        Stage::Pretrain,
        false,
        &mut (),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
    let Outcome::Completed(resumed) = stage(&interrupted, Stage::Pretrain, true) else {
        panic!("stopped")
    };
    let StageReport::Pretrain(resumed) = *resumed else {
        panic!("not a pretraining report")
    };
    assert_eq!(resumed.val_loss_start, report.val_loss_start);
    let (a, b) = (
        weights(&report.teacher),
        weights(&dir.path().join("interrupted/pretrain/teacher.safetensors")),
    );
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka} differs after resume");
    }
}

#[test]
fn distillation_stages_run_after_pretraining() {
    let dir = tempfile::tempdir().unwrap();
    let run = config(&dir.path().join("run"), &dir.path().join("cache"));
    stage(&run, Stage::Pretrain, false);
    let Outcome::Completed(report) = stage(&run, Stage::Distill, false) else {
        panic!("stopped")
    };
    let StageReport::Distill(report) = *report else {
        panic!("not a distillation report")
    };
    assert!(
        report.final_loss.is_finite() && report.one_step.is_some() && report.two_step.is_some()
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("run/distill/pairs"))
            .unwrap()
            .count(),
        2,
        "6 pairs in shards of 4"
    );
    // Pair generation is deterministic: regenerating a deleted shard gives the same bytes.
    let shard = dir.path().join("run/distill/pairs/shard-00001.safetensors");
    let before = std::fs::read(&shard).unwrap();
    std::fs::remove_file(&shard).unwrap();
    std::fs::remove_dir_all(dir.path().join("run/distill/checkpoints")).unwrap();
    stage(&run, Stage::Distill, false);
    assert_eq!(std::fs::read(&shard).unwrap(), before);

    let Outcome::Completed(report) = stage(&run, Stage::Consistency, false) else {
        panic!("stopped")
    };
    let StageReport::Distill(report) = *report else {
        panic!("not a distillation report")
    };
    assert!(report.student.is_file());
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "out = \"x\"\nmodel = { preset = \"small\" }\ndata = { kind = \"shapes\", shapes = { frames = 8, height = 32, width = 32 } }\nbogus = 1\n").unwrap();
    let err = RunConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("bogus"), "{err}");
    // A model that does not fit the data loads (so `--dry-run` can size it) but cannot run:
    // every stage asks `model()`, which says why.
    std::fs::write(&path, "out = \"x\"\nmodel = { preset = \"tiny\" }\ndata = { kind = \"shapes\", shapes = { frames = 8, height = 32, width = 32 } }\n").unwrap();
    let run = RunConfig::from_file(&path).unwrap();
    let err = run.model().unwrap_err().to_string();
    assert!(err.contains("model") && err.contains("channels"), "{err}");
}

#[test]
fn a_sample_predicting_model_trains_exports_and_loads_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = config(&dir.path().join("run"), &dir.path().join("cache"));
    run.model.prediction = Some(apt_mmdit::Prediction::Sample);
    assert_eq!(
        run.model().unwrap().prediction(),
        apt_mmdit::Prediction::Sample
    );
    stage(&run, Stage::Pretrain, false);
    stage(&run, Stage::Distill, false);
    let runs = RunDir::new(&run.out);
    for s in [Stage::Pretrain, Stage::Distill] {
        let loaded = runs.load_model(s, tch::Device::Cpu).unwrap().unwrap();
        assert_eq!(
            loaded.config.prediction(),
            apt_mmdit::Prediction::Sample,
            "{s:?}'s model.toml keeps the parameterisation"
        );
        assert_eq!(
            loaded.model.config().prediction(),
            apt_mmdit::Prediction::Sample
        );
    }
    // A typo in the value names the key.
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "out = \"x\"\nmodel = { preset = \"small\", prediction = \"x0\" }\ndata = { kind = \"shapes\", shapes = { frames = 4, height = 32, width = 32 } }\n").unwrap();
    let err = RunConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("prediction") || err.contains("x0"), "{err}");
}
