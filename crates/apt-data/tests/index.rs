//! Decoding only what a clip needs: stopping after the last needed frame gives exactly the
//! frames of a full decode on every test clip and window, and the per-file index that makes it
//! possible is written by the first load, used by the next, and dropped when the file changes.

use apt_data::{
    assets, decode_frames, decode_frames_until, index, probe, ClipSpec, FrameSize, Item, Media,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLIPS: &[&str] = &[
    "bikes.mp4",
    "carphone_pristine.mp4",
    "cockatoo.mp4",
    "realshort.mp4",
    "newtonscradle.gif",
    "astronaut.png",
    "derived/chelsea.jpg",
    "derived/bikes_vp9.webm",
    "derived/bikes_vp8.mkv",
    "derived/bikes_mpeg4.avi",
    "derived/bikes_mjpeg.avi",
    "derived/bikes_cinepak.avi",
    "derived/bikes_mpeg1.mpg",
    "derived/bikes_mpeg2.mpg",
    "derived/bikes_theora.ogv",
    "derived/bikes_h264.mov",
];

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
}
