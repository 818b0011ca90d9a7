//! `cargo xtask bench flow` (release): one-step generation vs the 25-step CFG teacher (50
//! network evaluations) on the same batch, interleaved, and training throughput of the `small`
//! preset on CPU.

use std::time::Instant;

use apt_flow::flow::flow_matching_loss;
use apt_flow::train::{zero_grad, Optimizer, OptimizerConfig};
use apt_flow::{sample, Conditioning, Guidance, OneStepGenerator, SamplerConfig, TensorRng};
use apt_mmdit::{Mmdit, Preset};
use tch::{nn, Device};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let preset = Preset::named("small").expect("preset");
    let cfg = &preset.config;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), cfg).expect("model");
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            v.copy_(&(v.randn_like() * 0.02));
        }
    });
    let [c, t, h, w] = preset.typical_input.map(|d| d as i64);
    let batch = 4;
    let mut rng = TensorRng::new(0, 0);
    let z = rng.normal(&[batch, c, t, h, w], Device::Cpu);
    let cond = Conditioning {
        context: rng.normal(&[batch, 16, 384], Device::Cpu),
        pooled: rng.normal(&[batch, 384], Device::Cpu),
    };
    let null = Conditioning {
        context: rng.normal(&[1, 16, 384], Device::Cpu),
        pooled: rng.normal(&[1, 384], Device::Cpu),
    };
    let teacher_cfg = SamplerConfig::paper_baseline();
    let generator = OneStepGenerator::new(&model);
    let (mut one, mut teacher) = (vec![], vec![]);
    for round in 0..6 {
        for side in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            if side == 0 {
                let _ = tch::no_grad(|| generator.generate(&z, &cond)).expect("one step");
                one.push(start.elapsed().as_secs_f64());
            } else {
                let g = Guidance {
                    cond: &cond,
                    uncond: Some(&null),
                    scale: teacher_cfg.cfg_scale,
                };
                let _ = sample(&model, &z, &g, &teacher_cfg).expect("teacher");
                teacher.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let (o, te) = (median(one), median(teacher));
    println!(
        "sampling, small, batch {batch} of {c}x{t}x{h}x{w}: one-step {:.1} ms, 25-step CFG teacher ({} network evaluations) {:.1} ms, one-step is {:.1}x faster",
        o * 1e3,
        teacher_cfg.network_evaluations(),
        te * 1e3,
        te / o
    );

    let train_batch = 8;
    let mut opt = Optimizer::new(OptimizerConfig::Adamw {
        lr: 1e-4,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
    })
    .expect("optimizer");
    let x0 = rng.normal(&[train_batch, c, t, h, w], Device::Cpu);
    let tc = Conditioning {
        context: rng.normal(&[train_batch, 16, 384], Device::Cpu),
        pooled: rng.normal(&[train_batch, 384], Device::Cpu),
    };
    let mut times = vec![];
    for i in 0..12 {
        let start = Instant::now();
        zero_grad(&vs);
        let eps = rng.normal(&x0.size(), Device::Cpu);
        let tt = rng.uniform(&[train_batch], Device::Cpu);
        let loss = flow_matching_loss(&model, &x0, &eps, &tt, &tc).expect("loss");
        loss.backward();
        opt.step(&vs, 1e-4);
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let m = median(times);
    println!(
        "training, small, batch {train_batch}: {:.0} ms per step, {:.1} samples/s ({} threads)",
        m * 1e3,
        train_batch as f64 / m,
        tch::get_num_threads()
    );
}
