//! The metadata record of an instance: everything the archive needs to answer metadata and
//! `includefield=all` queries, and to serve frames, without touching the object's bytes.
//!
//! It holds the indexed attributes (decoded), where Pixel Data and every frame are in the
//! object, and the data set's header — the bytes up to Pixel Data in the object's own transfer
//! syntax — with large top-level values (at least [`BULK_VALUE_BYTES_MIN`]) emptied and listed
//! as bulk-data references (object offset and length) instead. Stored zstd-compressed in the
//! metadata namespace under the SOP Instance UID; the byte layout is in `docs/format.md`
//! ("Metadata records").
//!
//! A record names the object version it describes (`object_seq`): after a crash between the
//! object's commit and its metadata's, a stale or missing record is detected and re-derived.

use super::explicit_le::PixelDataAt;
use super::frames::FrameRange;
use super::Tag;
use crate::index::attrs::InstanceAttrs;

pub const METADATA_MAGIC: [u8; 4] = *b"KVMD";
pub const METADATA_FORMAT_VERSION: u16 = 1;
pub use super::explicit_le::BULK_VALUE_BYTES_MIN;
/// Largest decompressed record accepted when reading (a header is bounded by the extractor's
/// buffer limit; frames by the frame-map limits).
pub const METADATA_BYTES_MAX: usize = 256 << 20;
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    // One zstd context per thread, reused: creating one per record cost ~3 % of a C-STORE's
    // CPU time (perf, benches/README.md).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A value left in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRef {
    pub tag: Tag,
    pub vr: [u8; 2],
    /// Offset of the value's first byte in the object.
    pub object_offset: u64,
    pub length: u64,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceMetadata {
    /// Sequence number of the object version described.
    pub object_seq: u64,
    pub object_len: u64,
    pub attrs: InstanceAttrs,
    /// Object offset where the data set starts (after the file meta group).
    pub data_set_offset: u64,
    /// The header was read from the inflated data set (deflated transfer syntaxes).
    pub inflated: bool,
    pub pixel_data: Option<PixelDataAt>,
    pub frames_encapsulated: bool,
    pub frames: Vec<FrameRange>,
    /// Data set bytes up to Pixel Data (or the end), bulk values emptied (length 0).
    pub header: Vec<u8>,
    pub bulk: Vec<BulkRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata record: {0}")]
    Malformed(String),
    #[error("metadata record has format version {0}, this build reads {METADATA_FORMAT_VERSION}")]
    Version(u16),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_i32(&mut self, v: Option<i32>) {
        self.u8(v.is_some() as u8);
        self.u32(v.unwrap_or(0) as u32);
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.u8(v.is_some() as u8);
        self.u32(v.unwrap_or(0));
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MetadataError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| MetadataError::Malformed(format!("truncated at byte {}", self.at)))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, MetadataError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, MetadataError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, MetadataError> {
        let mut x = [0u8; 8];
        x.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(x))
    }
    fn bytes(&mut self) -> Result<&'a [u8], MetadataError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, MetadataError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| MetadataError::Malformed("a text field is not UTF-8".into()))
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, MetadataError> {
        let present = self.u8()? != 0;
        let v = self.u32()? as i32;
        Ok(present.then_some(v))
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, MetadataError> {
        let present = self.u8()? != 0;
        let v = self.u32()?;
        Ok(present.then_some(v))
    }
    fn count(&mut self, item_bytes: usize) -> Result<usize, MetadataError> {
        let n = self.u32()? as usize;
        // Bound counts by the bytes left before allocating for them.
        if n.saturating_mul(item_bytes) > self.b.len() - self.at {
            return Err(MetadataError::Malformed(format!(
                "{n} entries cannot fit in {} bytes",
                self.b.len() - self.at
            )));
        }
        Ok(n)
    }
}

fn write_attrs(w: &mut Writer, a: &InstanceAttrs) {
    for s in [
        &a.patient_id,
        &a.issuer_of_patient_id,
        &a.patient_name,
        &a.patient_birth_date,
        &a.patient_sex,
        &a.study_instance_uid,
        &a.study_date,
        &a.study_time,
        &a.accession_number,
        &a.study_id,
        &a.study_description,
        &a.referring_physician_name,
        &a.modality,
        &a.series_instance_uid,
        &a.series_description,
        &a.body_part_examined,
        &a.performed_procedure_step_start_date,
        &a.sop_class_uid,
        &a.sop_instance_uid,
        &a.transfer_syntax_uid,
    ] {
        w.str(s);
    }
    w.opt_i32(a.series_number);
    w.opt_i32(a.instance_number);
    w.opt_u32(a.number_of_frames);
    w.opt_u32(a.rows.map(u32::from));
    w.opt_u32(a.columns.map(u32::from));
    w.u32(a.extra.len() as u32);
    for (tag, value) in &a.extra {
        w.u32(tag.0);
        w.str(value);
    }
}

fn read_attrs(r: &mut Reader<'_>) -> Result<InstanceAttrs, MetadataError> {
    let mut a = InstanceAttrs::default();
    for s in [
        &mut a.patient_id,
        &mut a.issuer_of_patient_id,
        &mut a.patient_name,
        &mut a.patient_birth_date,
        &mut a.patient_sex,
        &mut a.study_instance_uid,
        &mut a.study_date,
        &mut a.study_time,
        &mut a.accession_number,
        &mut a.study_id,
        &mut a.study_description,
        &mut a.referring_physician_name,
        &mut a.modality,
        &mut a.series_instance_uid,
        &mut a.series_description,
        &mut a.body_part_examined,
        &mut a.performed_procedure_step_start_date,
        &mut a.sop_class_uid,
        &mut a.sop_instance_uid,
        &mut a.transfer_syntax_uid,
    ] {
        *s = r.string()?;
    }
    a.series_number = r.opt_i32()?;
    a.instance_number = r.opt_i32()?;
    a.number_of_frames = r.opt_u32()?;
    a.rows = r.opt_u32()?.map(|v| v as u16);
    a.columns = r.opt_u32()?.map(|v| v as u16);
    let n = r.count(8)?;
    for _ in 0..n {
        let tag = Tag(r.u32()?);
        a.extra.push((tag, r.string()?));
    }
    Ok(a)
}

impl InstanceMetadata {
    /// The record's bytes: magic, version, then the zstd-compressed body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(1024 + self.header.len()));
        w.u64(self.object_seq);
        w.u64(self.object_len);
        write_attrs(&mut w, &self.attrs);
        w.u64(self.data_set_offset);
        w.u8(self.inflated as u8);
        match &self.pixel_data {
            None => w.u8(0),
            Some(p) => {
                w.u8(1);
                w.u64(p.element_offset);
                w.u64(p.value_offset);
                w.u8(p.vr[0]);
                w.u8(p.vr[1]);
                w.opt_u32(p.length);
            }
        }
        w.u8(self.frames_encapsulated as u8);
        w.u32(self.frames.len() as u32);
        for f in &self.frames {
            w.u64(f.offset);
            w.u64(f.length);
            w.u32(f.fragments);
            w.u8(f.bit_offset);
        }
        w.u32(self.bulk.len() as u32);
        for b in &self.bulk {
            w.u32(b.tag.0);
            w.u8(b.vr[0]);
            w.u8(b.vr[1]);
            w.u64(b.object_offset);
            w.u64(b.length);
        }
        w.bytes(&self.header);
        let body = w.0;
        let mut out = Vec::with_capacity(16 + body.len() / 3);
        out.extend_from_slice(&METADATA_MAGIC);
        out.extend_from_slice(&METADATA_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        // Compressing an in-memory buffer cannot fail short of allocation failure; keep the
        // body uncompressed (flag 0) if it ever does.
        let compressed = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
            }
            match c.as_mut() {
                Some(c) => c.compress(&body),
                None => zstd::bulk::compress(&body, ZSTD_LEVEL),
            }
        });
        match compressed {
            Ok(z) => {
                out[6] = 1;
                out.extend_from_slice(&z);
            }
            Err(_) => out.extend_from_slice(&body),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<InstanceMetadata, MetadataError> {
        if bytes.len() < 16 || bytes[..4] != METADATA_MAGIC {
            return Err(MetadataError::Malformed("not a metadata record".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != METADATA_FORMAT_VERSION {
            return Err(MetadataError::Version(version));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[8..16]);
        let body_len = u64::from_le_bytes(len8);
        if body_len > METADATA_BYTES_MAX as u64 {
            return Err(MetadataError::Malformed(format!(
                "declares {body_len} bytes, the limit is {METADATA_BYTES_MAX}"
            )));
        }
        let body = match bytes[6] {
            0 => bytes[16..].to_vec(),
            1 => DECOMPRESSOR
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = zstd::bulk::Decompressor::new().ok();
                    }
                    match d.as_mut() {
                        Some(d) => d.decompress(&bytes[16..], body_len as usize),
                        None => zstd::bulk::decompress(&bytes[16..], body_len as usize),
                    }
                })
                .map_err(|e| MetadataError::Malformed(format!("zstd: {e}")))?,
            other => {
                return Err(MetadataError::Malformed(format!(
                    "unknown compression {other}"
                )))
            }
        };
        if body.len() as u64 != body_len {
            return Err(MetadataError::Malformed("body length mismatch".into()));
        }
        let mut r = Reader { b: &body, at: 0 };
        let object_seq = r.u64()?;
        let object_len = r.u64()?;
        let attrs = read_attrs(&mut r)?;
        let data_set_offset = r.u64()?;
        let inflated = r.u8()? != 0;
        let pixel_data = match r.u8()? {
            0 => None,
            _ => Some(PixelDataAt {
                element_offset: r.u64()?,
                value_offset: r.u64()?,
                vr: [r.u8()?, r.u8()?],
                length: r.opt_u32()?,
            }),
        };
        let frames_encapsulated = r.u8()? != 0;
        let n = r.count(21)?;
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            frames.push(FrameRange {
                offset: r.u64()?,
                length: r.u64()?,
                fragments: r.u32()?,
                bit_offset: r.u8()?,
            });
        }
        let n = r.count(22)?;
        let mut bulk = Vec::with_capacity(n);
        for _ in 0..n {
            bulk.push(BulkRef {
                tag: Tag(r.u32()?),
                vr: [r.u8()?, r.u8()?],
                object_offset: r.u64()?,
                length: r.u64()?,
            });
        }
        let header = r.bytes()?.to_vec();
        if r.at != body.len() {
            return Err(MetadataError::Malformed("trailing bytes".into()));
        }
        Ok(InstanceMetadata {
            object_seq,
            object_len,
            attrs,
            data_set_offset,
            inflated,
            pixel_data,
            frames_encapsulated,
            frames,
            header,
            bulk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InstanceMetadata {
        InstanceMetadata {
            object_seq: 42,
            object_len: 1 << 20,
            attrs: InstanceAttrs {
                patient_id: "P1".into(),
                patient_name: "Buc^Jérôme".into(),
                study_instance_uid: "1.2.3".into(),
                series_instance_uid: "1.2.3.4".into(),
                sop_instance_uid: "1.2.3.4.5".into(),
                series_number: Some(-3),
                number_of_frames: Some(60),
                rows: Some(512),
                extra: vec![(Tag::new(0x0018, 0x0050), "1.25".into())],
                ..Default::default()
            },
            data_set_offset: 336,
            inflated: false,
            pixel_data: Some(PixelDataAt {
                element_offset: 4000,
                value_offset: 4012,
                vr: *b"OB",
                length: None,
            }),
            frames_encapsulated: true,
            frames: vec![FrameRange {
                offset: 4020,
                length: 900,
                fragments: 2,
                bit_offset: 0,
            }],
            header: vec![7; 3000],
            bulk: vec![BulkRef {
                tag: Tag::new(0x6000, 0x3000),
                vr: *b"OW",
                object_offset: 1000,
                length: 65536,
            }],
        }
    }

    #[test]
    fn a_record_round_trips_and_compresses() {
        let m = sample();
        let bytes = m.encode();
        assert!(bytes.len() < 1000, "header of repeated bytes compresses");
        assert_eq!(InstanceMetadata::decode(&bytes), Ok(m));
    }

    #[test]
    fn damaged_records_get_specific_errors_and_never_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(InstanceMetadata::decode(&bytes[..cut]).is_err());
        }
        let mut newer = bytes.clone();
        newer[4] = 9;
        assert_eq!(
            InstanceMetadata::decode(&newer),
            Err(MetadataError::Version(9))
        );
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            InstanceMetadata::decode(&huge),
            Err(MetadataError::Malformed(_))
        ));
        for i in 16..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x55;
            let _ = InstanceMetadata::decode(&flipped);
        }
    }
}
