//! `cargo xtask bench flow`: one-step generation against the 25-step CFG teacher on the same
//! batch, and training throughput of the `small` preset on CPU, through apt-flow's
//! `flow_bench` example (release).

use crate::{cargo, run, setup, Failure};

/// Entry point for `cargo xtask bench flow`.
pub(super) fn bench() -> Result<(), Failure> {
    setup::setup(false)?;
    run(
        cargo().args([
            "run",
            "--release",
            "-q",
            "-p",
            "apt-flow",
            "--example",
            "flow_bench",
        ]),
        "one-step vs 25-step CFG sampling, training throughput",
    )
}
