//! The adversarial trainer on a tiny model: D steps touch only D, G steps only G, the stage
//! runs end to end, and a stopped run resumes to the same weights.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use apt_flow::distill::run_distill;
use apt_flow::pretrain::run_pretrain;
use apt_flow::trainer::Finish;
use apt_flow::RunConfig;
use apt_gan::adversarial::{run_apt, AptConfig, AptMetrics, AptTrainer, StagePlan};
use tch::Tensor;

fn config(out: &Path, cache: &Path) -> RunConfig {
    config_with(out, cache, "")
}

fn config_with(out: &Path, cache: &Path, extra: &str) -> RunConfig {
    let text = format!(
        r#"
out = "{out}"
seed = 5
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
[data.shapes]
frames = 2
height = 16
width = 16

[text]
tokens = 12
cache = "{cache}"

[pretrain]
val_clips = 0
[pretrain.train]
steps = 3
batch_size = 2
optimizer = {{ kind = "adamw", lr = 1e-3 }}

[distill]
pairs = 4
teacher = {{ steps = 2, method = "euler", shift = 1.0, cfg_scale = 2.0 }}
[distill.train]
steps = 2
batch_size = 2
optimizer = {{ kind = "adamw", lr = 1e-4 }}

[apt]
steps = 4
batch_size = 2
grad_accum = 2
optimizer_g = {{ kind = "rmsprop", lr = 1e-4, alpha = 0.9 }}
optimizer_d = {{ kind = "rmsprop", lr = 1e-4, alpha = 0.9 }}
checkpoint_every = 2
preview_every = 2
eval = {{ prompts = 2, batch = 2, sampler = {{ steps = 1, method = "euler", shift = 1.0, cfg_scale = 1.0 }} }}
{extra}
"#,
        out = out.display(),
        cache = cache.display()
    );
    let path = out.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::from_file(&path).unwrap()
}

fn prepared(dir: &Path, name: &str) -> RunConfig {
    let run = config(&dir.join(name), &dir.join("cache"));
    let no = || Arc::new(AtomicBool::new(false));
    run_pretrain(&run, false, no(), |_| {}).unwrap();
    run_distill(&run, false, no(), |_, _| {}, |_| {}).unwrap();
    run
}

fn snapshot(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn changed(before: &[(String, Tensor)], vs: &tch::nn::VarStore) -> usize {
    let now = vs.variables();
    before.iter().filter(|(k, t)| !t.equal(&now[k])).count()
}

#[test]
fn d_steps_change_only_d_and_g_steps_only_g() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepared(dir.path(), "run");
    let cfg = AptConfig::from_run(&run).unwrap();
    let mut trainer = AptTrainer::new(&run, &StagePlan::all(&run, &cfg)[0]).unwrap();
    let (g0, d0) = (snapshot(&trainer.vs_g), snapshot(&trainer.vs_d));
    let mut m = AptMetrics::default();
    trainer.d_step(&mut m).unwrap();
    assert_eq!(changed(&g0, &trainer.vs_g), 0, "a D step must not touch G");
    assert!(changed(&d0, &trainer.vs_d) > 0);
    assert!(m.d_loss.is_finite() && m.ar1 >= 0.0 && m.d_real.is_finite() && m.d_fake.is_finite());
    let d1 = snapshot(&trainer.vs_d);
    trainer.g_step(&mut m).unwrap();
    assert_eq!(changed(&d1, &trainer.vs_d), 0, "a G step must not touch D");
    assert!(changed(&g0, &trainer.vs_g) > 0);
    assert!(m.g_loss.is_finite());
}

#[test]
fn the_apt_stage_runs_and_resumes_to_the_same_generator() {
    let dir = tempfile::tempdir().unwrap();
    let straight = prepared(dir.path(), "a");
    let (finish, report) =
        run_apt(&straight, false, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    assert_eq!(finish, Finish::Completed);
    let report = report.unwrap();
    assert!(report.initial.is_some() && report.one_step.is_some() && report.two_step.is_some());
    assert!(dir.path().join("a/apt/previews/step-000002.png").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a/apt/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );

    let interrupted = prepared(dir.path(), "b");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (finish, _) = run_apt(&interrupted, false, stop, move |m| {
        if m.step == 1 {
            flag.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(finish, Finish::Stopped);
    let (finish, _) =
        run_apt(&interrupted, true, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    assert_eq!(finish, Finish::Completed);
    let read = |p: &Path| {
        let mut t = Tensor::read_safetensors(p).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b) = (
        read(&report.generator),
        read(&dir.path().join("b/apt/generator.safetensors")),
    );
    for ((ka, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{ka} differs after resume");
    }
}

#[test]
fn an_image_stage_hands_its_ema_generator_to_the_video_stage() {
    let dir = tempfile::tempdir().unwrap();
    let run = config_with(
        &dir.path().join("run"),
        &dir.path().join("cache"),
        "[apt.image]\nsteps = 2\nframes = 1\n",
    );
    let no = || Arc::new(AtomicBool::new(false));
    run_pretrain(&run, false, no(), |_| {}).unwrap();
    run_distill(&run, false, no(), |_, _| {}, |_| {}).unwrap();
    let cfg = AptConfig::from_run(&run).unwrap();
    let plans = StagePlan::all(&run, &cfg);
    assert_eq!(
        plans.iter().map(|p| p.name).collect::<Vec<_>>(),
        vec!["apt-image", "apt"]
    );
    assert_eq!(
        (
            plans[0].config.steps,
            plans[0].config.sigma,
            plans[0].config.discriminator.time_shift
        ),
        (2, 0.01, 1.0)
    );
    let (finish, report) = run_apt(&run, false, no(), |_| {}).unwrap();
    assert_eq!(finish, Finish::Completed);
    assert!(report
        .unwrap()
        .generator
        .ends_with("apt/generator.safetensors"));
    let image_g = dir.path().join("run/apt-image/generator.safetensors");
    assert!(image_g.is_file());
    // The video stage starts from the image stage's EMA generator, and D from the teacher.
    let video = AptTrainer::new(&run, &plans[1]).unwrap();
    let stored: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&image_g)
        .unwrap()
        .into_iter()
        .collect();
    for (k, v) in video.vs_g.variables() {
        assert!(v.equal(&stored[&k]), "{k}");
    }
    let teacher: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("run/pretrain/teacher.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (k, v) in video
        .vs_d
        .variables()
        .iter()
        .filter(|(k, _)| k.starts_with("backbone."))
    {
        assert!(v.equal(&teacher[&k["backbone.".len()..]]), "{k}");
    }
}
