//! Data parallel on real MPI: `mpirun -np 2` ranks of this test binary train a tiny MMDiT — 5
//! pre-training steps, or 5 adversarial D+G updates (the paper's recipe, and one with every
//! random input departure on) — from *different* initial weights (rank 0's are broadcast), and
//! must end where one process with the same global batch ends; only rank 0 writes metrics and
//! checkpoints, and its checkpoint resumes in one process exactly like an uninterrupted
//! one-process run.

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use apt_dist::{join, Launch, SingleProcess};
use tch::Tensor;

use common::*;

/// One rank of a two-rank run; started by the tests below through `mpirun`.
#[test]
#[ignore = "a rank of the mpirun launched by the two-rank tests"]
fn mpi_rank_of_a_two_rank_run() {
    let out = PathBuf::from(std::env::var(OUT).expect("started by a two-rank test"));
    let job = std::env::var(JOB).expect("started by a two-rank test");
    let launch = Launch::from_env().unwrap();
    let world = join(&launch).unwrap();
    assert_eq!((world.rank(), world.world_size()), (launch.rank, 2));
    assert_eq!(world.backend(), "mpi");
    // Different initial weights on each rank: rank 0's must win.
    let seed = 100 + world.rank() as i64;
    let dir = out.join("run");
    if job == "mismatch" {
        // Rank 1 was started with another learning rate: both ranks refuse at the start.
        let lr = if world.rank() == 0 { 2e-3 } else { 1e-3 };
        let options = Options::default();
        let err = pretrain_with(world.clone(), seed, &dir, 5, lr, None, &options).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("training config differs"), "{msg}");
        std::fs::write(out.join(format!("refused-{}.txt", world.rank())), msg).unwrap();
        return;
    }
    if job == "die" {
        // Rank 1 crashes in its third update; rank 0 would wait for it in the all-reduce.
        let die_after = (world.rank() == 1).then_some(2 * GLOBAL_BATCH);
        let _ = pretrain_with(
            world.clone(),
            seed,
            &dir,
            1000,
            2e-3,
            die_after,
            &Options::default(),
        );
        panic!(
            "rank {} finished 1000 steps: the crash did not happen",
            world.rank()
        );
    }
    let weights = if job.starts_with("pretrain") {
        let options = Options::parse(&job);
        let (weights, clips, state, _) =
            pretrain_with(world.clone(), seed, &dir, 5, 2e-3, None, &options).unwrap();
        // Each rank trains on its half of every global batch.
        assert_eq!(clips, 5 * GLOBAL_BATCH / 2);
        let file = out.join(format!("state-{}.txt", world.rank()));
        std::fs::write(file, state.to_string()).unwrap();
        weights
    } else {
        adversarial(world.clone(), &job, seed, &dir, 5)
    };
    let file = out.join(format!("rank-{}.safetensors", world.rank()));
    Tensor::write_safetensors(&weights, &file).unwrap();
}

/// Launches `job` on two MPI ranks writing to `out`; the exit status, output and wall time.
fn launch_two_ranks(job: &str, out: &Path) -> (std::process::ExitStatus, String, Duration) {
    launch_ranks(2, "mpi_rank_of_a_two_rank_run", job, out)
}

/// Runs `job` on two MPI ranks in a fresh directory; returns it and each rank's final weights
/// (asserted identical).
fn two_ranks(job: &str) -> (tempfile::TempDir, Vec<(String, Tensor)>) {
    let tmp = tempfile::tempdir().unwrap();
    let (status, output, _) = launch_two_ranks(job, tmp.path());
    assert!(status.success(), "mpirun failed ({status}):\n{output}");
    let read = |r: usize| {
        let mut w =
            Tensor::read_safetensors(tmp.path().join(format!("rank-{r}.safetensors"))).unwrap();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    let (rank0, rank1) = (read(0), read(1));
    assert_eq!(
        max_abs_diff(&rank0, &rank1),
        0.0,
        "the ranks' weights and EMAs differ"
    );
    (tmp, rank0)
}

#[test]
fn two_mpi_ranks_pretrain_exactly_like_one_process() {
    let (tmp, rank0) = two_ranks("pretrain");

    // One process, the same global batch, rank 0's initial weights.
    let single_dir = tmp.path().join("single");
    let (single, clips) = pretrain(Rc::new(SingleProcess), 100, &single_dir, 5);
    assert_eq!(clips, 5 * GLOBAL_BATCH);
    let diff = max_abs_diff(&rank0, &single);
    eprintln!("2 ranks vs 1 process after 5 steps: max |Δ| = {diff:e}");
    assert!(
        diff <= 1e-5,
        "2 ranks vs 1 process after 5 steps: max |Δ| = {diff:e}"
    );

    // Rank 0 alone wrote the metrics (one line per update) and the checkpoint.
    let metrics = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 5, "{metrics}");

    // The two-rank checkpoint resumes in one process as if the run had never stopped.
    let (resumed, clips) = pretrain(Rc::new(SingleProcess), 999, &tmp.path().join("run"), 8);
    assert_eq!(
        clips,
        3 * GLOBAL_BATCH,
        "the resumed run trains steps 6..8 only"
    );
    let (straight, _) = pretrain(Rc::new(SingleProcess), 100, &tmp.path().join("straight"), 8);
    let diff = max_abs_diff(&resumed, &straight);
    eprintln!("2-rank checkpoint resumed on 1 rank vs straight: max |Δ| = {diff:e}");
    assert!(
        diff <= 1e-5,
        "resumed on 1 rank vs straight: max |Δ| = {diff:e}"
    );
}

fn two_ranks_take_the_adversarial_updates_of_one_process(job: &str) {
    let (tmp, rank0) = two_ranks(job);
    let single = adversarial(
        Rc::new(SingleProcess),
        job,
        100,
        &tmp.path().join("single"),
        5,
    );
    let diff = max_abs_diff(&rank0, &single);
    eprintln!("{job}: 2 ranks vs 1 process after 5 D+G updates: max |Δ| = {diff:e}");
    assert!(
        diff <= 1e-5,
        "{job}: 2 ranks vs 1 process: max |Δ| = {diff:e}"
    );
    let resumed = adversarial(Rc::new(SingleProcess), job, 999, &tmp.path().join("run"), 7);
    let straight = adversarial(
        Rc::new(SingleProcess),
        job,
        100,
        &tmp.path().join("straight"),
        7,
    );
    let diff = max_abs_diff(&resumed, &straight);
    assert!(
        diff <= 1e-5,
        "{job}: resumed on 1 rank vs straight: max |Δ| = {diff:e}"
    );
}

#[test]
fn two_mpi_ranks_take_the_papers_adversarial_updates_of_one_process() {
    two_ranks_take_the_adversarial_updates_of_one_process("apt-paper");
}

#[test]
fn two_mpi_ranks_take_adversarial_updates_with_every_random_departure_like_one_process() {
    two_ranks_take_the_adversarial_updates_of_one_process("apt-all-draws");
}

#[test]
fn ranks_started_with_different_configs_refuse_to_train() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, output, _) = launch_two_ranks("mismatch", tmp.path());
    assert!(status.success(), "mpirun failed ({status}):\n{output}");
    for rank in 0..2 {
        let msg = std::fs::read_to_string(tmp.path().join(format!("refused-{rank}.txt"))).unwrap();
        assert!(msg.contains("stage pretrain"), "{msg}");
    }
    assert!(
        !tmp.path().join("run/checkpoints").exists(),
        "nothing was trained"
    );
}

#[test]
fn a_rank_that_dies_ends_the_run_non_zero_within_60_s() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, output, elapsed) = launch_two_ranks("die", tmp.path());
    assert!(!status.success(), "the run survived a dead rank:\n{output}");
    assert!(
        elapsed < Duration::from_secs(60),
        "took {elapsed:?} to end:\n{output}"
    );
    assert!(!output.contains("finished 1000 steps"), "{output}");
    eprintln!("ended in {elapsed:?} with {status}; mpirun said:\n{output}");
}

#[test]
fn zero1_takes_the_same_updates_as_unsharded_training_with_half_the_state_per_rank() {
    let (plain_dir, plain) = two_ranks("pretrain");
    let (zero_dir, zero1) = two_ranks("pretrain+zero1");
    let diff = max_abs_diff(&plain, &zero1);
    eprintln!("pretraining, ZeRO-1 vs unsharded on 2 ranks: max |Δ| = {diff:e}");
    assert!(diff <= 1e-6, "ZeRO-1 vs unsharded: max |Δ| = {diff:e}");
    let state = |dir: &Path, r: usize| -> i64 {
        let f = dir.join(format!("state-{r}.txt"));
        std::fs::read_to_string(f).unwrap().parse().unwrap()
    };
    let full = state(plain_dir.path(), 0);
    assert_eq!(state(plain_dir.path(), 1), full);
    let (s0, s1) = (state(zero_dir.path(), 0), state(zero_dir.path(), 1));
    eprintln!("optimizer state elements: unsharded {full} per rank, ZeRO-1 {s0} + {s1}");
    assert_eq!(s0 + s1, full, "the shards hold the whole state");
    assert!(
        s0.max(s1) as f64 <= 0.6 * full as f64,
        "unbalanced: {s0} + {s1}"
    );
    // The checkpoint holds the whole (gathered) state: it resumes in one process.
    let (resumed, _) = pretrain(Rc::new(SingleProcess), 999, &zero_dir.path().join("run"), 8);
    let (straight, _) = pretrain(Rc::new(SingleProcess), 100, &zero_dir.path().join("s"), 8);
    let diff = max_abs_diff(&resumed, &straight);
    assert!(
        diff <= 1e-5,
        "ZeRO-1 checkpoint resumed on 1 rank: max |Δ| = {diff:e}"
    );

    let (_, plain) = two_ranks("apt-paper");
    let (_, zero1) = two_ranks("apt-paper+zero1");
    let diff = max_abs_diff(&plain, &zero1);
    eprintln!("APT, ZeRO-1 vs unsharded on 2 ranks: max |Δ| = {diff:e}");
    assert!(diff <= 1e-6, "APT ZeRO-1 vs unsharded: max |Δ| = {diff:e}");
}
