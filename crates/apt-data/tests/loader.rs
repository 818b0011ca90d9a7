//! Data sets (folder, manifest, latents, embeddings) and the loader (order, workers, resume,
//! shards, bad samples).

use std::path::Path;

use apt_data::shapes::{write_folder, ShapesConfig, Split};
use apt_data::{assets, ClipSpec, Cursor, Dataset, Loader, LoaderConfig, Media, OnBadSample};
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

fn shapes_folder(dir: &Path, count: usize) {
    write_folder(
        &ShapesConfig::new(6, 24, 24),
        3,
        Split::All,
        count,
        8.0,
        dir,
        |_| {},
    )
    .unwrap();
}

fn spec() -> ClipSpec {
    ClipSpec::eval(4, 16, 16).random()
}

fn batches(dataset: &Dataset, workers: usize, n: usize) -> Vec<(Vec<usize>, Tensor)> {
    let mut loader =
        Loader::new(dataset.clone(), LoaderConfig::new(4, workers, 11, spec())).unwrap();
    (0..n)
        .map(|_| loader.next_batch().unwrap())
        .map(|b| (b.items, b.video))
        .collect()
}

#[test]
fn a_folder_with_captions_loads_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 10);
    std::fs::copy(
        assets::clip("realshort.mp4").unwrap(),
        dir.path().join("nocaption.mp4"),
    )
    .unwrap();
    let set = Dataset::open(dir.path(), OnBadSample::Skip).unwrap();
    assert_eq!(set.len(), 10);
    assert_eq!(set.skipped.len(), 1);
    assert!(
        set.skipped[0].what.ends_with("nocaption.mp4")
            && set.skipped[0].reason.contains("nocaption.txt")
    );
    let err = Dataset::open(dir.path(), OnBadSample::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nocaption.mp4"), "{err}");

    let mut loader = Loader::new(set.clone(), LoaderConfig::new(4, 2, 0, spec())).unwrap();
    let batch = loader.next_batch().unwrap();
    assert_eq!(batch.video.size(), vec![4, 3, 4, 16, 16]);
    for (caption, &i) in batch.captions.iter().zip(&batch.items) {
        assert_eq!(caption, &set.items[i].caption);
    }
    // 10 items, batches of 4: two batches per epoch, the remainder dropped.
    let second = loader.next_batch().unwrap();
    let third = loader.next_batch().unwrap();
    assert_eq!((batch.epoch, second.epoch, third.epoch), (0, 0, 1));
    assert_eq!(loader.stats().loaded, 12);
}

#[test]
fn batches_do_not_depend_on_the_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 9);
    let set = Dataset::open(dir.path(), OnBadSample::Fail).unwrap();
    let reference = batches(&set, 0, 5);
    for workers in [1, 2, 3] {
        for ((ia, va), (ib, vb)) in reference.iter().zip(&batches(&set, workers, 5)) {
            assert_eq!(ia, ib, "{workers} workers");
            assert!(va.equal(vb), "{workers} workers");
        }
    }
    // Epochs are reshuffled.
    assert_ne!(reference[0].0, reference[2].0);
}

#[test]
fn a_saved_cursor_resumes_the_same_sequence() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 9);
    let set = Dataset::open(dir.path(), OnBadSample::Fail).unwrap();
    let cfg = LoaderConfig::new(4, 2, 5, spec());
    let mut run = Loader::new(set.clone(), cfg.clone()).unwrap();
    for _ in 0..3 {
        run.next_batch().unwrap();
    }
    let cursor = run.cursor();
    let json = serde_json::to_string(&cursor).unwrap();
    let expected: Vec<_> = (0..3).map(|_| run.next_batch().unwrap()).collect();
    let restored: Cursor = serde_json::from_str(&json).unwrap();
    let mut resumed = Loader::new(set, cfg)
        .unwrap()
        .with_cursor(restored)
        .unwrap();
    for e in expected {
        let b = resumed.next_batch().unwrap();
        assert_eq!(b.items, e.items);
        assert!(b.video.equal(&e.video));
    }
}

#[test]
fn shards_split_each_epoch_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 10);
    let set = Dataset::open(dir.path(), OnBadSample::Fail).unwrap();
    let order = |rank| {
        let cfg = LoaderConfig {
            rank,
            world_size: 3,
            ..LoaderConfig::new(2, 0, 1, spec())
        };
        Loader::new(set.clone(), cfg).unwrap().epoch_order(4)
    };
    let (a, b, c) = (order(0), order(1), order(2));
    assert_eq!((a.len(), b.len(), c.len()), (3, 3, 3));
    let mut all: Vec<usize> = a.iter().chain(&b).chain(&c).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9);
}

#[test]
fn contiguous_shards_tile_the_batches_of_one_process_in_rank_order() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 13);
    let set = Dataset::open(dir.path(), OnBadSample::Fail).unwrap();
    let loader = |rank, world, batch| {
        let cfg = LoaderConfig {
            rank,
            world_size: world,
            contiguous: true,
            ..LoaderConfig::new(batch, 0, 5, spec())
        };
        Loader::new(set.clone(), cfg).unwrap()
    };
    let mut one = loader(0, 1, 6);
    let mut ranks: Vec<Loader> = (0..3).map(|r| loader(r, 3, 2)).collect();
    // Two epochs of two batches of 6 (13 items: one dropped per epoch).
    for _ in 0..4 {
        let whole = one.next_batch().unwrap();
        let parts: Vec<_> = ranks.iter_mut().map(|l| l.next_batch().unwrap()).collect();
        let items: Vec<usize> = parts.iter().flat_map(|b| b.items.clone()).collect();
        assert_eq!(items, whole.items);
        let video = Tensor::cat(
            &parts
                .iter()
                .map(|b| b.video.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        assert!(video.equal(&whole.video), "the same crops and offsets");
        assert!(ranks
            .iter()
            .all(|l| l.cursor().position * 3 == one.cursor().position));
    }
}

#[test]
fn bad_files_are_skipped_and_listed_or_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 8);
    std::fs::write(
        dir.path().join("broken.mp4"),
        b"\x00\x00\x00\x18ftypmp42 this is not a video",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.txt"), "a broken clip").unwrap();
    let set = Dataset::open(dir.path(), OnBadSample::Skip).unwrap();
    assert_eq!(set.len(), 9);
    let mut loader = Loader::new(set.clone(), LoaderConfig::new(4, 2, 0, spec())).unwrap();
    for _ in 0..4 {
        let b = loader.next_batch().unwrap();
        assert_eq!(b.video.size()[0], 4);
    }
    let stats = loader.stats();
    assert!(stats.skip_events >= 1);
    assert_eq!(stats.skipped.len(), 1);
    assert!(stats.skipped[0].what.ends_with("broken.mp4"), "{stats:?}");
    let cfg = LoaderConfig {
        on_bad_sample: OnBadSample::Fail,
        shuffle: false,
        ..LoaderConfig::new(3, 0, 0, spec())
    };
    let mut strict = Loader::new(set, cfg).unwrap();
    let err = (0..3)
        .find_map(|_| strict.next_batch().err())
        .expect("the broken file stops the run");
    assert!(err.to_string().contains("broken.mp4"), "{err}");
}

#[test]
fn a_link_loop_is_a_bad_sample_listed_or_refused_never_ignored() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 4);
    let looped = dir.path().join("loop.mp4");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    std::fs::write(dir.path().join("loop.txt"), "a clip that is a link loop").unwrap();
    let set = Dataset::open(dir.path(), OnBadSample::Skip).unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(set.skipped.len(), 1);
    assert!(
        set.skipped[0].what.ends_with("loop.mp4") && set.skipped[0].reason.contains("unreadable"),
        "{:?}",
        set.skipped
    );
    let err = Dataset::open(dir.path(), OnBadSample::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("loop.mp4"), "{err}");
}

#[test]
fn manifests_take_videos_latents_and_precomputed_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        assets::clip("carphone_pristine.mp4").unwrap(),
        d.join("car.mp4"),
    )
    .unwrap();
    let latents = Tensor::randn([4, 6, 2, 2], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("latents", &latents)], d.join("lat.safetensors")).unwrap();
    let (ctx, pooled) = (
        Tensor::randn([5, 16], (Kind::Float, Device::Cpu)),
        Tensor::randn([16], (Kind::Float, Device::Cpu)),
    );
    Tensor::write_safetensors(
        &[("context", &ctx), ("pooled", &pooled)],
        d.join("emb.safetensors"),
    )
    .unwrap();
    let manifest = d.join("set.jsonl");
    std::fs::write(
        &manifest,
        [
            r#"{"path": "car.mp4", "caption": "a car", "embedding": "emb.safetensors"}"#,
            r#"{"latents": "lat.safetensors", "caption": "latent clip"}"#,
            r#"not json"#,
            r#"{"path": "missing.mp4", "caption": "gone"}"#,
            r#"{"path": "car.mp4", "latents": "lat.safetensors", "caption": "both"}"#,
            "",
        ]
        .join("\n"),
    )
    .unwrap();
    let set = Dataset::open(&manifest, OnBadSample::Skip).unwrap();
    assert_eq!(set.len(), 2);
    let lines: Vec<&str> = set
        .skipped
        .iter()
        .map(|s| s.what.rsplit(':').next().unwrap())
        .collect();
    assert_eq!(lines, vec!["3", "4", "5"]);
    assert!(set.skipped[1].reason.contains("missing.mp4"));
    let err = Dataset::open(&manifest, OnBadSample::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("set.jsonl:3"), "{err}");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let video = set.items[0]
        .load(&ClipSpec::eval(4, 32, 32), &mut rng)
        .unwrap();
    assert_eq!(video.video.size(), vec![3, 4, 32, 32]);
    let e = video.embedding.unwrap();
    assert!(e.context.equal(&ctx) && e.pooled.equal(&pooled));
    assert!(matches!(set.items[1].media, Media::Latents(_)));
    let lat = set.items[1]
        .load(&ClipSpec::eval(4, 32, 32), &mut rng)
        .unwrap();
    assert!(
        lat.video.equal(&latents.narrow(1, 1, 4)),
        "centred window of 4 latent frames"
    );
}

#[test]
fn images_and_videos_mix_as_one_frame_clips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, name) in [
        "astronaut.png",
        "derived/chelsea.jpg",
        "bikes.mp4",
        "newtonscradle.gif",
    ]
    .iter()
    .enumerate()
    {
        let ext = Path::new(name).extension().unwrap().to_str().unwrap();
        std::fs::copy(assets::clip(name).unwrap(), d.join(format!("m{i}.{ext}"))).unwrap();
        std::fs::write(d.join(format!("m{i}.txt")), format!("item {i}")).unwrap();
    }
    let set = Dataset::open(d, OnBadSample::Fail).unwrap();
    let mut loader = Loader::new(
        set,
        LoaderConfig::new(4, 2, 0, ClipSpec::eval(1, 32, 32).random()),
    )
    .unwrap();
    let batch = loader.next_batch().unwrap();
    assert_eq!(batch.video.size(), vec![4, 3, 1, 32, 32]);
}

/// 6 readable and 5 unreadable clips cannot fill a batch of 8: the error says so with the
/// counts and the first unreadable file, not a count of skip events over several epochs.
#[test]
fn too_few_readable_clips_for_a_batch_say_why() {
    let dir = tempfile::tempdir().unwrap();
    shapes_folder(dir.path(), 6);
    for i in 0..5 {
        std::fs::write(dir.path().join(format!("broken-{i}.mp4")), b"not a video").unwrap();
        std::fs::write(dir.path().join(format!("broken-{i}.txt")), "a caption").unwrap();
    }
    let set = Dataset::open(dir.path(), OnBadSample::Skip).unwrap();
    assert_eq!(set.len(), 11);
    let mut loader = Loader::new(set, LoaderConfig::new(8, 2, 0, spec())).unwrap();
    let err = loader.next_batch().unwrap_err().to_string();
    for needle in [
        "one batch of 8",
        "11 item(s), 5 of them found unreadable",
        "at most 6 readable",
        "broken-",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
