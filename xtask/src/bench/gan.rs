//! `cargo xtask bench gan`: approximated vs exact R1 on the APT discriminator (correlation
//! across clips, mean ratio) and the time and peak memory of one APT step with each, through
//! apt-gan's `r1_study` example (release).

use std::process::Command;

use super::{build_release, release_exe};
use crate::{run, setup, Failure};

/// Entry point for `cargo xtask bench gan`.
pub(super) fn bench() -> Result<(), Failure> {
    setup::setup(false)?;
    build_release(
        &["-q", "-p", "apt-gan", "--example", "r1_study"],
        "building the R1 study (release)",
    )?;
    let exe = release_exe("examples/r1_study");
    run(
        Command::new(&exe).arg("study"),
        "approximated vs exact R1 on the discriminator",
    )?;
    run(
        Command::new(&exe).args(["step", "approx"]),
        "one APT step with approximated R1",
    )?;
    run(
        Command::new(&exe).args(["step", "exact"]),
        "one APT step with exact R1",
    )
}
