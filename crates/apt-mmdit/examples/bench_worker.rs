//! Rust side of `cargo xtask bench model`: loads the diffusers directory and inputs written by
//! `scripts/bench_sd3_worker.py`, warms up, prints `ready`, then answers `fwd K`, `train K` and
//! `quit` on stdin exactly like the Python worker (`times <ms> ...`).
//!
//! `cargo run --release -p apt-mmdit --example bench_worker -- --dir DIR --threads N`

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use apt_mmdit::Mmdit;
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
    let vs = nn::VarStore::new(Device::Cpu);
    let model =
        Mmdit::from_diffusers_dir(&vs, dir.join("model")).expect("load the benchmark model");
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
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let out = model.forward_diffusers(x, ctx, pooled, t).unwrap();
            out.square().mean(Kind::Float).backward();
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
