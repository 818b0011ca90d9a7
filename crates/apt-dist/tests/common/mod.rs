//! What the data-parallel tests share: the tiny model, the clips and captions each rank draws
//! from, and the two training jobs (pre-training, adversarial updates) a rank runs — the same
//! code whether one process or N ranks run it.

#![allow(dead_code)]

use std::cell::Cell;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use apt_dist::{Collective, Shard};
use apt_flow::data::{CaptionEncoder, ClipSource, Cursor};
use apt_flow::pretrain::{FlowMatchingConfig, FlowMatchingStep};
use apt_flow::testing::{tiny_model_config, tiny_wan_config, FixedClips, HashedCaptions};
use apt_flow::train::{
    freeze_variables, MetricLine, OptimizerConfig, Part, Precision, ShardMode, ShardStats,
    TrainConfig, Trainer,
};
use apt_flow::{Conditioning, Result, TensorRng};
use apt_gan::{
    AdversarialConfig, AdversarialLoss, AdversarialStep, AptDiscriminator, DiscriminatorConfig,
};
use apt_mmdit::lora::{is_adapter_variable, with_lora, LoraConfig};
use apt_mmdit::{MmditConfig, Model, ModelConfig};
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
    let (weights, clips, ..) = pretrain_with(
        world,
        init_seed,
        dir,
        steps,
        2e-3,
        None,
        &Options::default(),
    )
    .unwrap();
    (weights, clips)
}

/// Named weights, clips this rank trained on, optimizer-state elements this rank holds, what it
/// held of the weights while sharded.
type Trained = (Vec<(String, Tensor)>, usize, i64, ShardStats);

/// How a job trains, from the `+`-separated words after its name: `zero1` (or `optimizer`),
/// `gradients`, `full` (the sharding), `recompute`, `bf16`, `lora` (rank-4 adapters on the
/// attention projections, the base frozen), `wan` (a tiny Wan 2.1 instead of the MMDiT),
/// `b<N>` (global batch N instead of [`GLOBAL_BATCH`]) and `d<N>` (N blocks instead of 2).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub shard: ShardMode,
    pub recompute: bool,
    pub bf16: bool,
    pub lora: bool,
    pub wan: bool,
    pub batch: Option<usize>,
    pub depth: Option<usize>,
}

impl Options {
    pub fn parse(job: &str) -> Self {
        let mut o = Options::default();
        for word in job.split('+').skip(1) {
            match word {
                "zero1" | "optimizer" => o.shard = ShardMode::Optimizer,
                "gradients" => o.shard = ShardMode::Gradients,
                "full" => o.shard = ShardMode::Full,
                "recompute" => o.recompute = true,
                "bf16" => o.bf16 = true,
                "lora" => o.lora = true,
                "wan" => o.wan = true,
                b if b.starts_with('b') => o.batch = Some(b[1..].parse().expect("b<N>")),
                d if d.starts_with('d') => o.depth = Some(d[1..].parse().expect("d<N>")),
                other => panic!("unknown job option {other}"),
            }
        }
        o
    }

    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(GLOBAL_BATCH)
    }

    /// The model (with its adapters when `lora`) in a fresh store; LoRA freezes the base.
    pub fn model(&self) -> (nn::VarStore, Model) {
        let vs = nn::VarStore::new(CPU);
        let depth = self.depth.unwrap_or(2);
        let cfg: ModelConfig = if self.wan {
            tiny_wan_config(depth).into()
        } else {
            tiny_model_config(depth, "velocity").into()
        };
        let model = if self.lora {
            let lora = LoraConfig {
                rank: 4,
                alpha: None,
                dropout: 0.0,
                targets: ["to_q", "to_k", "to_v"].map(String::from).to_vec(),
            };
            let (model, _) = with_lora(&lora, || Model::new(vs.root(), &cfg)).unwrap();
            freeze_variables(&vs, |name| !is_adapter_variable(name));
            model
        } else {
            Model::new(vs.root(), &cfg).unwrap()
        };
        (vs, model)
    }

    pub fn precision(&self) -> Precision {
        if self.bf16 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    }
}

/// [`pretrain`] at learning rate `lr`, ending the process after `die_after` clips, trained as
/// `options` say; also returns how many optimizer-state elements this rank holds at the end.
/// The loop's error is returned.
pub fn pretrain_with(
    world: Rc<dyn Collective>,
    init_seed: i64,
    dir: &Path,
    steps: u64,
    lr: f64,
    die_after: Option<usize>,
    options: &Options,
) -> Result<Trained> {
    tch::set_num_threads(1);
    tch::manual_seed(init_seed);
    let (vs, model) = options.model();
    let batch = options.batch();
    let adamw = OptimizerConfig::Adamw {
        lr,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut config = TrainConfig::new(steps, batch, adamw);
    config.clip_grad = Some(1.0);
    config.ema_decay = Some(0.9);
    config.shard = options.shard;
    let part = Part::new("model", vs, adamw, config.ema_decay)
        .unwrap()
        .with_precision(options.precision());
    let mut trainer = Trainer::new("pretrain", dir, &config, vec![part], TensorRng::new(3, 0))
        .unwrap()
        .with_collective(world.clone());
    let mut data = Clips::new(die_after);
    let text = Embeddings::default();
    let mut step = FlowMatchingStep {
        model: &model,
        data: &mut data,
        text: &text,
        batch,
        shard: Shard::of(&*world),
        recompute: options.recompute,
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
    Ok((out, text.encoded.get(), state, part.shard_stats()))
}

/// The adversarial configurations checked: the paper's, and every random departure at once.
pub fn adversarial_config(job: &str) -> AdversarialConfig {
    match job.split('+').next().unwrap_or_default() {
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
    let options = Options::parse(job);
    let cfg = model_config();
    let (vs_g, generator) = options.model();
    let vs_d = nn::VarStore::new(CPU);
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
        shard: options.shard,
        recompute: options.recompute,
        ..TrainConfig::new(steps, options.batch(), rmsprop)
    };
    let parts = vec![
        Part::new("generator", vs_g, rmsprop, Some(0.9))
            .unwrap()
            .with_precision(options.precision()),
        Part::new("discriminator", vs_d, rmsprop, None)
            .unwrap()
            .with_precision(options.precision()),
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
        options.batch(),
        CPU,
    )
    .with_shard(Shard::of(&*world))
    .with_recompute(options.recompute);
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

pub fn mpirun() -> Command {
    let mut cmd = Command::new("mpirun");
    // CI runs as root; two ranks on a 2-core machine.
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Local ranks only: no ssh/rsh agent needed (minimal containers have none).
        .env("OMPI_MCA_plm", "isolated")
        .args(["--oversubscribe", "--bind-to", "none"]);
    cmd
}

/// Launches `job` on `ranks` MPI ranks of this test binary's ignored test `rank_test`, writing
/// to `out`; the exit status, output and wall time.
pub fn launch_ranks(
    ranks: usize,
    rank_test: &str,
    job: &str,
    out: &Path,
) -> (std::process::ExitStatus, String, Duration) {
    let exe = std::env::current_exe().unwrap();
    let mut child = mpirun()
        .args(["-np", &ranks.to_string()])
        .arg(&exe)
        .args(["--exact", rank_test, "--ignored", "--test-threads=1"])
        .env(OUT, out)
        .env(JOB, job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI) must be installed: `cargo xtask setup` installs it");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("the {ranks}-rank run did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = start.elapsed();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (status, text, elapsed)
}
