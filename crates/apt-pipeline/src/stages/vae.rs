//! The `vae` stage: trains the run's video VAE (the Wan 2.1 architecture, `[vae] preset`) on
//! its clips — single frames for the first `image_steps` updates, then whole clips — with an
//! L1 + L2 reconstruction loss and a small KL term, measures the per-channel
//! latent mean and std every later stage normalises with, exports a diffusers
//! `AutoencoderKLWan` directory into `vae/`, and reports the reconstruction PSNR on held-out
//! clips.

use std::path::PathBuf;

use apt_data::shapes::Split;
use apt_data::Skipped;
use apt_flow::data::{ClipSource, Cursor};
use apt_flow::train::{Part, Shard, StepLog, TrainStep, Trainer};
use apt_flow::{FlowError, RunEnd, TensorRng};
use apt_vae::WanVae;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::common::{start_or_resume, Follow};
use super::{Outcome, StageReport, StageRun};
use crate::config::latent_shape_of;
use crate::config::RunConfig;
use crate::data::{DataConfig, TrainData};
use crate::error::{config_error, PipelineError, Result};
use crate::run_dir::{write_json, Stage};

/// What the VAE stage produced (`vae/report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeReport {
    /// Updates.
    pub steps: u64,
    /// Parameters.
    pub parameters: i64,
    /// Mean reconstruction PSNR (dB, peak-to-peak 2) over the held-out clips.
    pub psnr: f64,
    /// 95% interval of that mean (normal approximation over clips).
    pub psnr_interval: [f64; 2],
    /// Mean absolute reconstruction error over the held-out clips.
    pub l1: f64,
    /// Held-out clips measured.
    pub val_clips: usize,
    /// Where they came from.
    pub val_source: String,
    /// Per-channel latent mean written into the exported config.
    pub latents_mean: Vec<f64>,
    /// Per-channel latent std written into the exported config.
    pub latents_std: Vec<f64>,
    /// Latent shape `[C, T, H, W]` of one training clip.
    pub latent_shape: [i64; 4],
    /// The exported diffusers directory.
    pub vae: PathBuf,
    /// Training files skipped as unreadable.
    #[serde(default)]
    pub bad_samples: Vec<Skipped>,
}

fn source_error(e: impl std::error::Error + Send + Sync + 'static) -> FlowError {
    FlowError::Source(Box::new(e))
}

/// One update of the VAE: encode, sample the posterior, decode, L1 + L2 + KL.
struct ReconstructionStep<'a> {
    vae: &'a WanVae,
    data: &'a mut TrainData,
    batch: usize,
    shard: Shard,
    kl_weight: f64,
    device: Device,
    /// Updates made so far (the trainer's step after a resume).
    done: u64,
    /// Updates on single frames before whole clips.
    image_steps: u64,
}

impl TrainStep for ReconstructionStep<'_> {
    fn loss(
        &mut self,
        _phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
    ) -> apt_flow::Result<Tensor> {
        let (video, _) = self.data.next_shard(self.batch, self.shard)?;
        let mut x = video.to_device(self.device);
        if self.done < self.image_steps {
            let frames = x.size()[2];
            let pick = rng.uniform(&[x.size()[0]], Device::Cpu) * frames as f64;
            let frame: Vec<i64> = Vec::<f32>::try_from(&pick)
                .map_err(FlowError::from)?
                .into_iter()
                .map(|f| (f as i64).min(frames - 1))
                .collect();
            let picked: Vec<Tensor> = frame
                .iter()
                .enumerate()
                .map(|(i, &t)| x.get(i as i64).narrow(1, t, 1))
                .collect();
            x = Tensor::stack(&picked, 0);
        }
        let posterior = self.vae.encode(&x).map_err(source_error)?;
        let eps = rng.normal(&posterior.mean.size(), self.device);
        let z = &posterior.mean + (&posterior.logvar * 0.5).exp() * eps;
        let recon = self.vae.decode_unclamped(&z).map_err(source_error)?;
        let diff = recon - &x;
        let l1 = diff.abs().mean(Kind::Float);
        let l2 = diff.square().mean(Kind::Float);
        let per_sample = posterior.mean.numel() as f64 / posterior.mean.size()[0] as f64;
        let kl = posterior.kl().mean(Kind::Float) / per_sample;
        log.add_tensor("l1", &l1);
        log.add_tensor("l2", &l2);
        log.add_tensor("kl", &kl);
        Ok(l1 + l2 + kl * self.kl_weight)
    }

    fn after_update(&mut self, _phase: usize, _parts: &[Part]) -> apt_flow::Result<()> {
        self.done += 1;
        Ok(())
    }

    fn cursor(&self) -> Cursor {
        self.data.cursor()
    }

    fn restore(&mut self, cursor: Cursor) -> apt_flow::Result<()> {
        self.data.restore(cursor)
    }
}

/// Trains (or resumes) the VAE, exports it with its latent statistics and measures it.
pub fn run(ctx: &mut StageRun) -> Result<Outcome> {
    let run = ctx.config;
    let section = run
        .vae
        .as_ref()
        .ok_or_else(|| config_error("vae", "section missing"))?;
    let train = section.train.as_ref().ok_or_else(|| {
        config_error("vae.train", "missing: the VAE stage needs its loop's knobs")
    })?;
    run.apply_threads();
    let device = run.device()?;
    let cfg = section.vae_config()?;
    let latent_shape = latent_shape_of(&cfg, run.data.clip_shape())?;
    let vs = nn::VarStore::new(device);
    let vae = apt_flow::rng::with_global_seed(run.seed, || WanVae::new(&vs.root(), &cfg))
        .map_err(vae_error)?;
    // Temporal layers start as the identity in time (an inflated image VAE).
    apt_vae::init_temporal_identity(&vs);
    let parameters: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let part = Part::new("vae", vs, train.optimizer, train.ema_decay)?;
    let dir = ctx.dir.stage(Stage::Vae);
    let rng = TensorRng::new(run.seed, 11);
    let mut trainer = Trainer::new(Stage::Vae.name(), &dir, train, vec![part], rng)?
        .with_collective(ctx.world.clone());
    trainer.stop = ctx.stop.clone();
    let mut data = TrainData::open(
        &run.data,
        train.batch_size,
        run.seed.wrapping_add(17),
        Shard::of(&*ctx.world),
    )?
    .prefetching(device);
    let mut step = ReconstructionStep {
        vae: &vae,
        data: &mut data,
        batch: train.batch_size,
        shard: Shard::of(&*ctx.world),
        kl_weight: section.kl_weight,
        device,
        done: 0,
        image_steps: section.image_steps,
    };
    start_or_resume(&mut trainer, &mut step, ctx, Stage::Vae)?;
    step.done = trainer.step;
    let mut follow = Follow {
        stage: Stage::Vae,
        progress: &mut *ctx.progress,
    };
    if trainer.run(&mut step, &mut follow)? == RunEnd::Stopped {
        return Ok(Outcome::Stopped);
    }
    if !ctx.is_main() {
        return Ok(Outcome::Trained);
    }
    // Export the EMA (or raw) weights with the latent statistics measured on training clips.
    let export_vs = nn::VarStore::new(device);
    let mut exported = WanVae::new(&export_vs.root(), &cfg).map_err(vae_error)?;
    trainer.parts[0].copy_exported_to(&export_vs)?;
    let (mean, std) = latent_statistics(&exported, run, section.stats_clips, train.batch_size)?;
    exported
        .set_latent_statistics(mean.clone(), std.clone())
        .map_err(vae_error)?;
    exported
        .save_diffusers_dir(&export_vs, &dir)
        .map_err(vae_error)?;
    let quality = reconstruction(&exported, run, section.val_clips, train.batch_size)?;
    let report = VaeReport {
        steps: trainer.step,
        parameters,
        psnr: quality.psnr,
        psnr_interval: quality.interval,
        l1: quality.l1,
        val_clips: quality.clips,
        val_source: quality.source,
        latents_mean: mean,
        latents_std: std,
        latent_shape,
        vae: dir.clone(),
        bad_samples: data.skipped(),
    };
    write_json(&ctx.dir.stage_report(Stage::Vae), &report)?;
    tracing::info!(
        psnr = report.psnr,
        l1 = report.l1,
        "VAE exported to {}",
        dir.display()
    );
    Ok(Outcome::Completed(Box::new(StageReport::Vae(report))))
}

fn vae_error(e: apt_vae::VaeError) -> PipelineError {
    PipelineError::Vae(e)
}

/// Per-channel mean and std of the posterior means of `clips` training clips (a stream of its
/// own, so not the clips the last updates saw).
fn latent_statistics(
    vae: &WanVae,
    run: &RunConfig,
    clips: usize,
    batch: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let device = run.device()?;
    let mut data = TrainData::open(
        &run.data,
        batch,
        run.seed.wrapping_add(3_000_017),
        Shard::WHOLE,
    )?;
    let mut latents = Vec::new();
    let mut seen = 0;
    while seen < clips {
        let n = batch.min(clips - seen);
        let (video, _) = data.next_clips(n)?;
        let z = tch::no_grad(|| vae.encode(&video.to_device(device)))
            .map_err(vae_error)?
            .mean;
        // [B, C, T, H, W] → [C, B·T·H·W]
        latents.push(z.transpose(0, 1).flatten(1, -1).to_device(Device::Cpu));
        seen += n;
    }
    let all = Tensor::cat(&latents, 1).to_kind(Kind::Double);
    let mean = all.mean_dim(1, false, Kind::Double);
    let std = all.std_dim(1, true, false).clamp_min(1e-6);
    Ok((
        Vec::<f64>::try_from(&mean).map_err(PipelineError::from)?,
        Vec::<f64>::try_from(&std).map_err(PipelineError::from)?,
    ))
}

/// Reconstruction quality on held-out clips.
struct Quality {
    psnr: f64,
    interval: [f64; 2],
    l1: f64,
    clips: usize,
    source: String,
}

/// PSNR and L1 of `vae`'s reconstructions (posterior mean, clamped decoding) of `clips` clips
/// the training stream never draws: moving shapes from a seed of their own (every colour-shape
/// pair, the held-out ones included); for files, the loader's clips under another seed (not
/// held out — said in the report).
fn reconstruction(vae: &WanVae, run: &RunConfig, clips: usize, batch: usize) -> Result<Quality> {
    let device = run.device()?;
    let (videos, source): (Vec<Tensor>, String) = match &run.data {
        DataConfig::Shapes { shapes, seed } => {
            let seed = seed.wrapping_add(4_000_037);
            let v = (0..clips as u64)
                .map(|i| shapes.sample(seed, i, Split::All).map(|s| s.video))
                .collect::<std::result::Result<_, _>>()?;
            (
                v,
                format!("moving shapes, seed {seed}, every pair (held-out ones included)"),
            )
        }
        DataConfig::Files { path, .. } => {
            let mut data = TrainData::open(
                &run.data,
                batch,
                run.seed.wrapping_add(4_000_037),
                Shard::WHOLE,
            )?;
            let (v, _) = data.next_clips(clips)?;
            (
                (0..clips as i64).map(|i| v.get(i)).collect(),
                format!(
                    "{} (training files, another crop; not held out)",
                    path.display()
                ),
            )
        }
        DataConfig::Latents { .. } => {
            return Err(config_error(
                "data.kind",
                "is \"latents\": the VAE stage trains on pixels (moving shapes or files)",
            ))
        }
    };
    let mut psnrs = Vec::with_capacity(clips);
    let mut l1s = Vec::with_capacity(clips);
    for chunk in videos.chunks(batch.max(1)) {
        let x = Tensor::stack(chunk, 0)
            .to_device(device)
            .to_kind(Kind::Float);
        let recon =
            tch::no_grad(|| -> apt_vae::Result<Tensor> { vae.decode(&vae.encode(&x)?.mean) })
                .map_err(vae_error)?;
        let diff = (recon - &x).to_kind(Kind::Double);
        let mse = diff
            .square()
            .flatten(1, -1)
            .mean_dim(1, false, Kind::Double);
        let l1 = diff.abs().flatten(1, -1).mean_dim(1, false, Kind::Double);
        for (m, a) in Vec::<f64>::try_from(&mse.to_device(Device::Cpu))
            .map_err(PipelineError::from)?
            .into_iter()
            .zip(Vec::<f64>::try_from(&l1.to_device(Device::Cpu)).map_err(PipelineError::from)?)
        {
            psnrs.push(10.0 * (4.0 / m.max(1e-12)).log10());
            l1s.push(a);
        }
    }
    let n = psnrs.len().max(1) as f64;
    let mean = psnrs.iter().sum::<f64>() / n;
    let var = psnrs.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = 1.96 * (var / n).sqrt();
    Ok(Quality {
        psnr: mean,
        interval: [mean - half, mean + half],
        l1: l1s.iter().sum::<f64>() / n,
        clips: psnrs.len(),
        source,
    })
}
