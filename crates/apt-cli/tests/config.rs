//! The run config from the command line, without training: every mistake is one line naming
//! the key, old key names still load (with a warning), and the dry run sizes every shipped
//! config.

mod common;

use common::*;

#[test]
fn config_mistakes_are_one_line_errors_naming_the_key() {
    let cases = [
        ("pretrain.train.stepz=3", "stepz"),
        ("pretrain.train.ema_decay=1.5", "pretrain.train.ema_decay"),
        ("distill.pairs=0", "distill.pairs"),
        ("apt.sigma_r1=-1", "apt.sigma_r1"),
        // A type error inside a section's embedded method config names the full key.
        ("apt.translate=\"x\"", "apt.translate"),
        ("pretrain.p_uncond=\"often\"", "pretrain.p_uncond"),
        ("apt.colour=3", "colour"),
        ("device=tpu", "device"),
        ("report.prompts=0", "report.prompts"),
        ("data.shapes.frames=0", "frames"),
        ("model.preset=huge", "`model`"),
        ("pretrain.train=3", "pretrain.train"),
        ("nonsense", "key=value"),
        // Values that used to pass validation and then train wrongly.
        (
            "pretrain.train.schedule.decay.min_factor=-1.0",
            "pretrain.train.schedule.decay.min_factor",
        ),
        (
            "pretrain.train.schedule.decay.min_factor=nan",
            "pretrain.train.schedule.decay.min_factor",
        ),
        (
            "pretrain.train.optimizer.eps=inf",
            "pretrain.train.optimizer.eps",
        ),
        (
            "pretrain.train.optimizer.weight_decay=inf",
            "pretrain.train.optimizer.weight_decay",
        ),
        (
            "apt.discriminator.time_shift=-1",
            "apt.discriminator.time_shift",
        ),
        ("threads=100000", "threads"),
        ("apt.train.optimizer_d.lr=-1", "apt.train.optimizer_d.lr"),
        // Discriminator-side options.
        ("apt.d_steps=0", "apt.d_steps"),
        ("apt.translate=-1", "apt.translate"),
        ("apt.lambda_r2=-1", "apt.lambda_r2"),
        ("apt.loss=\"wasserstein\"", "loss"),
        ("apt.discriminator.times=\"student\"", "times"),
        (
            "apt.discriminator.times={ distribution = { kind = \"uniform\" }, shift = 0.0 }",
            "apt.discriminator.times.shift",
        ),
        ("distill.train.optimizer.lr=0", "distill.train.optimizer.lr"),
        ("apt.train.shard=\"zero3\"", "apt.train.shard"),
        ("pretrain.train.shard=true", "pretrain.train.shard"),
        ("out=\"\"", "`out`"),
        // A key of an older apt-rs says where it went.
        ("apt.steps=3", "under [apt.train]"),
        (
            "distill.train.optimizer_d={ kind = \"adamw\", lr = 1e-4 }",
            "distill.train.optimizer_d",
        ),
    ];
    for (set, key) in cases {
        let o = apt(&strings(&[
            "train",
            "--config",
            &config("smoke.toml"),
            "--dry-run",
            "--set",
            set,
        ]));
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{set}: accepted");
        assert!(err.contains(key), "{set}: {err}");
        assert!(
            !err.contains("panicked") && err.trim().lines().count() == 1,
            "{set}: {err}"
        );
    }
    // Consistency distillation copies the whole student into its target every update.
    let o = apt(&strings(&[
        "train",
        "--config",
        &config("seaweed-apt-8b.toml"),
        "--dry-run",
        "--set",
        "consistency.train.shard=\"full\"",
    ]));
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("consistency.train.shard"),
        "{err}"
    );
    let o = apt(&strings(&["train", "--config", "/no/such.toml"]));
    assert!(!o.status.success() && text(&o.stderr).contains("/no/such.toml"));
}

/// `apt.sigma` (aR1's σ before it was called `sigma_r1`) still loads, with a warning; given
/// next to its new name it is an error naming both.
#[test]
fn the_old_name_of_sigma_r1_loads_with_a_warning() {
    let dry = |sets: &[&str]| {
        let mut args = strings(&["train", "--config", &config("smoke.toml"), "--dry-run"]);
        for s in sets {
            args.extend(strings(&["--set", s]));
        }
        apt(&args)
    };
    let o = dry(&["apt.sigma=0.05"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("sigma_r1 = 0.05"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("`apt.sigma` is the old name of `apt.sigma_r1`"),
        "{}",
        text(&o.stderr)
    );
    let o = dry(&["apt.sigma=0.05", "apt.sigma_r1=0.1"]);
    assert_clear_error(&o, &["`apt.sigma`", "`sigma_r1`"]);
}

#[test]
fn dry_runs_size_every_shipped_config() {
    for (name, params) in [
        ("smoke.toml", "290,400"),
        ("demo.toml", "7,900,128"),
        ("real-videos.toml", "7,900,128"),
        ("seaweed-apt-8b.toml", "8,037,029,056"),
        ("wan-tiny.toml", "33,960"),
        ("wan2.1-t2v-1.3b.toml", "1,418,996,800"),
        ("wan2.1-t2v-14b.toml", "14,288,491,584"),
    ] {
        // Paths in configs are relative to the working directory: the repository's root.
        let o = apt_command(&strings(&["train", "--config", &config(name), "--dry-run"]))
            .current_dir(repo())
            .output()
            .unwrap();
        let out = text(&o.stdout);
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        assert!(
            out.contains(&format!("teacher / generator {params}")),
            "{name}: {out}"
        );
        assert!(out.contains("apt "), "{name}: {out}");
    }
    let o = apt(&strings(&[
        "train",
        "--config",
        &config("seaweed-apt-8b.toml"),
        "--dry-run",
    ]));
    let out = text(&o.stdout);
    assert!(out.contains("runs here    no"), "{out}");
    assert!(out.contains("discriminator 8,"), "{out}");
    // The paper's APT step (bf16, recomputation, full sharding) fits an 80 GB GPU at 64 ranks.
    let o = apt(&strings(&[
        "train",
        "--config",
        &config("seaweed-apt-8b.toml"),
        "--dry-run",
        "--world-size",
        "64",
        "--set",
        "consistency.train.batch_size=64",
        "--set",
        "apt.train.batch_size=64",
    ]));
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let row = out
        .lines()
        .find(|l| l.starts_with("apt ") && l.contains("(of 64)"))
        .unwrap_or_else(|| panic!("no per-rank apt row: {out}"));
    let mine: f64 = row
        .trim_end_matches(" GB (full)")
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no full-sharding cell: {row}"));
    assert!(mine < 80.0, "{row}");

    // The Wan recipe sizes itself before the download, per rank of a data-parallel run.
    let o = apt(&strings(&[
        "train",
        "--config",
        &config("wan2.1-t2v-1.3b.toml"),
        "--dry-run",
        "--world-size",
        "8",
    ]));
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // With LoRA the plan says what trains, and a step needs less.
    let targets = "targets=[\"to_q\", \"to_k\", \"to_v\", \"to_out.0\"]";
    let lora = apt(&strings(&[
        "train",
        "--config",
        &config("wan2.1-t2v-1.3b.toml"),
        "--dry-run",
        "--world-size",
        "8",
        "--set",
        &format!("apt.lora={{rank=32, {targets}}}"),
    ]));
    let lora_out = text(&lora.stdout);
    assert!(lora.status.success(), "{}", text(&lora.stderr));
    // 30 blocks × 8 attention projections of 1536 → 1536: 32 · 3072 each.
    assert!(
        lora_out.contains("lora         apt: rank 32 on 240 linear layers: 23,592,960 trained"),
        "{lora_out}"
    );
    let apt_row = |plan: &str| -> String {
        plan.lines()
            .find(|l| l.starts_with("apt "))
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(
        apt_row(&lora_out),
        apt_row(&out),
        "LoRA does not change the plan"
    );
    for needle in [
        "model        wan from Wan2.1-T2V-1.3B-Diffusers: 30 blocks × 1536 wide",
        "heads at blocks [13, 22, 30]",
        "16×21×60×104",
        "runs here    not yet",
        "# per rank at 8 ranks",
        "1 (of 8)",
    ] {
        assert!(out.contains(needle), "{needle:?} not in {out}");
    }
}

/// A warm-up as long as the stage is legal but never reaches the peak learning rate: a
/// warning naming the key (the dry run runs the same checks as the run).
#[test]
fn a_warm_up_longer_than_the_stage_is_a_warning() {
    let o = apt(&strings(&[
        "train",
        "--config",
        &config("smoke.toml"),
        "--dry-run",
        "--set",
        "pretrain.train.schedule.warmup_steps=1000",
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("`pretrain.train.schedule.warmup_steps` (1000) is not below `steps` (40)"),
        "{err}"
    );
}
