//! Request bodies compressed for metered links (`compression = "gzip" | "zstd"`). Pure:
//! bytes in, bytes out. The signature is computed over what this returns, the bytes as
//! sent, so a receiver verifies the raw body before it decodes it.

use std::io::Write;

pub use crate::config::Compression;

/// zstd's default level: most of the gain for little CPU on a robot's core.
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// The `Content-Encoding` it sends.
    pub fn encoding(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// `body` encoded as `how`. Compressing to memory cannot fail short of running out of it.
pub fn compress(how: Compression, body: &[u8]) -> Vec<u8> {
    match how {
        Compression::Gzip => {
            let mut e =
                flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), flate2::Compression::default());
            let _ = e.write_all(body);
            e.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn both_encodings_round_trip_with_their_own_decoders() {
        let body =
            br#"{"id":"0193","type":"mission.completed","data":{"station":"dock-4","status":"completed"}}"#.repeat(8);
        let gz = compress(Compression::Gzip, &body);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
        assert!(gz.len() < body.len() / 4, "{} of {}", gz.len(), body.len());
        let zs = compress(Compression::Zstd, &body);
        assert_eq!(zstd::decode_all(&zs[..]).unwrap(), body);
        assert!(zs.len() < body.len() / 4);
    }
}
