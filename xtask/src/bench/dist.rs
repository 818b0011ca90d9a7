//! `cargo xtask bench dist`: pre-training updates of the demo (small preset, global batch 16)
//! in one process with 1 and 2 threads, on 2 MPI ranks and on 2 torchrun ranks (c10d's Gloo)
//! of 1 thread, and on 2 MPI ranks with recomputation unsharded and fully sharded, interleaved
//! over rounds; prints seconds per update and the 2-rank scaling efficiencies. Then each MPI
//! rank's peak resident memory while pre-training a 251M-parameter MMDiT
//! (`configs/models/mmdit-250m.toml`) unsharded and under each shard mode.

use std::process::{Command, Stdio};

use super::{build_release, median, parse, release_exe, seconds_per_step};
use crate::{repo_root, run, setup, Failure};

/// Entry point for `cargo xtask bench dist [--steps N] [--rounds R] [--memory]` (`--memory`:
/// the peak-memory runs only).
pub(super) fn bench(args: &[String]) -> Result<(), Failure> {
    let steps: u64 = parse(args, "--steps", "40")?;
    let rounds: usize = parse(args, "--rounds", "2")?;
    let lib = setup::setup(false)?;
    if args.iter().any(|a| a == "--memory") {
        build_release(
            &["-q", "-p", "apt-cli"],
            "building the apt binary (release)",
        )?;
        return peak_memory(&release_exe("apt"), &repo_root().join("target/bench-dist"));
    }
    // torchrun sits next to the managed install's Python (none with a LIBTORCH of one's own).
    let torchrun = lib
        .python
        .as_ref()
        .and_then(|p| p.parent())
        .map(|bin| bin.join("torchrun"))
        .filter(|t| t.is_file());
    build_release(
        &["-q", "-p", "apt-cli"],
        "building the apt binary (release)",
    )?;
    let apt = release_exe("apt");
    let config = repo_root().join("configs/demo.toml");
    let work = repo_root().join("target/bench-dist");
    let mut cases: Vec<(&str, usize, usize)> = vec![
        ("1 process, 1 thread", 1, 1),
        ("1 process, 2 threads", 1, 2),
        ("2 MPI ranks, 1 thread each", 2, 1),
        ("2 MPI ranks, recompute", 2, 1),
        ("2 MPI ranks, recompute, full", 2, 1),
    ];
    if torchrun.is_some() {
        cases.push(("2 torchrun ranks (Gloo)", 2, 1));
    }
    let mut times = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, (name, ranks, threads)) in cases.iter().enumerate() {
            let out = work.join(format!("r{round}-{i}"));
            let _ = std::fs::remove_dir_all(&out);
            let mut cmd = if name.contains("torchrun") {
                let mut c = Command::new(torchrun.as_ref().expect("checked"));
                c.args(["--standalone", "--nproc-per-node"])
                    .arg(ranks.to_string())
                    .arg("--no-python")
                    .arg(&apt);
                c
            } else if *ranks > 1 {
                let mut c = mpirun(*ranks);
                c.arg(&apt);
                c
            } else {
                Command::new(&apt)
            };
            cmd.args(["train", "--stage", "pretrain", "--config"])
                .arg(&config)
                .args(["--set", &format!("out={:?}", out.display().to_string())])
                .args(["--set", &format!("threads={threads}")])
                .args(["--set", &format!("pretrain.train.steps={steps}")])
                .args(["--set", "pretrain.val_clips=0"])
                // The demo imports its teacher; this measures training one.
                .args(["--set", "pretrain.from=\"\""])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null());
            if name.contains("recompute") {
                cmd.args(["--set", "pretrain.train.recompute=true"]);
            }
            if name.ends_with("full") {
                cmd.args(["--set", "pretrain.train.shard=\"full\""]);
            }
            run(&mut cmd, &format!("round {round}: {name}"))?;
            times[i].push(seconds_per_step(&out.join("pretrain/metrics.jsonl"))?);
        }
    }
    let t: Vec<f64> = times.into_iter().map(median).collect();
    println!("pre-training the demo's teacher (small preset, global batch 16), median of {rounds} rounds:");
    for ((name, _, _), s) in cases.iter().zip(&t) {
        println!("  {name:<28} {:7.3} s/update  {:6.1} clips/s", s, 16.0 / s);
    }
    println!(
        "2-rank scaling efficiency vs 1 process of 1 thread: MPI {:.0}% (speed-up {:.2}x){}; 2 threads in one process: {:.2}x",
        100.0 * t[0] / (2.0 * t[2]),
        t[0] / t[2],
        t.get(5)
            .map(|g| format!(", torchrun + Gloo {:.0}% ({:.2}x)", 100.0 * t[0] / (2.0 * g), t[0] / g))
            .unwrap_or_default(),
        t[0] / t[1]
    );
    println!(
        "full sharding's cost per update (2 MPI ranks, recomputation both): {:.2}x unsharded",
        t[4] / t[3]
    );
    peak_memory(&apt, &work)
}

/// `mpirun -np <ranks>` as the benches run it (root allowed, local ranks only).
fn mpirun(ranks: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .args(["--oversubscribe", "--bind-to", "none", "-np"])
        .arg(ranks.to_string());
    c
}

/// Each of 2 MPI ranks' peak resident memory over 3 pre-training updates of a 251M-parameter
/// MMDiT (fp32, AdamW, EMA; global batch 4 of the demo's clips), per shard mode, with
/// recomputation: over the training steps (what the loop logs) and over the whole process
/// (`/usr/bin/time`: also building the model before and gathering it for the export after).
fn peak_memory(apt: &std::path::Path, work: &std::path::Path) -> Result<(), Failure> {
    let demo = std::fs::read_to_string(repo_root().join("configs/demo.toml"))
        .map_err(|e| Failure::new(format!("configs/demo.toml: {e}")))?;
    let model = std::fs::read_to_string(repo_root().join("configs/models/mmdit-250m.toml"))
        .map_err(|e| Failure::new(format!("configs/models/mmdit-250m.toml: {e}")))?;
    let config = work.join("mmdit-250m-demo.toml");
    let text = format!(
        "{}\n[model.config]\n{model}",
        demo.replace("preset = \"small\"\n", "")
    );
    std::fs::create_dir_all(work)
        .and_then(|_| std::fs::write(&config, text))
        .map_err(|e| Failure::new(format!("{}: {e}", config.display())))?;
    println!("peak resident memory per rank, 2 MPI ranks, 251M-parameter MMDiT, 3 updates:");
    for mode in ["none", "optimizer", "gradients", "full"] {
        let out = work.join(format!("memory-{mode}"));
        let _ = std::fs::remove_dir_all(&out);
        let mut cmd = mpirun(2);
        cmd.args(["/usr/bin/time", "-f", "maxrss_kb %M"])
            .arg(apt)
            .args(["train", "--stage", "pretrain", "--config"])
            .arg(&config)
            .args(["--set", &format!("out={:?}", out.display().to_string())])
            .args(["--set", "threads=1", "--set", "pretrain.train.steps=3"])
            .args(["--set", "pretrain.train.batch_size=4"])
            .args([
                "--set",
                "pretrain.val_clips=0",
                "--set",
                "pretrain.from=\"\"",
            ])
            .args(["--set", "pretrain.train.recompute=true"])
            .args(["--set", &format!("pretrain.train.shard=\"{mode}\"")])
            .env("RUST_LOG", "apt_flow=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let o = cmd
            .output()
            .map_err(|e| Failure::new(format!("mpirun: {e}")))?;
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            return Err(Failure::new(format!("memory run ({mode}) failed:\n{err}")));
        }
        let peaks: Vec<f64> = err
            .lines()
            .filter_map(|l| l.strip_prefix("maxrss_kb ")?.trim().parse::<f64>().ok())
            .map(|kb| kb / 1e6)
            .collect();
        let steps: Vec<f64> = err
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("peak_rss_mb=")? + 12..];
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .map(|mb| mb / 1e3)
            .collect();
        let gb = |v: &[f64]| {
            v.iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "  shard = {mode:<10} training steps {} GB; whole process {} GB",
            gb(&steps),
            gb(&peaks)
        );
    }
    Ok(())
}
