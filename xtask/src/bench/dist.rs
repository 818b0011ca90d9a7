//! `cargo xtask bench dist`: pre-training updates of the demo (small preset, global batch 16)
//! in one process with 1 and 2 threads, on 2 MPI ranks and on 2 torchrun ranks (c10d's Gloo)
//! of 1 thread, interleaved over rounds; prints seconds per update and the 2-rank scaling
//! efficiencies.

use std::process::{Command, Stdio};

use super::{build_release, median, parse, release_exe, seconds_per_step};
use crate::{repo_root, run, setup, Failure};

/// Entry point for `cargo xtask bench dist [--steps N] [--rounds R]`.
pub(super) fn bench(args: &[String]) -> Result<(), Failure> {
    let steps: u64 = parse(args, "--steps", "40")?;
    let rounds: usize = parse(args, "--rounds", "2")?;
    let lib = setup::setup(false)?;
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
                let mut c = Command::new("mpirun");
                c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                    .env("OMPI_MCA_plm", "isolated")
                    .args(["--oversubscribe", "--bind-to", "none", "-np"])
                    .arg(ranks.to_string())
                    .arg(&apt);
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
        t.get(3)
            .map(|g| format!(", torchrun + Gloo {:.0}% ({:.2}x)", 100.0 * t[0] / (2.0 * g), t[0] / g))
            .unwrap_or_default(),
        t[0] / t[1]
    );
    Ok(())
}
