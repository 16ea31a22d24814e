//! The overlay appended to a user's ramdisk, as a second archive.
//!
//! The kernel unpacks an initramfs that is several archives one after the
//! other, each plain newc cpio or compressed, and skips zero bytes between
//! them. So labd never unpacks and repacks a user's ramdisk (whose
//! compression, owners and device nodes it would have to get right): it
//! appends the overlay as one more gzip'd newc archive. Two rules of the
//! kernel's unpacker shape the join. After a plain cpio, the next archive
//! must start at a 4-byte boundary ("broken padding" otherwise), so zeros
//! pad the user's archive to one. After a compressed archive the next one
//! may start anywhere, and nothing is put between them: `gzip -dc`, unlike
//! the kernel, stops at a zero where a gzip member should start. Whatever
//! the user's compression, the overlay is gzip, which every kernel that
//! takes a compressed initramfs has (`CONFIG_RD_GZIP`).
//!
//! A ramdisk in a U-Boot legacy image (`mkimage -T ramdisk`: a 64-byte
//! big-endian header, magic 0x27051956) keeps its header with the data
//! size, the data CRC32 and the header CRC32 recomputed; both CRCs are
//! checked first, so a damaged image is refused rather than re-signed.
//! U-Boot passes a ramdisk on without unpacking it, whatever its header's
//! compression field says, so the kernel sees the joined archives.

use super::OverlayError;

/// What a ramdisk's data is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamdiskFormat {
    /// newc cpio (`070701`, or `070702` with checksums).
    Cpio,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

/// A ramdisk with the overlay appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedRamdisk {
    pub bytes: Vec<u8>,
    /// What the user's ramdisk was (inside its U-Boot header, if any).
    pub format: RamdiskFormat,
    /// Whether it had a U-Boot legacy header, which `bytes` keeps.
    pub uboot_header: bool,
}

const UIMAGE_MAGIC: u32 = 0x2705_1956;
const UIMAGE_HEADER: usize = 64;
const IH_TYPE_RAMDISK: u8 = 3;
const IH_OS_LINUX: u8 = 5;

fn ramdisk_err(msg: impl Into<String>) -> OverlayError {
    OverlayError::Ramdisk(msg.into())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// The format of a ramdisk's data, by its magic bytes.
fn detect(data: &[u8]) -> Option<RamdiskFormat> {
    use RamdiskFormat::*;
    const MAGICS: &[(&[u8], RamdiskFormat)] = &[
        (b"070701", Cpio),
        (b"070702", Cpio),
        (&[0x1f, 0x8b], Gzip),
        (b"BZh", Bzip2),
        (&[0x5d, 0x00, 0x00], Lzma),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Xz),
        (&[0x89, b'L', b'Z', b'O', 0x00], Lzo),
        (&[0x02, 0x21, 0x4c, 0x18], Lz4),
        (&[0x28, 0xb5, 0x2f, 0xfd], Zstd),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| data.starts_with(m))
        .map(|(_, f)| *f)
}

/// `overlay_cpio_gz` (from [`super::Overlay::cpio_gz`]) appended to
/// `ramdisk`: a plain or compressed initramfs, bare or in a U-Boot legacy
/// image. The format is read from the bytes, not taken from the job, so a
/// job that says `compression: none` of a gzip'd file still gets a ramdisk
/// that boots; the result says what was found.
pub fn append_to_ramdisk(
    ramdisk: &[u8],
    overlay_cpio_gz: &[u8],
) -> Result<AppendedRamdisk, OverlayError> {
    if !overlay_cpio_gz.starts_with(&[0x1f, 0x8b]) {
        return Err(ramdisk_err(
            "the overlay to append must be a gzip'd cpio archive",
        ));
    }
    if ramdisk.len() >= 4 && be32(ramdisk, 0) == UIMAGE_MAGIC {
        return append_in_uimage(ramdisk, overlay_cpio_gz);
    }
    let (bytes, format) = join(ramdisk, overlay_cpio_gz)?;
    Ok(AppendedRamdisk {
        bytes,
        format,
        uboot_header: false,
    })
}

fn join(data: &[u8], overlay: &[u8]) -> Result<(Vec<u8>, RamdiskFormat), OverlayError> {
    let format = detect(data).ok_or_else(|| {
        ramdisk_err(
            "not a newc cpio archive nor a compressed one the kernel unpacks (gzip, bzip2, lzma, xz, lzo, lz4, zstd)",
        )
    })?;
    let mut out = Vec::with_capacity(data.len() + overlay.len() + 3);
    out.extend_from_slice(data);
    if format == RamdiskFormat::Cpio {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out.extend_from_slice(overlay);
    Ok((out, format))
}

/// Checks a U-Boot legacy ramdisk image (magic, both CRCs, the ramdisk
/// type) and returns its header and data. `Ok(None)` when `image` does not
/// start with the legacy magic at all.
/// A legacy image's header and its data.
type Split<'a> = ([u8; UIMAGE_HEADER], &'a [u8]);

fn split_uimage(image: &[u8]) -> Result<Option<Split<'_>>, OverlayError> {
    if image.len() < 4 || be32(image, 0) != UIMAGE_MAGIC {
        return Ok(None);
    }
    if image.len() < UIMAGE_HEADER {
        return Err(ramdisk_err("a U-Boot image shorter than its header"));
    }
    let mut header = [0u8; UIMAGE_HEADER];
    header.copy_from_slice(&image[..UIMAGE_HEADER]);
    let stored_hcrc = be32(&header, 4);
    header[4..8].fill(0);
    if crc32(&header) != stored_hcrc {
        return Err(ramdisk_err("the U-Boot image's header CRC is wrong"));
    }
    header[4..8].copy_from_slice(&stored_hcrc.to_be_bytes());
    if header[30] != IH_TYPE_RAMDISK {
        return Err(ramdisk_err(format!(
            "the U-Boot image is of type {}, not a ramdisk (3)",
            header[30]
        )));
    }
    let size = be32(&header, 12) as usize;
    let data = image
        .get(UIMAGE_HEADER..UIMAGE_HEADER + size)
        .ok_or_else(|| ramdisk_err("the U-Boot image is shorter than its header says"))?;
    if crc32(data) != be32(&header, 24) {
        return Err(ramdisk_err("the U-Boot image's data CRC is wrong"));
    }
    Ok(Some((header, data)))
}

/// Whether `image` is a sound U-Boot legacy ramdisk image: `Ok(true)` if
/// it is, `Ok(false)` if it has no legacy header, an error naming what is
/// wrong with a damaged one.
pub fn check_uimage_ramdisk(image: &[u8]) -> Result<bool, OverlayError> {
    Ok(split_uimage(image)?.is_some())
}

/// `data` in a U-Boot legacy ramdisk image, as `mkimage -A <arch> -O linux
/// -T ramdisk -C none -n <name> -d data` makes it: U-Boot then finds the
/// ramdisk's size in the header rather than on the boot command.
pub fn wrap_in_uimage(data: &[u8], arch: u8, name: &str) -> Result<Vec<u8>, OverlayError> {
    let size = u32::try_from(data.len())
        .map_err(|_| ramdisk_err("a ramdisk over 4 GiB is too large for a U-Boot image"))?;
    let mut h = [0u8; UIMAGE_HEADER];
    h[0..4].copy_from_slice(&UIMAGE_MAGIC.to_be_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    h[8..12].copy_from_slice(&now.to_be_bytes());
    h[12..16].copy_from_slice(&size.to_be_bytes());
    h[24..28].copy_from_slice(&crc32(data).to_be_bytes());
    h[28] = IH_OS_LINUX;
    h[29] = arch;
    h[30] = IH_TYPE_RAMDISK;
    h[31] = 0; // IH_COMP_NONE: U-Boot hands the data on as it is.
    let n = name.as_bytes();
    let n = &n[..n.len().min(31)];
    h[32..32 + n.len()].copy_from_slice(n);
    let hcrc = crc32(&h);
    h[4..8].copy_from_slice(&hcrc.to_be_bytes());
    let mut out = Vec::with_capacity(UIMAGE_HEADER + data.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    Ok(out)
}

fn append_in_uimage(image: &[u8], overlay: &[u8]) -> Result<AppendedRamdisk, OverlayError> {
    let (mut header, data) =
        split_uimage(image)?.ok_or_else(|| ramdisk_err("not a U-Boot legacy image"))?;
    let (joined, format) = join(data, overlay)?;
    let new_size = u32::try_from(joined.len()).map_err(|_| {
        ramdisk_err("the ramdisk would be over 4 GiB, too large for a U-Boot image")
    })?;
    // Bytes past the header's size are not the image's: U-Boot ignores
    // them, and they are not kept.
    header[12..16].copy_from_slice(&new_size.to_be_bytes());
    header[24..28].copy_from_slice(&crc32(&joined).to_be_bytes());
    header[4..8].fill(0);
    let hcrc = crc32(&header);
    header[4..8].copy_from_slice(&hcrc.to_be_bytes());
    let mut bytes = Vec::with_capacity(UIMAGE_HEADER + joined.len());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&joined);
    Ok(AppendedRamdisk {
        bytes,
        format,
        uboot_header: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy header as `mkimage -A arm64 -O linux -T ramdisk -C none`
    /// writes it.
    fn uimage(data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; UIMAGE_HEADER];
        h[0..4].copy_from_slice(&UIMAGE_MAGIC.to_be_bytes());
        h[8..12].copy_from_slice(&1_700_000_000u32.to_be_bytes());
        h[12..16].copy_from_slice(&(data.len() as u32).to_be_bytes());
        h[24..28].copy_from_slice(&crc32(data).to_be_bytes());
        h[28] = 5; // Linux
        h[29] = 22; // arm64
        h[30] = IH_TYPE_RAMDISK;
        h[32..39].copy_from_slice(b"initrd\0");
        let hcrc = crc32(&h);
        h[4..8].copy_from_slice(&hcrc.to_be_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out
    }

    const GZ: &[u8] = &[
        0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn plain_cpio_is_padded_to_four_bytes() {
        let rd = b"070701xxxxx"; // 11 bytes
        let a = append_to_ramdisk(rd, GZ).unwrap();
        assert_eq!(a.format, RamdiskFormat::Cpio);
        assert_eq!(&a.bytes[..12], b"070701xxxxx\0");
        assert_eq!(&a.bytes[12..], GZ);
        // A compressed one is followed by the overlay at once.
        let a = append_to_ramdisk(&GZ[..19], GZ).unwrap();
        assert_eq!(a.format, RamdiskFormat::Gzip);
        assert_eq!(a.bytes.len(), 19 + GZ.len());
    }

    #[test]
    fn uimage_header_is_rewritten() {
        let rd = uimage(GZ);
        let a = append_to_ramdisk(&rd, GZ).unwrap();
        assert!(a.uboot_header);
        let h = &a.bytes[..UIMAGE_HEADER];
        let data = &a.bytes[UIMAGE_HEADER..];
        assert_eq!(be32(h, 12) as usize, data.len());
        assert_eq!(be32(h, 24), crc32(data));
        let mut z = h.to_vec();
        z[4..8].fill(0);
        assert_eq!(be32(h, 4), crc32(&z));
        // Everything else is the user's header.
        assert_eq!(h[28..64], rd[28..64]);
        assert_eq!(h[8..12], rd[8..12]);
    }

    #[test]
    fn a_wrapped_ramdisk_is_what_mkimage_makes_and_passes_the_checks() {
        let w = wrap_in_uimage(GZ, 22, "initrd").unwrap();
        assert!(check_uimage_ramdisk(&w).unwrap());
        assert!(!check_uimage_ramdisk(GZ).unwrap());
        // Everything but the time is mkimage's: the same bytes as the
        // tests' own header, once the times agree.
        let mut want = uimage(GZ);
        want[8..12].copy_from_slice(&w[8..12]);
        want[4..8].fill(0);
        let hcrc = crc32(&want[..UIMAGE_HEADER]);
        want[4..8].copy_from_slice(&hcrc.to_be_bytes());
        assert_eq!(w, want);
        let mut bad = w.clone();
        bad[70] ^= 1;
        assert!(check_uimage_ramdisk(&bad).is_err());
    }

    #[test]
    fn refusals() {
        assert!(append_to_ramdisk(b"garbage", GZ).is_err());
        assert!(append_to_ramdisk(b"070701", b"070701").is_err());
        let mut bad = uimage(GZ);
        bad[70] ^= 1;
        assert!(append_to_ramdisk(&bad, GZ)
            .unwrap_err()
            .to_string()
            .contains("data CRC"));
        let mut bad = uimage(GZ);
        bad[40] ^= 1;
        assert!(append_to_ramdisk(&bad, GZ)
            .unwrap_err()
            .to_string()
            .contains("header CRC"));
        let short = uimage(GZ);
        assert!(append_to_ramdisk(&short[..70], GZ).is_err());
    }
}
