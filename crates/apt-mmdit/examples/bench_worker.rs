//! Rust side of `cargo xtask bench model`: loads the diffusers directory and inputs written by
//! `scripts/bench_sd3_worker.py`, warms up, prints `ready`, then answers `fwd K`, `train K` and
//! `quit` on stdin exactly like the Python worker (`times <ms> ...`).
//!
//! `cargo run --release -p apt-mmdit --example bench_worker -- --dir DIR --threads N`

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use apt_mmdit::weights::{diffusers_weight_files, load_strict, read_diffusers_config};
use apt_mmdit::{AttentionBackend, Mmdit};
use tch::{nn, Device, Kind, Tensor};

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
    let mut cfg = read_diffusers_config(&model_dir).expect("benchmark model config");
    if let Ok(backend) = std::env::var("APT_BENCH_ATTENTION") {
        cfg.attention = if backend == "math" {
            AttentionBackend::Math
        } else {
            AttentionBackend::Sdpa
        };
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), &cfg).expect("model");
    let files = diffusers_weight_files(&model_dir).expect("weights");
    load_strict(&vs, &files, &model_dir).expect("load the benchmark model");
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("inputs.safetensors"))
        .expect("inputs")
        .into_iter()
        .collect();
    let (x, ctx, pooled, t) = (
        &io["hidden_states"],
        &io["encoder_hidden_states"],
        &io["pooled_projections"],
        &io["timestep"],
    );
    let params = vs.trainable_variables();

    let step = |mode: &str| -> f64 {
        let start = Instant::now();
        if mode == "fwd" {
            let _ = tch::no_grad(|| model.forward_diffusers(x, ctx, pooled, t).unwrap());
        } else {
            // Fresh gradients for every parameter, like PyTorch's `zero_grad()` (set to None)
            // followed by `backward()`.
            let out = model.forward_diffusers(x, ctx, pooled, t).unwrap();
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
