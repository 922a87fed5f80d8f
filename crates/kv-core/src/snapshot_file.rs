//! The layout of a snapshot file (version 2), shared by the node that writes and reads
//! snapshots and backups, and by kvctl, which checks a backup it downloads.
//!
//! `MAGIC | version u8 | meta_len u32 LE | meta | data | data_len u64 LE | sha256 | END`
//!
//! `meta` is the postcard encoding of openraft's snapshot meta; `data` is the encoding
//! snapshot chunks carry on the wire, so a file is sent as it lies. The SHA-256 covers
//! every byte before it, and the trailer comes last so a writer can stream the data.

/// The first bytes of a version-2 snapshot file.
pub const MAGIC: &[u8; 8] = b"QKVSNAP\0";
/// The last bytes of a complete snapshot file.
pub const END: &[u8; 8] = b"QKVSEND\0";
/// The layout version this code writes.
pub const VERSION: u8 = 2;
/// Bytes before the meta: magic, version, meta length.
pub const HEAD_LEN: u64 = 8 + 1 + 4;
/// Bytes after the data: data length, SHA-256, end marker.
pub const TRAILER_LEN: u64 = 8 + 32 + 8;

/// The end of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Bytes of data between the meta and the trailer.
    pub data_len: u64,
    /// SHA-256 of every byte of the file before it.
    pub sha256: [u8; 32],
}

impl Trailer {
    /// Reads the last [`TRAILER_LEN`] bytes of a file; `None` if they are not a trailer
    /// (a file cut short, or not a snapshot).
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let raw: &[u8; TRAILER_LEN as usize] = raw.try_into().ok()?;
        let (len, rest) = raw.split_first_chunk::<8>()?;
        let (sha256, end) = rest.split_first_chunk::<32>()?;
        (end == END).then(|| Self {
            data_len: u64::from_le_bytes(*len),
            sha256: *sha256,
        })
    }

    /// The data length as it is written and hashed, before the hash.
    pub fn len_bytes(data_len: u64) -> [u8; 8] {
        data_len.to_le_bytes()
    }
}

/// Parses the fixed head of a version-2 file: the meta's length, or `None` if `raw`
/// does not start with [`MAGIC`]. An unknown version is an error naming it.
pub fn parse_head(raw: &[u8; HEAD_LEN as usize]) -> Option<Result<u32, u8>> {
    let (magic, rest) = raw.split_first_chunk::<8>()?;
    if magic != MAGIC {
        return None;
    }
    let (version, len) = rest.split_first()?;
    if *version != VERSION {
        return Some(Err(*version));
    }
    let len: [u8; 4] = len.try_into().ok()?;
    Some(Ok(u32::from_le_bytes(len)))
}

/// The fixed head of a version-2 file whose meta is `meta_len` bytes.
pub fn head(meta_len: u32) -> [u8; HEAD_LEN as usize] {
    let mut h = [0; HEAD_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9..].copy_from_slice(&meta_len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_round_trips_and_other_bytes_are_no_head() {
        assert_eq!(parse_head(&head(77)), Some(Ok(77)));
        let mut other = head(77);
        other[8] = 3;
        assert_eq!(parse_head(&other), Some(Err(3)));
        other[0] = b'x';
        assert_eq!(parse_head(&other), None);
    }

    #[test]
    fn a_trailer_needs_its_end_marker() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&Trailer::len_bytes(5));
        raw.extend_from_slice(&[7; 32]);
        raw.extend_from_slice(END);
        let t = Trailer::parse(&raw).expect("a trailer");
        assert_eq!((t.data_len, t.sha256), (5, [7; 32]));
        raw[47] ^= 1;
        assert_eq!(Trailer::parse(&raw), None);
        assert_eq!(Trailer::parse(&raw[1..]), None);
    }
}
