//! Rust side of `cargo xtask bench model` and `cargo xtask bench wan`: loads the diffusers
//! directory and inputs written by `scripts/bench_sd3_worker.py` or
//! `scripts/bench_wan_worker.py` (the family from `config.json`'s `_class_name`), warms up,
//! prints `ready`, then answers `fwd K`, `train K` and `quit` on stdin exactly like the Python
//! worker (`times <ms> ...`).
//!
//! `cargo run --release -p apt-mmdit --example bench_worker -- --dir DIR --threads N`

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use apt_mmdit::weights::{diffusers_weight_files, load_strict};
use apt_mmdit::{AttentionBackend, Mmdit, ModelConfig, WanTransformer};
use tch::{nn, Device, Kind, Tensor};

/// A diffusers-scaled forward: `(hidden_states, timestep, encoder_hidden_states, pooled)`.
type Forward = dyn Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Tensor;

fn arg(args: &[String], name: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("missing {name}"));
    args[i + 1].clone()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--dir"));
    tch::set_num_threads(arg(&args, "--threads").parse().expect("--threads N"));
    let model_dir = dir.join("model");
    let vs = nn::VarStore::new(Device::Cpu);
    let forward: Box<Forward> =
        match ModelConfig::from_diffusers_dir(&model_dir).expect("benchmark model config") {
            ModelConfig::Mmdit(mut cfg) => {
                if let Ok(backend) = std::env::var("APT_BENCH_ATTENTION") {
                    cfg.attention = if backend == "math" {
                        AttentionBackend::Math
                    } else {
                        AttentionBackend::Sdpa
                    };
                }
                let model = Mmdit::new(vs.root(), &cfg).expect("model");
                Box::new(move |x, t, ctx, pooled| {
                    let pooled = pooled.expect("the SD3 inputs have pooled_projections");
                    model.forward_diffusers(x, ctx, pooled, t).unwrap()
                })
            }
            ModelConfig::Wan(cfg) => {
                let model = WanTransformer::new(vs.root(), &cfg).expect("model");
                Box::new(move |x, t, ctx, _| model.forward_diffusers(x, t, ctx).unwrap())
            }
        };
    let files = diffusers_weight_files(&model_dir).expect("weights");
    load_strict(&vs, &files, &model_dir).expect("load the benchmark model");
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("inputs.safetensors"))
        .expect("inputs")
        .into_iter()
        .collect();
    let (x, ctx, pooled, t) = (
        &io["hidden_states"],
        &io["encoder_hidden_states"],
        io.get("pooled_projections"),
        &io["timestep"],
    );
    let params = vs.trainable_variables();

    let step = |mode: &str| -> f64 {
        let start = Instant::now();
        if mode == "fwd" {
            let _ = tch::no_grad(|| forward(x, t, ctx, pooled));
        } else {
            // Fresh gradients for every parameter, like PyTorch's `zero_grad()` (set to None)
            // followed by `backward()`.
            let out = forward(x, t, ctx, pooled);
            let loss = out.square().mean(Kind::Float);
            let grads = Tensor::run_backward(&[&loss], &params, false, false);
            assert_eq!(grads.len(), params.len());
        }
        start.elapsed().as_secs_f64() * 1000.0
    };
    for mode in ["fwd", "train", "fwd", "train"] {
        step(mode);
    }
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.is_empty() || parts[0] == "quit" {
            break;
        }
        let k: usize = parts[1].parse().expect("count");
        let times: Vec<String> = (0..k).map(|_| format!("{:.4}", step(parts[0]))).collect();
        println!("times {}", times.join(" "));
    }
}
