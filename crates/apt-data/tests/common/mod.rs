//! What several test files share.

/// Every test clip (under the assets' `clips/`): the containers and codecs the decoder must
/// handle, including headers that lie about frame counts and the MPEG-1/2 program streams.
pub const CLIPS: &[&str] = &[
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
