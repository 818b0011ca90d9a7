//! Decoding only what a clip needs: stopping after the last needed frame gives exactly the
//! frames of a full decode on every test clip and window, and the per-file index that makes it
//! possible is written by the first load, used by the next, and dropped when the file changes.

mod common;

use apt_data::seek::{decode_window, verified_index};
use apt_data::{
    assets, decode, decode_frames, decode_frames_until, index, probe, ClipSpec, FrameSize, Item,
    Media,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::CLIPS;

#[test]
fn stopping_after_the_last_needed_frame_keeps_exactly_the_frames_of_a_full_decode() {
    let size = FrameSize::Cover {
        width: 48,
        height: 32,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for name in CLIPS {
        let path = assets::clip(name).unwrap();
        let total = probe(&path).unwrap().frames;
        // The first frames, the last ones, and random windows in between.
        let len = 8.min(total);
        let mut starts = vec![0, total - len];
        starts.extend((0..3).map(|_| rng.gen_range(0..=total - len)));
        for start in starts {
            let wanted = |i: usize| (start..start + len).contains(&i) && i % 2 == start % 2;
            let last = start + len - 1;
            let full = decode_frames(&path, size, wanted).unwrap();
            let until = decode_frames_until(&path, size, wanted, last).unwrap();
            assert_eq!(until.indices, full.indices, "{name} from {start}");
            assert!(
                until.data == full.data,
                "{name} from {start}: pixels differ"
            );
            assert!(full.complete);
            assert!(
                !until.complete,
                "{name} from {start}: stopped after frame {last} of {total}"
            );
            assert_eq!(until.info.frames, last + 1, "{name} from {start}");
        }
    }
}

#[test]
fn the_first_load_indexes_the_file_the_next_uses_it_and_a_change_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("bikes.mp4");
    std::fs::copy(assets::clip("bikes.mp4").unwrap(), &video).unwrap();
    let item = Item {
        media: Media::Video(video.clone()),
        caption: "bikes".into(),
        embedding: None,
    };
    let spec = ClipSpec::eval(8, 32, 32).random();
    assert_eq!(index::lookup(&video), None);
    let first = item.load(&spec, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let entry = index::lookup(&video).expect("indexed by the first load");
    assert_eq!((entry.frames, entry.fps), (250, 25.0));
    assert!(dir
        .path()
        .join(index::INDEX_DIR)
        .join("bikes.mp4.json")
        .is_file());
    // The indexed load (decoding stops after the clip) cuts the same clip from the same draw.
    let second = item.load(&spec, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert!(second.video.equal(&first.video));
    // Rewriting the file (new modification time, here a shorter file) invalidates the entry.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(assets::clip("realshort.mp4").unwrap(), &video).unwrap();
    assert_eq!(index::lookup(&video), None);
    item.load(&spec, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let entry = index::lookup(&video).expect("re-indexed");
    assert_eq!(entry.frames, probe(&video).unwrap().frames);
    assert_eq!(entry.version, index::INDEX_VERSION);
    // An entry an older apt-rs wrote (no version: 1) is rebuilt, not trusted.
    let file = dir.path().join(index::INDEX_DIR).join("bikes.mp4.json");
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("version");
    std::fs::write(&file, old.to_string()).unwrap();
    assert_eq!(index::lookup(&video), None);
}

#[test]
fn seeking_to_the_key_frame_before_a_window_gives_exactly_the_frames_of_a_full_decode() {
    let size = FrameSize::Cover {
        width: 48,
        height: 32,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut seeked = Vec::new();
    for name in CLIPS {
        let path = assets::clip(name).unwrap();
        let full = decode(&path, size).unwrap();
        let total = full.info.frames;
        let Some(index) = verified_index(&path, size, &full).unwrap() else {
            seeked.push(format!("{name}: no seek index"));
            continue;
        };
        let index = &index;
        assert_eq!(index.pts.len(), total, "{name}");
        let len = 8.min(total);
        let mut starts = vec![total - len, total / 2];
        starts.extend((0..6).map(|_| rng.gen_range(0..=total - len)));
        let mut used = 0;
        for &start in &starts {
            let keep = |i: usize| i % 3 != 1;
            let window = (start, start + len - 1);
            let Some(frames) = decode_window(&path, size, keep, window, index).unwrap() else {
                continue;
            };
            used += 1;
            let expected: Vec<usize> = (window.0..=window.1).filter(|&i| keep(i)).collect();
            assert_eq!(frames.indices, expected, "{name} {window:?}");
            for (k, &i) in frames.indices.iter().enumerate() {
                assert!(
                    frames.frame(k) == full.frame(i),
                    "{name} {window:?}: frame {i} differs from a full decode"
                );
            }
        }
        seeked.push(format!(
            "{name}: {used}/{} windows by seeking (entry points {:?} of key frames {:?})",
            starts.len(),
            index.key_frames,
            full.seek_index.as_ref().map(|i| &i.key_frames)
        ));
    }
    eprintln!("{}", seeked.join("\n"));
    for name in ["bikes.mp4", "derived/bikes_vp9.webm"] {
        let line = seeked.iter().find(|l| l.starts_with(name)).unwrap();
        assert!(!line.contains(" 0/"), "seeking never used: {line}");
    }
}

#[test]
fn key_frames_are_entry_points_once_the_decoder_has_seen_the_start_of_the_file() {
    // cockatoo.mp4 (x264, 4:4:4) has three IDR frames, but after a plain seek the second and
    // third decode with grey blocks (`ffmpeg -ss 3.8` does the same): FFmpeg enables its
    // workarounds for old x264 bugs from the encoder-version SEI in the first frame, which no
    // later frame repeats. Decoding the first packet before seeking makes them exact.
    let size = FrameSize::Cover {
        width: 48,
        height: 32,
    };
    let path = assets::clip("cockatoo.mp4").unwrap();
    let full = decode(&path, size).unwrap();
    let raw = full.seek_index.clone().unwrap();
    assert_eq!(raw.key_frames, [0, 76, 145]);
    let verified = verified_index(&path, size, &full).unwrap().unwrap();
    assert_eq!(
        verified.key_frames,
        [0, 76, 145],
        "every IDR is an entry point"
    );
    let window = decode_window(&path, size, |_| true, (150, 153), &verified)
        .unwrap()
        .expect("seeks to frame 145");
    assert_eq!(window.indices, [150, 151, 152, 153]);
    for k in 0..4 {
        assert!(window.frame(k) == full.frame(150 + k), "frame {}", 150 + k);
    }
}

#[test]
fn key_frames_that_are_not_entry_points_are_left_out_of_the_index() {
    // bikes_mpeg2.mpg (open GOPs) flags every I frame as key, but decoding from one after a
    // seek does not reproduce its group: only the start of the file is an entry point.
    let size = FrameSize::Cover {
        width: 48,
        height: 32,
    };
    let path = assets::clip("derived/bikes_mpeg2.mpg").unwrap();
    let full = decode(&path, size).unwrap();
    let raw = full.seek_index.clone().unwrap();
    assert_eq!(raw.key_frames, [0, 12, 24, 36, 48]);
    let wrong = decode_window(&path, size, |_| true, (26, 29), &raw).unwrap();
    assert!(
        wrong
            .is_none_or(|w| w.indices != [26, 27, 28, 29]
                || (0..4).any(|k| w.frame(k) != full.frame(26 + k))),
        "the raw index happens to work now: drop this test's premise"
    );
    let verified = verified_index(&path, size, &full).unwrap().unwrap();
    assert_eq!(verified.key_frames, [0], "only the start is an entry point");
    assert!(decode_window(&path, size, |_| true, (26, 29), &verified)
        .unwrap()
        .is_none());
}
