//! What an attachment's bytes are, and what is done to an image before anyone sees it:
//! the type read from the first bytes (magic numbers, not the client's word), the pixel
//! count read from the header before anything is decoded, metadata (EXIF with its GPS
//! position, XMP, IPTC, comments) removed without re-encoding, and a JPEG thumbnail.
//!
//! No I/O: message-service's attachment checks (`attachments`) feed it bytes, and
//! [`MediaBudget`] runs the work on a blocking thread within its CPU share.

use std::io::Cursor;

use bytes::Bytes;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use img_parts::jpeg::{markers, Jpeg, JpegSegment};
use img_parts::png::Png;
use img_parts::webp::WebP;
use img_parts::ImageEXIF;

/// Image and audio work of one instance: one job at a time, and at most `share` of one core
/// over time (a job that took 20 ms at a share of 0.5 lets the next start 40 ms after it
/// started). Chat comes first: past the share photos wait, messages do not.
#[derive(Debug)]
pub(crate) struct MediaBudget {
    next_start: tokio::sync::Mutex<tokio::time::Instant>,
    share: f64,
}

impl MediaBudget {
    /// A budget of `ms_per_sec` milliseconds of work per second (at most 1000).
    pub(crate) fn new(ms_per_sec: u64) -> MediaBudget {
        MediaBudget {
            next_start: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            share: (ms_per_sec.clamp(1, 1000) as f64) / 1000.0,
        }
    }

    /// Runs `job` on a blocking thread when the budget allows; `None` if it panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let mut next = self.next_start.lock().await;
        tokio::time::sleep_until(*next).await;
        let started = tokio::time::Instant::now();
        let out = tokio::task::spawn_blocking(job).await.ok();
        *next = started + started.elapsed().div_f64(self.share);
        out
    }
}

/// How many leading bytes [`sniff`] needs.
pub(crate) const SNIFF_BYTES: u64 = 64;

/// The longer side of a thumbnail, in pixels.
pub(crate) const THUMBNAIL_PX: u32 = 320;

/// The type the bytes are, from their first [`SNIFF_BYTES`]; `None` for anything not
/// recognised (stored and served as `application/octet-stream`).
pub(crate) fn sniff(head: &[u8]) -> Option<&'static str> {
    let at = |i: usize, pat: &[u8]| head.get(i..i + pat.len()) == Some(pat);
    Some(match head {
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => "image/png",
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => "image/gif",
        _ if at(0, b"RIFF") && at(8, b"WEBP") => "image/webp",
        _ if at(0, b"RIFF") && at(8, b"WAVE") => "audio/wav",
        _ if at(0, b"%PDF-") => "application/pdf",
        _ if at(0, b"OggS") => "audio/ogg",
        _ if at(0, b"fLaC") => "audio/flac",
        _ if at(0, b"ID3") => "audio/mpeg",
        // MPEG audio frame sync: layer III (MP3) or ADTS AAC.
        [0xFF, b, ..] if b & 0xE6 == 0xE2 => "audio/mpeg",
        [0xFF, b, ..] if b & 0xF6 == 0xF0 => "audio/aac",
        // EBML: WebM (its doctype is in the header) or another Matroska file.
        [0x1A, 0x45, 0xDF, 0xA3, ..] if head.windows(4).any(|w| w == b"webm") => "video/webm",
        [0x1A, 0x45, 0xDF, 0xA3, ..] => "video/x-matroska",
        _ if at(4, b"ftyp") => match head.get(8..12) {
            Some(b"M4A " | b"M4B ") => "audio/mp4",
            Some(b"qt  ") => "video/quicktime",
            Some(b"heic" | b"heix" | b"mif1" | b"msf1") => "image/heic",
            Some(b"avif") => "image/avif",
            _ => "video/mp4",
        },
        _ => return None,
    })
}

/// The type to store for a declared type and what the bytes are: images, audio, video and
/// PDF must be what they say (a container shared by audio and video may be declared
/// either way: a voice note recorded as `audio/webm` is a WebM file); anything else is
/// stored as `application/octet-stream` and served as a download. `Err`: the bytes are not
/// of the declared type.
pub(crate) fn stored_type(declared: &str, sniffed: Option<&'static str>) -> Result<String, ()> {
    let declared = normalise(declared);
    let checked = ["image/", "audio/", "video/"]
        .iter()
        .any(|p| declared.starts_with(p))
        || declared == "application/pdf";
    if !checked {
        return Ok("application/octet-stream".into());
    }
    let Some(found) = sniffed else {
        return Err(());
    };
    if declared == found {
        return Ok(declared);
    }
    // Containers that carry audio or video: the declared kind is kept.
    let container = |t: &str| match t.split_once('/').map(|(_, sub)| sub) {
        Some("webm" | "x-matroska") => Some("matroska"),
        Some("mp4" | "quicktime") => Some("mp4"),
        Some("ogg") => Some("ogg"),
        _ => None,
    };
    let av = |t: &str| t.starts_with("audio/") || t.starts_with("video/");
    match (container(&declared), container(found)) {
        (Some(a), Some(b)) if a == b && av(&declared) => Ok(declared),
        _ => Err(()),
    }
}

/// A declared type in its canonical form: lower case, no parameters, common aliases
/// (`image/jpg`, `audio/mp3`, `audio/x-m4a`, …) mapped to their registered names.
pub(crate) fn normalise(t: &str) -> String {
    let t = t
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match t.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "audio/mp3" | "audio/x-mp3" | "audio/mpeg3" => "audio/mpeg".into(),
        "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "audio/wav".into(),
        "audio/x-m4a" | "audio/m4a" | "audio/aacp" => "audio/mp4".into(),
        "audio/x-flac" => "audio/flac".into(),
        "audio/x-aac" => "audio/aac".into(),
        "application/ogg" => "audio/ogg".into(),
        _ => t,
    }
}

/// Whether the image formats this module processes include `t`.
pub(crate) fn is_processed_image(t: &str) -> bool {
    matches!(t, "image/jpeg" | "image/png" | "image/webp" | "image/gif")
}

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error("the image is {width}×{height} pixels, more than the {max} allowed")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("the image cannot be read: {0}")]
    Unreadable(String),
}

/// An image made safe to serve.
#[derive(Debug)]
pub(crate) struct CleanImage {
    /// The bytes to store: the original without its metadata (orientation kept).
    pub(crate) bytes: Bytes,
    /// As displayed (after orientation).
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// A JPEG of at most [`THUMBNAIL_PX`] on its longer side.
    pub(crate) thumbnail: Vec<u8>,
}

/// Checks the pixel count from the header (nothing is decoded before that), strips the
/// metadata, and makes the thumbnail.
pub(crate) fn clean_image(
    data: Bytes,
    kind: &str,
    max_pixels: u64,
) -> Result<CleanImage, ImageError> {
    let unreadable = |e: image::ImageError| ImageError::Unreadable(e.to_string());
    let reader = || {
        ImageReader::new(Cursor::new(&data[..]))
            .with_guessed_format()
            .map_err(|e| ImageError::Unreadable(e.to_string()))
    };
    let (w, h) = reader()?.into_dimensions().map_err(unreadable)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ImageError::TooManyPixels {
            width: w,
            height: h,
            max: max_pixels,
        });
    }
    let mut r = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Decoded RGBA plus a margin: what the pixel count allows, no more.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    r.limits(limits);
    let mut decoder = r.into_decoder().map_err(unreadable)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    // Smaller images are not blown up: the thumbnail is the image itself, re-encoded.
    let thumb = match width.max(height) > THUMBNAIL_PX {
        true => img.thumbnail(THUMBNAIL_PX, THUMBNAIL_PX).into_rgb8(),
        false => img.to_rgb8(),
    };
    let mut thumbnail = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut thumbnail, 80)
        .encode_image(&thumb)
        .map_err(unreadable)?;
    let bytes = strip_metadata(data, kind, orientation.to_exif())?;
    Ok(CleanImage {
        bytes,
        width,
        height,
        thumbnail,
    })
}

/// The image without EXIF, XMP, IPTC and comments, its pixels untouched. An orientation
/// other than "as stored" is written back as the only EXIF field, so the photo still
/// shows the right way up.
fn strip_metadata(data: Bytes, kind: &str, orientation: u8) -> Result<Bytes, ImageError> {
    let bad = |e: img_parts::Error| ImageError::Unreadable(e.to_string());
    let exif = (orientation > 1).then(|| orientation_exif(orientation));
    Ok(match kind {
        "image/jpeg" => {
            let mut jpeg = Jpeg::from_bytes(data).map_err(bad)?;
            jpeg.segments_mut()
                .retain(|s| !matches!(s.marker(), markers::APP1 | markers::APP13 | markers::COM));
            if let Some(tiff) = exif {
                let mut contents = b"Exif\0\0".to_vec();
                contents.extend_from_slice(&tiff);
                // After JFIF's APP0 when there is one: readers expect it first.
                let at =
                    usize::from(jpeg.segments().first().map(|s| s.marker()) == Some(markers::APP0));
                jpeg.segments_mut().insert(
                    at,
                    JpegSegment::new_with_contents(markers::APP1, contents.into()),
                );
            }
            jpeg.encoder().bytes()
        }
        "image/png" => {
            let mut png = Png::from_bytes(data).map_err(bad)?;
            png.chunks_mut()
                .retain(|c| !matches!(&c.kind(), b"eXIf" | b"tEXt" | b"iTXt" | b"zTXt" | b"tIME"));
            if let Some(tiff) = exif {
                png.set_exif(Some(tiff.into()));
            }
            png.encoder().bytes()
        }
        "image/webp" => {
            let mut webp = WebP::from_bytes(data).map_err(bad)?;
            webp.remove_chunks_by_id(*b"XMP ");
            webp.set_exif(exif.map(Bytes::from));
            webp.encoder().bytes()
        }
        // GIF carries no EXIF; its comment extensions are left (no location there).
        _ => data,
    })
}

/// An audio file's length in milliseconds, read by demuxing (no decoding): from the
/// container's frame count when it has one, else from the last packet's end (Chrome's WebM
/// recordings carry no duration). `None` when the container is not one of WebM/Matroska,
/// Ogg, MP4/M4A, MP3, WAV or FLAC, or cannot be read.
pub(crate) fn audio_duration_ms(data: Bytes) -> Option<i64> {
    use symphonia::core::formats::FormatOptions;
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;
    use symphonia::core::probe::Hint;
    let mss = MediaSourceStream::new(Box::new(Cursor::new(data)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .ok()?;
    let mut format = probed.format;
    let track = format.default_track()?;
    let (id, params) = (track.id, track.codec_params.clone());
    let ms = |ts: u64, tb: symphonia::core::units::TimeBase| {
        // A zero time base would make the library assert.
        (tb.numer > 0 && tb.denom > 0).then(|| {
            let t = tb.calc_time(ts);
            i64::try_from(t.seconds).unwrap_or(i64::MAX / 2000) * 1000
                + (t.frac * 1000.0).round() as i64
        })
    };
    if let (Some(n), Some(tb)) = (params.n_frames, params.time_base) {
        if n > 0 {
            return ms(n, tb);
        }
    }
    if let (Some(n), Some(rate)) = (params.n_frames, params.sample_rate) {
        if n > 0 && rate > 0 {
            return i64::try_from(n.saturating_mul(1000) / u64::from(rate)).ok();
        }
    }
    let tb = params.time_base?;
    let mut end = 0u64;
    while let Ok(p) = format.next_packet() {
        if p.track_id() == id {
            end = end.max(p.ts().saturating_add(p.dur()));
        }
    }
    ms(end, tb).filter(|d| *d > 0)
}

/// A TIFF structure holding one field, Orientation (0x0112) = `o`: big-endian header,
/// one IFD with one SHORT entry, no next IFD.
fn orientation_exif(o: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(26);
    t.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x0112u16.to_be_bytes());
    t.extend_from_slice(&3u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&[0, o, 0, 0]);
    t.extend_from_slice(&0u32.to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"%PDF-1.7"), Some("application/pdf"));
        assert_eq!(sniff(b"\0\0\0\x20ftypM4A \0\0"), Some("audio/mp4"));
        assert_eq!(
            sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x82\x84webm"),
            Some("video/webm")
        );
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn declared_types_must_match_the_bytes() {
        assert_eq!(
            stored_type("image/png", Some("image/png")).unwrap(),
            "image/png"
        );
        assert_eq!(
            stored_type("image/JPG", Some("image/jpeg")).unwrap(),
            "image/jpeg"
        );
        assert!(stored_type("image/png", Some("image/jpeg")).is_err());
        assert!(stored_type("image/png", None).is_err());
        assert!(stored_type("application/pdf", Some("image/png")).is_err());
        // A voice note recorded as WebM audio is a WebM file.
        assert_eq!(
            stored_type("audio/webm", Some("video/webm")).unwrap(),
            "audio/webm"
        );
        assert!(stored_type("audio/webm", Some("video/mp4")).is_err());
        // Not checked, not trusted: a download.
        assert_eq!(
            stored_type("text/html", Some("image/png")).unwrap(),
            "application/octet-stream"
        );
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn metadata_goes_and_the_pixels_stay() {
        let mut data = jpeg(640, 480);
        // An APP1 EXIF segment with a marker where the GPS block would be.
        let secret = b"Exif\0\0MM\0\x2a\0\0\0\x08GPS-SECRET-LOCATION";
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&u16::try_from(secret.len() + 2).unwrap().to_be_bytes());
        seg.extend_from_slice(secret);
        data.splice(2..2, seg);
        let clean = clean_image(Bytes::from(data), "image/jpeg", 50_000_000).unwrap();
        assert!(!clean.bytes.windows(10).any(|w| w == b"GPS-SECRET"));
        assert_eq!((clean.width, clean.height), (640, 480));
        let t = image::load_from_memory(&clean.thumbnail).unwrap();
        assert_eq!((t.width(), t.height()), (320, 240));
        let small = clean_image(Bytes::from(jpeg(200, 100)), "image/jpeg", 50_000_000).unwrap();
        let t = image::load_from_memory(&small.thumbnail).unwrap();
        assert_eq!((t.width(), t.height()), (200, 100), "not enlarged");
        assert!(image::load_from_memory(&clean.bytes).is_ok());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn a_voice_note_has_a_length() {
        // 1.5 s of 8 kHz, 16-bit mono PCM in a WAV container.
        let samples = 12_000u32;
        let mut wav = b"RIFF".to_vec();
        wav.extend_from_slice(&(36 + samples * 2).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&16000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&(samples * 2).to_le_bytes());
        wav.resize(wav.len() + samples as usize * 2, 0);
        assert_eq!(audio_duration_ms(Bytes::from(wav)), Some(1500));
        assert_eq!(
            audio_duration_ms(Bytes::from_static(b"OggS not really")),
            None
        );
    }

    #[test]
    fn a_bomb_is_refused_before_decoding() {
        // A PNG header claiming 100,000 × 100,000 pixels.
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0d".to_vec();
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        // The header is read up to the first image data.
        png.extend_from_slice(b"\0\0\0\0IDAT");
        png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
        let e = clean_image(Bytes::from(png), "image/png", 50_000_000).unwrap_err();
        assert!(matches!(e, ImageError::TooManyPixels { .. }), "{e}");
    }
}
