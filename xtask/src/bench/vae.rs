//! `cargo xtask bench vae`: encode and decode frames/s of our Wan 2.1 and SD3 VAEs against
//! diffusers' on the same random-weight directories (released sizes) and inputs, fp32, this
//! machine's threads; the two sides alternate round by round (order flipped every round).

use std::process::Command;

use super::{alternate, build_release, median, parse, release_exe};
use crate::{repo_root, run, setup, Failure};

/// One `frames_per_s` of a speed command's JSON lines, by direction.
fn frames_per_s(out: &str, direction: &str) -> Result<f64, Failure> {
    out.lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .find(|l| {
            l.contains(&format!("\"direction\":\"{direction}\""))
                || l.contains(&format!("\"direction\": \"{direction}\""))
        })
        .and_then(|l| {
            let key = "\"frames_per_s\":";
            let rest = &l[l.find(key)? + key.len()..];
            rest.trim_start()
                .split([',', '}'])
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| Failure::new(format!("no {direction} frames_per_s in {out:?}")))
}

/// `cmd`'s standard output, failing with `what` and its standard error when it does not succeed.
fn output_of(cmd: &mut Command, what: &str) -> Result<String, Failure> {
    let out = cmd
        .output()
        .map_err(|e| Failure::new(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Entry point for `cargo xtask bench vae [--rounds R] [--repeats K]`.
pub(super) fn bench(args: &[String]) -> Result<(), Failure> {
    let rounds: usize = parse(args, "--rounds", "3")?;
    let repeats: usize = parse(args, "--repeats", "3")?;
    let lib = setup::setup(false)?;
    let python = setup::ensure_reference_packages(&lib)?;
    build_release(&["-q", "-p", "apt-cli"], "building apt (release)")?;
    let dir = repo_root().join("target/bench-vae");
    if !dir.join("sd3/config.json").is_file() {
        run(
            Command::new(&python)
                .arg(repo_root().join("scripts/bench_vae.py"))
                .args(["make", "--out"])
                .arg(&dir),
            "writing random-weight Wan 2.1 and SD3 VAE directories (diffusers)",
        )?;
    }
    let apt = release_exe("apt");
    let cases = [
        ("wan2.1", "1,17,64,64", "video 17x64x64"),
        ("sd3", "1,1,256,256", "image 256x256"),
    ];
    println!("bench vae: fp32, {rounds} rounds x median of {repeats} (after a warm-up) per side, alternating");
    println!(
        "{:<26} {:>16} {:>16} {:>14}",
        "frames/s (median)", "diffusers", "apt-vae", "ratio (ours/py)"
    );
    for (model, shape, label) in cases {
        let vae = dir.join(model);
        let mut ours = [Vec::new(), Vec::new()];
        let mut theirs = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let rs = || -> Result<(), Failure> {
                let out = output_of(
                    Command::new(&apt)
                        .args(["vae", "speed", "--diffusers"])
                        .arg(&vae)
                        .args(["--shape", shape, "--repeats", &repeats.to_string()]),
                    "apt vae speed",
                )?;
                ours[0].push(frames_per_s(&out, "encode")?);
                ours[1].push(frames_per_s(&out, "decode")?);
                Ok(())
            };
            let py = || -> Result<(), Failure> {
                let out = output_of(
                    Command::new(&python)
                        .arg(repo_root().join("scripts/bench_vae.py"))
                        .args(["speed", "--diffusers"])
                        .arg(&vae)
                        .args(["--shape", shape, "--repeats", &repeats.to_string()]),
                    "bench_vae.py speed",
                )?;
                theirs[0].push(frames_per_s(&out, "encode")?);
                theirs[1].push(frames_per_s(&out, "decode")?);
                Ok(())
            };
            alternate(round, rs, py)?;
        }
        for (d, direction) in ["encode", "decode"].iter().enumerate() {
            let (p, r) = (median(theirs[d].clone()), median(ours[d].clone()));
            println!(
                "{:<26} {p:>16.2} {r:>16.2} {:>14.3}",
                format!("{model} {direction} ({label})"),
                r / p
            );
        }
    }
    Ok(())
}
