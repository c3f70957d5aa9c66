//! The attributes the archive indexes for one instance, decoded to UTF-8 text.
//!
//! This is the unit the extractor produces and the catalog indexes. Values are kept as DICOM
//! text (multiple values separated by `\`, PN component groups by `=`), already decoded from
//! the object's Specific Character Set and trimmed of padding, so matching and serialization
//! never see raw bytes. An absent attribute and an empty one are both `""`: PS3.4 C.2.2.2
//! treats them alike for matching.

use crate::dicom::Tag;

/// Where an instance's records are in the store (filled in once it is durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstanceLocation {
    /// Segment holding the object's findable record (manifest or blob).
    pub segment_id: u64,
    /// Offset of that record in the segment.
    pub offset: u64,
    /// Length of the object in bytes.
    pub object_len: u64,
}

/// The indexed attributes of one instance (PS3.4 C.6 and PS3.18 10.6 required matching and
/// return keys at patient, study, series and instance level), plus configured extras.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceAttrs {
    // Patient level.
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    // Study level.
    pub study_instance_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_id: String,
    pub study_description: String,
    pub referring_physician_name: String,
    // Series level.
    pub modality: String,
    pub series_instance_uid: String,
    pub series_number: Option<i32>,
    pub series_description: String,
    pub body_part_examined: String,
    pub performed_procedure_step_start_date: String,
    // Instance level.
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub instance_number: Option<i32>,
    pub number_of_frames: Option<u32>,
    pub rows: Option<u16>,
    pub columns: Option<u16>,
    pub transfer_syntax_uid: String,
    /// Configured extra attributes (top level), decoded to text, sorted by tag.
    pub extra: Vec<(Tag, String)>,
}

/// Query levels of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Patient,
    Study,
    Series,
    Instance,
}

/// Standard tags of the indexed attributes.
pub mod tags {
    use crate::dicom::Tag;
    pub const SPECIFIC_CHARACTER_SET: Tag = Tag::new(0x0008, 0x0005);
    pub const SOP_CLASS_UID: Tag = Tag::new(0x0008, 0x0016);
    pub const SOP_INSTANCE_UID: Tag = Tag::new(0x0008, 0x0018);
    pub const STUDY_DATE: Tag = Tag::new(0x0008, 0x0020);
    pub const STUDY_TIME: Tag = Tag::new(0x0008, 0x0030);
    pub const ACCESSION_NUMBER: Tag = Tag::new(0x0008, 0x0050);
    pub const MODALITY: Tag = Tag::new(0x0008, 0x0060);
    pub const MODALITIES_IN_STUDY: Tag = Tag::new(0x0008, 0x0061);
    pub const REFERRING_PHYSICIAN_NAME: Tag = Tag::new(0x0008, 0x0090);
    pub const STUDY_DESCRIPTION: Tag = Tag::new(0x0008, 0x1030);
    pub const SERIES_DESCRIPTION: Tag = Tag::new(0x0008, 0x103E);
    pub const PATIENT_NAME: Tag = Tag::new(0x0010, 0x0010);
    pub const PATIENT_ID: Tag = Tag::new(0x0010, 0x0020);
    pub const ISSUER_OF_PATIENT_ID: Tag = Tag::new(0x0010, 0x0021);
    pub const PATIENT_BIRTH_DATE: Tag = Tag::new(0x0010, 0x0030);
    pub const PATIENT_SEX: Tag = Tag::new(0x0010, 0x0040);
    pub const BODY_PART_EXAMINED: Tag = Tag::new(0x0018, 0x0015);
    pub const STUDY_INSTANCE_UID: Tag = Tag::new(0x0020, 0x000D);
    pub const SERIES_INSTANCE_UID: Tag = Tag::new(0x0020, 0x000E);
    pub const STUDY_ID: Tag = Tag::new(0x0020, 0x0010);
    pub const SERIES_NUMBER: Tag = Tag::new(0x0020, 0x0011);
    pub const INSTANCE_NUMBER: Tag = Tag::new(0x0020, 0x0013);
    pub const NUMBER_OF_STUDY_RELATED_SERIES: Tag = Tag::new(0x0020, 0x1206);
    pub const NUMBER_OF_STUDY_RELATED_INSTANCES: Tag = Tag::new(0x0020, 0x1208);
    pub const NUMBER_OF_SERIES_RELATED_INSTANCES: Tag = Tag::new(0x0020, 0x1209);
    pub const SAMPLES_PER_PIXEL: Tag = Tag::new(0x0028, 0x0002);
    pub const NUMBER_OF_FRAMES: Tag = Tag::new(0x0028, 0x0008);
    pub const ROWS: Tag = Tag::new(0x0028, 0x0010);
    pub const COLUMNS: Tag = Tag::new(0x0028, 0x0011);
    pub const BITS_ALLOCATED: Tag = Tag::new(0x0028, 0x0100);
    pub const PERFORMED_PROCEDURE_STEP_START_DATE: Tag = Tag::new(0x0040, 0x0244);
    pub const TRANSFER_SYNTAX_UID: Tag = Tag::new(0x0002, 0x0010);
}

impl InstanceAttrs {
    /// The text of a standard indexed attribute (numbers as decimal text), or `None` when
    /// `tag` is neither standard nor among the extras.
    pub fn text(&self, tag: Tag) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow::{Borrowed, Owned};
        let num = |v: Option<i64>| Owned(v.map(|n| n.to_string()).unwrap_or_default());
        Some(match tag {
            tags::PATIENT_ID => Borrowed(&self.patient_id),
            tags::ISSUER_OF_PATIENT_ID => Borrowed(&self.issuer_of_patient_id),
            tags::PATIENT_NAME => Borrowed(&self.patient_name),
            tags::PATIENT_BIRTH_DATE => Borrowed(&self.patient_birth_date),
            tags::PATIENT_SEX => Borrowed(&self.patient_sex),
            tags::STUDY_INSTANCE_UID => Borrowed(&self.study_instance_uid),
            tags::STUDY_DATE => Borrowed(&self.study_date),
            tags::STUDY_TIME => Borrowed(&self.study_time),
            tags::ACCESSION_NUMBER => Borrowed(&self.accession_number),
            tags::STUDY_ID => Borrowed(&self.study_id),
            tags::STUDY_DESCRIPTION => Borrowed(&self.study_description),
            tags::REFERRING_PHYSICIAN_NAME => Borrowed(&self.referring_physician_name),
            tags::MODALITY => Borrowed(&self.modality),
            tags::SERIES_INSTANCE_UID => Borrowed(&self.series_instance_uid),
            tags::SERIES_NUMBER => num(self.series_number.map(i64::from)),
            tags::SERIES_DESCRIPTION => Borrowed(&self.series_description),
            tags::BODY_PART_EXAMINED => Borrowed(&self.body_part_examined),
            tags::PERFORMED_PROCEDURE_STEP_START_DATE => {
                Borrowed(&self.performed_procedure_step_start_date)
            }
            tags::SOP_CLASS_UID => Borrowed(&self.sop_class_uid),
            tags::SOP_INSTANCE_UID => Borrowed(&self.sop_instance_uid),
            tags::INSTANCE_NUMBER => num(self.instance_number.map(i64::from)),
            tags::NUMBER_OF_FRAMES => num(self.number_of_frames.map(i64::from)),
            tags::ROWS => num(self.rows.map(i64::from)),
            tags::COLUMNS => num(self.columns.map(i64::from)),
            tags::TRANSFER_SYNTAX_UID => Borrowed(&self.transfer_syntax_uid),
            _ => {
                let i = self.extra.binary_search_by_key(&tag, |(t, _)| *t).ok()?;
                Borrowed(&self.extra[i].1)
            }
        })
    }

    /// The level an attribute belongs to, for standard indexed attributes.
    pub fn level_of(tag: Tag) -> Option<Level> {
        Some(match tag {
            tags::PATIENT_ID
            | tags::ISSUER_OF_PATIENT_ID
            | tags::PATIENT_NAME
            | tags::PATIENT_BIRTH_DATE
            | tags::PATIENT_SEX => Level::Patient,
            tags::STUDY_INSTANCE_UID
            | tags::STUDY_DATE
            | tags::STUDY_TIME
            | tags::ACCESSION_NUMBER
            | tags::STUDY_ID
            | tags::STUDY_DESCRIPTION
            | tags::REFERRING_PHYSICIAN_NAME
            | tags::MODALITIES_IN_STUDY
            | tags::NUMBER_OF_STUDY_RELATED_SERIES
            | tags::NUMBER_OF_STUDY_RELATED_INSTANCES => Level::Study,
            tags::MODALITY
            | tags::SERIES_INSTANCE_UID
            | tags::SERIES_NUMBER
            | tags::SERIES_DESCRIPTION
            | tags::BODY_PART_EXAMINED
            | tags::PERFORMED_PROCEDURE_STEP_START_DATE
            | tags::NUMBER_OF_SERIES_RELATED_INSTANCES => Level::Series,
            tags::SOP_CLASS_UID
            | tags::SOP_INSTANCE_UID
            | tags::INSTANCE_NUMBER
            | tags::NUMBER_OF_FRAMES
            | tags::ROWS
            | tags::COLUMNS
            | tags::TRANSFER_SYNTAX_UID => Level::Instance,
            _ => return None,
        })
    }
}
