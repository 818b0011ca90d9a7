//! `apt doctor`: what libtorch this binary runs on and what it can do.

use std::path::PathBuf;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// The libtorch_cpu.so this process mapped, from /proc/self/maps.
fn loaded_libtorch() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let path = l.split_whitespace().nth(5)?;
        path.ends_with("/libtorch_cpu.so")
            .then(|| PathBuf::from(path))
    })
}

/// PyTorch's version of the libtorch whose `lib/` holds `lib`.
fn version_near(lib: &std::path::Path) -> Option<String> {
    apt_build::torch_version(lib.parent()?.parent()?)
}

/// Whether a bf16 matmul runs and is right on `device`.
fn bf16_works(device: Device) -> std::result::Result<(), String> {
    let a = Tensor::f_ones([8, 8], (Kind::BFloat16, device)).map_err(|e| e.to_string())?;
    let p = a.f_matmul(&a).map_err(|e| e.to_string())?;
    let v = p
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_mean(Kind::Float))
        .map_err(|e| e.to_string())?
        .double_value(&[]);
    if (v - 8.0).abs() < 1e-3 {
        Ok(())
    } else {
        Err(format!("wrong result {v}"))
    }
}

/// GPU names from nvidia-smi (libtorch's C API does not expose device properties).
fn gpu_names() -> Vec<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect(),
        _ => vec![],
    }
}

/// Prints the report.
pub fn run() -> Result<()> {
    let lib = loaded_libtorch();
    let version = lib
        .as_deref()
        .and_then(version_near)
        .unwrap_or_else(|| "unknown".into());
    let path = lib
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "not found in /proc/self/maps".into());
    println!("libtorch      {version} ({path})");
    println!(
        "threads       {} intra-op, {} cores",
        tch::get_num_threads(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let cuda = tch::Cuda::is_available();
    let count = tch::Cuda::device_count();
    if cuda {
        let names = gpu_names();
        println!(
            "CUDA          available: {count} device(s), cudnn {}",
            if tch::Cuda::cudnn_is_available() {
                "yes"
            } else {
                "no"
            }
        );
        for i in 0..count {
            let name = names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| "name unknown (no nvidia-smi)".into());
            println!("  cuda:{i}      {name}");
        }
    } else {
        println!("CUDA          not available ({count} devices)");
    }
    let mut devices = vec![Device::Cpu];
    if cuda {
        devices.extend((0..count as usize).map(Device::Cuda));
    }
    for device in devices {
        let name = match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        };
        match bf16_works(device) {
            Ok(()) => println!("bf16 {name:<8} works (matmul checked)"),
            Err(why) => println!("bf16 {name:<8} does not work: {why}"),
        }
    }
    Ok(())
}
