//! The adversarial stages on a tiny model: the stage runs end to end with previews and its
//! evaluation, a stopped run resumes to the same generator, and an image stage hands its
//! generator to the video stage while D restarts from the teacher; every discriminator option
//! runs through the stage.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_gan::discriminator::{DiscriminatorTimes, NamedTimes};
use apt_gan::AdversarialLoss;
use apt_pipeline::stages::apt::{StagePlan, StartingModels};
use apt_pipeline::stages::{Outcome, Progress, StageReport};
use apt_pipeline::{run_stage, run_stages, RunConfig, RunDir, Stage, StageRun};
use common::{tiny_run, StopAt, QUICK_TEACHER_AND_STUDENT};
use tch::Tensor;

fn config_with(out: &Path, cache: &Path, extra: &str) -> RunConfig {
    let text = format!(
        "{}{QUICK_TEACHER_AND_STUDENT}{}{extra}",
        tiny_run(&out.display().to_string(), 5, Some(cache)),
        r#"
[apt]
eval = { prompts = 2, batch = 2, sampler = { steps = 1, method = "euler", shift = 1.0, cfg_scale = 1.0 } }
[apt.train]
steps = 4
batch_size = 2
grad_accum = 2
optimizer = { kind = "rmsprop", lr = 1e-4, alpha = 0.9 }
optimizer_d = { kind = "rmsprop", lr = 1e-4, alpha = 0.9 }
ema_decay = 0.995
checkpoint_every = 2
preview_every = 2
"#
    );
    let path = out.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::from_file(&path).unwrap()
}

fn run(
    config: &RunConfig,
    stages: &[Stage],
    resume: bool,
    progress: &mut dyn Progress,
    stop: Arc<AtomicBool>,
) -> apt_flow::RunEnd {
    let dir = RunDir::new(&config.out);
    let mut ctx = StageRun {
        world: std::rc::Rc::new(apt_flow::train::SingleProcess),
        config,
        dir: &dir,
        resume,
        stop,
        progress,
    };
    run_stages(&mut ctx, stages, true).unwrap()
}

fn prepared(dir: &Path, name: &str, extra: &str) -> RunConfig {
    let run_cfg = config_with(&dir.join(name), &dir.join("cache"), extra);
    let no = || Arc::new(AtomicBool::new(false));
    run(&run_cfg, &[Stage::Pretrain], false, &mut (), no());
    run(&run_cfg, &[Stage::Distill], false, &mut (), no());
    run_cfg
}

fn read(p: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(p).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn the_apt_stage_runs_and_resumes_to_the_same_generator() {
    let dir = tempfile::tempdir().unwrap();
    let straight = prepared(dir.path(), "a", "");
    let run_dir = RunDir::new(&straight.out);
    let mut ctx = StageRun {
        world: std::rc::Rc::new(apt_flow::train::SingleProcess),
        config: &straight,
        dir: &run_dir,
        resume: false,
        stop: Arc::new(AtomicBool::new(false)),
        progress: &mut (),
    };
    let Outcome::Completed(report) = run_stage(&mut ctx, Stage::Apt).unwrap() else {
        panic!("stopped")
    };
    let StageReport::Apt(report) = *report else {
        panic!("not an APT report")
    };
    assert!(report.initial.is_some() && report.one_step.is_some() && report.two_step.is_some());
    assert!(dir.path().join("a/apt/previews/step-000002.png").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a/apt/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );

    let interrupted = prepared(dir.path(), "b", "");
    let stop = Arc::new(AtomicBool::new(false));
    let mut at_1 = StopAt {
        at: 1,
        stop: stop.clone(),
    };
    let finish = run(&interrupted, &[Stage::Apt], false, &mut at_1, stop);
    assert_eq!(finish, apt_flow::RunEnd::Stopped);
    let finish = run(
        &interrupted,
        &[Stage::Apt],
        true,
        &mut (),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(finish, apt_flow::RunEnd::Completed);
    let (a, b) = (
        read(&report.generator),
        read(&dir.path().join("b/apt/generator.safetensors")),
    );
    for ((ka, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{ka} differs after resume");
    }
}

#[test]
fn an_image_stage_hands_its_generator_to_the_video_stage() {
    let dir = tempfile::tempdir().unwrap();
    let run_cfg = prepared(dir.path(), "run", "[apt.image]\nsteps = 2\nframes = 1\n");
    let image = StagePlan::new(&run_cfg, Stage::AptImage).unwrap();
    assert_eq!(
        (
            image.train.steps,
            image.method.sigma_r1,
            image.discriminator.time_shift,
            image.generator_init
        ),
        (2, 0.01, 1.0, Stage::Distill)
    );
    assert_eq!(image.data.clip_shape(), [3, 1, 16, 16]);
    let video = StagePlan::new(&run_cfg, Stage::Apt).unwrap();
    assert_eq!(video.generator_init, Stage::AptImage);
    // The config sets no σ and no D time shift: each stage gets the paper's value for its kind.
    assert_eq!(
        (video.method.sigma_r1, video.discriminator.time_shift),
        (0.1, 12.0)
    );
    let finish = run(
        &run_cfg,
        &[Stage::AptImage, Stage::Apt],
        false,
        &mut (),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(finish, apt_flow::RunEnd::Completed);
    for stage in ["apt-image", "apt"] {
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("run/{stage}/report.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["steps"], if stage == "apt" { 4 } else { 2 });
    }
    // The video stage starts from the image stage's exported generator, and D from the teacher.
    let start = StartingModels::load(&run_cfg, &RunDir::new(&run_cfg.out), &video).unwrap();
    let stored = |p: &str| -> std::collections::HashMap<String, Tensor> {
        Tensor::read_safetensors(dir.path().join(p))
            .unwrap()
            .into_iter()
            .collect()
    };
    let image_g = stored("run/apt-image/generator.safetensors");
    for (k, v) in start.vs_g.variables() {
        assert!(v.equal(&image_g[&k]), "{k}");
    }
    let teacher = stored("run/pretrain/teacher.safetensors");
    let backbone: Vec<_> = start
        .vs_d
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("backbone."))
        .collect();
    assert!(!backbone.is_empty());
    for (k, v) in backbone {
        assert!(v.equal(&teacher[&k["backbone.".len()..]]), "{k}");
    }
}

#[test]
fn the_discriminator_options_run_through_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let mut run_cfg = prepared(dir.path(), "opts", "");
    let apt = run_cfg.apt.as_mut().unwrap();
    apt.method.loss = AdversarialLoss::Relativistic;
    apt.method.lambda_r2 = 10.0;
    apt.method.d_steps = 2;
    apt.method.translate = 3;
    apt.method.noised_inputs = true;
    apt.discriminator.times = Some(DiscriminatorTimes::Named(NamedTimes::Teacher));
    run_cfg.validate().unwrap();
    let plan = StagePlan::new(&run_cfg, Stage::Apt).unwrap();
    let teacher_times = run_cfg.pretrain.as_ref().unwrap().method.timesteps;
    assert_eq!(plan.discriminator.time_sampler().unwrap(), teacher_times);
    assert_eq!(
        plan.method.sigma_r2(),
        plan.method.sigma_r1,
        "σ_R2 defaults to σ"
    );
    assert_eq!(plan.method.d_steps, 2);
    let finish = run(
        &run_cfg,
        &[Stage::Apt],
        false,
        &mut (),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(finish, apt_flow::RunEnd::Completed);
    let metrics = std::fs::read_to_string(dir.path().join("opts/apt/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for key in ["ar1", "ar2", "d_loss", "g_loss"] {
        assert!(last[key].is_f64(), "{key}: {last}");
    }
    // "teacher" needs a [pretrain] section to read the teacher's sampler from.
    run_cfg.pretrain = None;
    let err = run_cfg.validate().unwrap_err().to_string();
    assert!(err.contains("apt.discriminator.times"), "{err}");
}

#[test]
fn frozen_generator_parameters_stay_as_distilled_and_the_rest_trains() {
    let dir = tempfile::tempdir().unwrap();
    let mut run_cfg = prepared(dir.path(), "frozen", "");
    let apt = run_cfg.apt.as_mut().unwrap();
    apt.generator_frozen = vec!["norm_out.linear".into(), "proj_out.bias".into()];
    apt.train.ema_decay = None;
    run_cfg.validate().unwrap();
    let finish = run(
        &run_cfg,
        &[Stage::Apt],
        false,
        &mut (),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(finish, apt_flow::RunEnd::Completed);
    let before = read(&dir.path().join("frozen/distill/student.safetensors"));
    let after = read(&dir.path().join("frozen/apt/generator.safetensors"));
    let (mut frozen, mut moved) = (0, 0);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if name.starts_with("norm_out.linear") || name == "proj_out.bias" {
            assert!(a.equal(b), "{name} was trained");
            frozen += 1;
        } else if !a.equal(b) {
            moved += 1;
        }
    }
    assert_eq!(frozen, 3);
    assert!(moved > before.len() / 2, "only {moved} tensors trained");
    // A pattern that names nothing is an error of the config itself, naming the key: it is
    // refused before any stage trains.
    let apt = run_cfg.apt.as_mut().unwrap();
    apt.generator_frozen = vec!["norm_out.linaer".into()];
    let err = run_cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("apt.generator_frozen") && err.contains("linaer"),
        "{err}"
    );
}
