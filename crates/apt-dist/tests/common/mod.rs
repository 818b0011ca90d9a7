//! What the data-parallel tests share: the tiny model, the clips and captions each rank draws
//! from, and the two training jobs (pre-training, adversarial updates) a rank runs — the same
//! code whether one process or N ranks run it.

#![allow(dead_code)]

use std::cell::Cell;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use apt_dist::{Collective, Shard};
use apt_flow::data::{CaptionEncoder, ClipSource, Cursor};
use apt_flow::pretrain::{FlowMatchingConfig, FlowMatchingStep};
use apt_flow::testing::{tiny_model_config, FixedClips, HashedCaptions};
use apt_flow::train::{MetricLine, OptimizerConfig, Part, TrainConfig, Trainer};
use apt_flow::{Conditioning, Result, TensorRng};
use apt_gan::{
    AdversarialConfig, AdversarialLoss, AdversarialStep, AptDiscriminator, DiscriminatorConfig,
};
use apt_mmdit::{Mmdit, MmditConfig};
use tch::{nn, Device, Tensor};

pub const CPU: Device = Device::Cpu;
pub const OUT: &str = "APT_DIST_TEST_OUT";
pub const JOB: &str = "APT_DIST_TEST_JOB";
pub const GLOBAL_BATCH: usize = 4;

pub fn model_config() -> MmditConfig {
    tiny_model_config(2, "velocity")
}

/// Ten fixed clips with five captions ([`FixedClips`]); with `die_after`, the process kills
/// itself once that many clips were served.
pub struct Clips {
    inner: FixedClips,
    die_after: Option<usize>,
}

impl Clips {
    pub fn new(die_after: Option<usize>) -> Self {
        Self {
            inner: FixedClips::new(10, 5),
            die_after,
        }
    }
}

impl ClipSource for Clips {
    fn next_clips(&mut self, batch: usize) -> Result<(Tensor, Vec<String>)> {
        if self
            .die_after
            .is_some_and(|n| self.inner.cursor().position >= n)
        {
            // SIGKILL, as the OOM killer or a lost node would: no unwinding, no MPI_Finalize.
            let me = std::process::id().to_string();
            let _ = Command::new("kill").args(["-KILL", &me]).status();
            std::process::exit(7);
        }
        self.inner.next_clips(batch)
    }
    fn cursor(&self) -> Cursor {
        self.inner.cursor()
    }
    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.inner.restore(cursor)
    }
    fn clip_shape(&self) -> [i64; 4] {
        self.inner.clip_shape()
    }
}

/// [`HashedCaptions`] counting the captions it encoded: what this rank trained on.
#[derive(Default)]
pub struct Embeddings {
    pub encoded: Cell<usize>,
}

impl CaptionEncoder for Embeddings {
    fn encode(&self, captions: &[String], drop: &[bool]) -> Result<Conditioning> {
        self.encoded.set(self.encoded.get() + captions.len());
        HashedCaptions.encode(captions, drop)
    }
}

/// Pre-trains for `steps` updates (resuming from `dir` when it holds a checkpoint) with weights
/// initialised from `init_seed`; returns the weights and the EMA's, by name, and how many
/// clips this rank trained on.
pub fn pretrain(
    world: Rc<dyn Collective>,
    init_seed: i64,
    dir: &Path,
    steps: u64,
) -> (Vec<(String, Tensor)>, usize) {
    let (weights, clips, _) =
        pretrain_with(world, init_seed, dir, steps, 2e-3, None, false).unwrap();
    (weights, clips)
}

/// Named weights, clips this rank trained on, optimizer-state elements this rank holds.
type Trained = (Vec<(String, Tensor)>, usize, i64);

/// [`pretrain`] at learning rate `lr`, ending the process after `die_after` clips, with the
/// optimizer state sharded (ZeRO-1) when `zero1`; also returns how many optimizer-state
/// elements this rank holds at the end. The loop's error is returned.
pub fn pretrain_with(
    world: Rc<dyn Collective>,
    init_seed: i64,
    dir: &Path,
    steps: u64,
    lr: f64,
    die_after: Option<usize>,
    zero1: bool,
) -> Result<Trained> {
    tch::set_num_threads(1);
    tch::manual_seed(init_seed);
    let vs = nn::VarStore::new(CPU);
    let model = Mmdit::new(vs.root(), &model_config()).unwrap();
    let adamw = OptimizerConfig::Adamw {
        lr,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut config = TrainConfig::new(steps, GLOBAL_BATCH, adamw);
    config.clip_grad = Some(1.0);
    config.ema_decay = Some(0.9);
    config.shard_optimizer = zero1;
    let part = Part::new("model", vs, adamw, config.ema_decay).unwrap();
    let mut trainer = Trainer::new("pretrain", dir, &config, vec![part], TensorRng::new(3, 0))
        .unwrap()
        .with_collective(world.clone());
    let mut data = Clips::new(die_after);
    let text = Embeddings::default();
    let mut step = FlowMatchingStep {
        model: &model,
        data: &mut data,
        text: &text,
        batch: GLOBAL_BATCH,
        shard: Shard::of(&*world),
        recompute: false,
        config: FlowMatchingConfig {
            p_uncond: 0.25,
            ..FlowMatchingConfig::default()
        },
        device: CPU,
    };
    trainer.resume(&mut step).unwrap();
    trainer.run(&mut step, &mut |_: &MetricLine| {})?;
    let part = &trainer.parts[0];
    let mut out: Vec<(String, Tensor)> = part
        .vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect();
    out.extend(part.ema.as_ref().unwrap().state_tensors("ema"));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let state: i64 = part
        .optimizer
        .state_tensors("s")
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    Ok((out, text.encoded.get(), state))
}

/// The adversarial configurations checked: the paper's, and every random departure at once.
pub fn adversarial_config(job: &str) -> AdversarialConfig {
    match job.trim_end_matches("+zero1") {
        "apt-paper" => AdversarialConfig::default(),
        "apt-all-draws" => AdversarialConfig {
            loss: AdversarialLoss::Relativistic,
            lambda_r2: 10.0,
            translate: 3,
            noised_inputs: true,
            ..AdversarialConfig::default()
        },
        other => panic!("unknown job {other}"),
    }
}

/// `steps` adversarial updates (RMSProp, G EMA; resuming from `dir` when it holds a checkpoint)
/// with G and D initialised from `init_seed`; returns G's and D's weights and G's EMA, by name.
pub fn adversarial(
    world: Rc<dyn Collective>,
    job: &str,
    init_seed: i64,
    dir: &Path,
    steps: u64,
) -> Vec<(String, Tensor)> {
    tch::set_num_threads(1);
    tch::manual_seed(init_seed);
    let cfg = model_config();
    let (vs_g, vs_d) = (nn::VarStore::new(CPU), nn::VarStore::new(CPU));
    let generator = Mmdit::new(vs_g.root(), &cfg).unwrap();
    let discriminator = AptDiscriminator::new(
        vs_d.root(),
        &cfg.clone().into(),
        &DiscriminatorConfig::default(),
    )
    .unwrap();
    // ε = 1e-2 rather than the paper's 1e-8: at step 1 RMSProp's g/(√v + ε) is ±1 for any
    // gradient far below ε, so parameters whose gradient is ~0 (adaLN-Zero's) move by ±lr on the
    // sign of rounding noise — two summation orders (two ranks, or two thread counts) then differ
    // by ~lr. With ε above those gradients the update is linear in them and the ranks agree to
    // ~1e-6; with 1e-8 they differ by 5e-3 while agreeing to 1e-7 at ε = 1.
    let rmsprop = OptimizerConfig::Rmsprop {
        lr: 1e-3,
        alpha: 0.9,
        eps: 1e-2,
        weight_decay: 0.0,
        momentum: 0.0,
        centered: false,
    };
    let config = TrainConfig {
        optimizer_d: Some(rmsprop),
        ema_decay: Some(0.9),
        shard_optimizer: job.ends_with("+zero1"),
        ..TrainConfig::new(steps, GLOBAL_BATCH, rmsprop)
    };
    let parts = vec![
        Part::new("generator", vs_g, rmsprop, Some(0.9)).unwrap(),
        Part::new("discriminator", vs_d, rmsprop, None).unwrap(),
    ];
    let mut trainer = Trainer::new("apt", dir, &config, parts, TensorRng::new(5, 0))
        .unwrap()
        .with_collective(world.clone());
    let mut data = Clips::new(None);
    let text = Embeddings::default();
    let mut step = AdversarialStep::new(
        &generator,
        &discriminator,
        adversarial_config(job),
        &mut data,
        &text,
        GLOBAL_BATCH,
        CPU,
    )
    .with_shard(Shard::of(&*world));
    trainer.resume(&mut step).unwrap();
    trainer.run(&mut step, &mut |_: &MetricLine| {}).unwrap();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for part in &trainer.parts {
        for (k, t) in part.vs.variables() {
            out.push((format!("{}.{k}", part.name), t.detach().copy()));
        }
        if let Some(ema) = &part.ema {
            out.extend(ema.state_tensors(&format!("ema.{}", part.name)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((ka, ta), (kb, tb))| {
            assert_eq!(ka, kb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}
