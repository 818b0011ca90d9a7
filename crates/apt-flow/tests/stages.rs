//! End to end on a tiny model: every stage runs, checkpoints, resumes exactly, and reports.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use apt_flow::distill::{run_consistency, run_distill};
use apt_flow::pretrain::run_pretrain;
use apt_flow::trainer::Finish;
use apt_flow::RunConfig;

fn config(out: &Path, cache: &Path) -> RunConfig {
    let text = format!(
        r#"
out = "{out}"
seed = 3
threads = 1

[model.config]
in_channels = 3
out_channels = 3
patch_size = [1, 4, 4]
depth = 2
num_heads = 2
head_dim = 16
context_dim = 384
pooled_dim = 384
qk_norm = true
[model.config.positions]
kind = "rope3d"

[data]
kind = "shapes"
seed = 1
[data.shapes]
frames = 2
height = 16
width = 16
speeds = [1.0]

[text]
tokens = 12
cache = "{cache}"

[pretrain]
val_clips = 4
[pretrain.train]
steps = 6
batch_size = 2
checkpoint_every = 2
ema_decay = 0.9
optimizer = {{ kind = "adamw", lr = 1e-3 }}
[pretrain.eval]
prompts = 4
batch = 4
sampler = {{ steps = 3, method = "euler", shift = 1.0, cfg_scale = 2.0 }}

[distill]
pairs = 6
shard_size = 4
teacher = {{ steps = 2, method = "euler", shift = 1.0, cfg_scale = 2.0 }}
eval = {{ prompts = 2, batch = 2, sampler = {{ steps = 1, method = "euler", shift = 1.0, cfg_scale = 1.0 }} }}
[distill.train]
steps = 4
batch_size = 2
optimizer = {{ kind = "rmsprop", lr = 1e-4, alpha = 0.9 }}

[consistency]
points = 4
cfg_scale = 2.0
target = "ema"
[consistency.train]
steps = 3
batch_size = 2
ema_decay = 0.5
optimizer = {{ kind = "adamw", lr = 1e-4 }}
"#,
        out = out.display(),
        cache = cache.display()
    );
    let path = out.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::from_file(&path).unwrap()
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
    let (finish, report) =
        run_pretrain(&straight, false, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    assert_eq!(finish, Finish::Completed);
    let report = report.unwrap();
    assert!(
        report.val_loss_start.unwrap() > 0.0 && report.alignment.as_ref().unwrap().prompts == 4
    );

    let interrupted = config(&dir.path().join("interrupted"), &cache);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (finish, _) = run_pretrain(&interrupted, false, stop, move |m| {
        if m.step == 3 {
            flag.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(finish, Finish::Stopped);
    // Starting over without --resume refuses to clobber the checkpoints.
    let err = run_pretrain(
        &interrupted,
        false,
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
    let (finish, resumed) =
        run_pretrain(&interrupted, true, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    assert_eq!(finish, Finish::Completed);
    assert_eq!(resumed.unwrap().val_loss_start, report.val_loss_start);
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
    run_pretrain(&run, false, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    let (finish, report) = run_distill(
        &run,
        false,
        Arc::new(AtomicBool::new(false)),
        |_, _| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(finish, Finish::Completed);
    let report = report.unwrap();
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
    run_distill(
        &run,
        false,
        Arc::new(AtomicBool::new(false)),
        |_, _| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(std::fs::read(&shard).unwrap(), before);

    let (finish, report) =
        run_consistency(&run, false, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    assert_eq!(finish, Finish::Completed);
    assert!(report.unwrap().student.is_file());
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
