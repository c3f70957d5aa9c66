//! DIMSE command sets (PS3.7 6.3, 9.3, 10.3): the group 0000 elements that open every DIMSE
//! message, always encoded in Implicit VR Little Endian whatever transfer syntax the data set
//! uses.
//!
//! [`Command`] holds the elements the services use; [`Command::encode`] writes them in tag
//! order after CommandGroupLength (0000,0000); [`Command::decode`] reads a command set from a
//! peer with every length checked against the bytes present and a bound on the whole set, and
//! skips group 0000 elements it does not know (retired ones included).

use std::fmt;

/// Largest command set accepted from a peer. Real ones are a few hundred bytes.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;

/// CommandDataSetType (0000,0800) value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// A value meaning "a data set follows" (any other than [`NO_DATA_SET`]; this is the usual one).
pub const DATA_SET_PRESENT: u16 = 0x0000;

/// CommandField (0000,0100) values.
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    pub const N_ACTION_RQ: u16 = 0x0130;
    pub const N_ACTION_RSP: u16 = 0x8130;
    pub const N_CREATE_RQ: u16 = 0x0140;
    pub const N_CREATE_RSP: u16 = 0x8140;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;

    /// The response field of a request field (responses set bit 15).
    pub fn response_of(request: u16) -> u16 {
        request | 0x8000
    }
}

/// Status (0000,0900) values shared by the services (PS3.7 Annex C; service-specific codes
/// such as C-STORE's A700/A900/C000 come from the archive's failure reasons).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const PENDING: u16 = 0xFF00;
    /// Pending, with optional keys not supported (C-FIND).
    pub const PENDING_WARNING: u16 = 0xFF01;
    pub const CANCEL: u16 = 0xFE00;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    pub const NOT_AUTHORIZED: u16 = 0x0124;
    pub const DUPLICATE_INVOCATION: u16 = 0x0210;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    pub const MISTYPED_ARGUMENT: u16 = 0x0212;
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    pub const NO_SUCH_SOP_CLASS: u16 = 0x0118;
    pub const MISSING_ATTRIBUTE: u16 = 0x0120;
    pub const INVALID_ARGUMENT_VALUE: u16 = 0x0115;
    pub const NO_SUCH_ACTION_TYPE: u16 = 0x0123;
    /// C-MOVE/C-GET: refused, out of resources — unable to perform sub-operations.
    pub const OUT_OF_RESOURCES_SUB_OPERATIONS: u16 = 0xA702;
    /// C-FIND/C-MOVE/C-GET: identifier does not match SOP class.
    pub const IDENTIFIER_DOES_NOT_MATCH: u16 = 0xA900;
    /// C-FIND/C-MOVE/C-GET: unable to process.
    pub const UNABLE_TO_PROCESS: u16 = 0xC000;
    /// C-MOVE: move destination unknown.
    pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
    /// C-MOVE/C-GET: warning, sub-operations complete with one or more failures or warnings.
    pub const SUB_OPERATIONS_FAILED: u16 = 0xB000;
}

/// The command elements the services read and write. `None`: absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// CommandField (0000,0100).
    pub field: u16,
    /// AffectedSOPClassUID (0000,0002).
    pub affected_sop_class_uid: Option<String>,
    /// RequestedSOPClassUID (0000,0003).
    pub requested_sop_class_uid: Option<String>,
    /// MessageID (0000,0110).
    pub message_id: Option<u16>,
    /// MessageIDBeingRespondedTo (0000,0120).
    pub message_id_being_responded_to: Option<u16>,
    /// MoveDestination (0000,0600), an AE title.
    pub move_destination: Option<String>,
    /// Priority (0000,0700).
    pub priority: Option<u16>,
    /// CommandDataSetType (0000,0800).
    pub data_set_type: u16,
    /// Status (0000,0900).
    pub status: Option<u16>,
    /// ErrorComment (0000,0902).
    pub error_comment: Option<String>,
    /// AffectedSOPInstanceUID (0000,1000).
    pub affected_sop_instance_uid: Option<String>,
    /// RequestedSOPInstanceUID (0000,1001).
    pub requested_sop_instance_uid: Option<String>,
    /// EventTypeID (0000,1002).
    pub event_type_id: Option<u16>,
    /// ActionTypeID (0000,1008).
    pub action_type_id: Option<u16>,
    /// Number of remaining, completed, failed and warning sub-operations (0000,1020–1023).
    pub remaining: Option<u16>,
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
    /// MoveOriginatorApplicationEntityTitle (0000,1030).
    pub move_originator_ae_title: Option<String>,
    /// MoveOriginatorMessageID (0000,1031).
    pub move_originator_message_id: Option<u16>,
}

/// Why a command set could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// More than [`COMMAND_BYTES_MAX`] bytes.
    TooLong { len: usize },
    /// The bytes end inside the element header or value at `offset`.
    Truncated { offset: usize },
    /// An element outside group 0000 at `offset`.
    NotCommandGroup { offset: usize, group: u16 },
    /// An element whose value has the wrong length for its VR.
    BadValue { element: u16, len: usize },
    /// A text value that is not ASCII.
    NotAscii { element: u16 },
    /// CommandField (0000,0100) or CommandDataSetType (0000,0800) is missing.
    Missing { element: u16 },
    /// CommandGroupLength says one length, the bytes another.
    GroupLength { declared: u32, actual: usize },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::TooLong { len } => write!(
                f,
                "command set of {len} bytes; at most {COMMAND_BYTES_MAX} are accepted"
            ),
            CommandError::Truncated { offset } => {
                write!(f, "command set ends inside the element at byte {offset}")
            }
            CommandError::NotCommandGroup { offset, group } => write!(
                f,
                "element of group {group:04X} at byte {offset} in a command set (only group 0000 belongs there)"
            ),
            CommandError::BadValue { element, len } => write!(
                f,
                "command element (0000,{element:04X}) has a value of {len} bytes, wrong for its VR"
            ),
            CommandError::NotAscii { element } => {
                write!(f, "command element (0000,{element:04X}) is not ASCII text")
            }
            CommandError::Missing { element } => {
                write!(f, "command element (0000,{element:04X}) is missing")
            }
            CommandError::GroupLength { declared, actual } => write!(
                f,
                "CommandGroupLength says {declared} bytes follow, the command set has {actual}"
            ),
        }
    }
}

impl std::error::Error for CommandError {}

/// How a command element's value is written.
#[derive(Clone, Copy)]
enum Kind {
    /// UI: NUL-padded to even length.
    Uid,
    /// AE, LO: space-padded to even length.
    Text,
    /// US.
    U16,
}

impl Command {
    /// A response to `request`: the response field, the request's message ID, its affected
    /// SOP class and instance, no data set, and `status`.
    pub fn response_to(request: &Command, status: u16) -> Command {
        Command {
            field: field::response_of(request.field),
            affected_sop_class_uid: request
                .affected_sop_class_uid
                .clone()
                .or_else(|| request.requested_sop_class_uid.clone()),
            message_id_being_responded_to: request.message_id,
            data_set_type: NO_DATA_SET,
            status: Some(status),
            affected_sop_instance_uid: request
                .affected_sop_instance_uid
                .clone()
                .or_else(|| request.requested_sop_instance_uid.clone()),
            ..Command::default()
        }
    }

    /// Whether a data set follows this command.
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }

    fn elements(&self) -> Vec<(u16, Kind, Value<'_>)> {
        let texts: [(u16, Kind, &Option<String>); 7] = [
            (0x0002, Kind::Uid, &self.affected_sop_class_uid),
            (0x0003, Kind::Uid, &self.requested_sop_class_uid),
            (0x0600, Kind::Text, &self.move_destination),
            (0x0902, Kind::Text, &self.error_comment),
            (0x1000, Kind::Uid, &self.affected_sop_instance_uid),
            (0x1001, Kind::Uid, &self.requested_sop_instance_uid),
            (0x1030, Kind::Text, &self.move_originator_ae_title),
        ];
        let numbers: [(u16, Option<u16>); 13] = [
            (0x0100, Some(self.field)),
            (0x0110, self.message_id),
            (0x0120, self.message_id_being_responded_to),
            (0x0700, self.priority),
            (0x0800, Some(self.data_set_type)),
            (0x0900, self.status),
            (0x1002, self.event_type_id),
            (0x1008, self.action_type_id),
            (0x1020, self.remaining),
            (0x1021, self.completed),
            (0x1022, self.failed),
            (0x1023, self.warning),
            (0x1031, self.move_originator_message_id),
        ];
        let mut out: Vec<(u16, Kind, Value<'_>)> = texts
            .into_iter()
            .filter_map(|(e, k, v)| v.as_deref().map(|t| (e, k, Value::Text(t))))
            .chain(
                numbers
                    .into_iter()
                    .filter_map(|(e, v)| v.map(|n| (e, Kind::U16, Value::U16(n)))),
            )
            .collect();
        out.sort_by_key(|(element, _, _)| *element);
        out
    }

    /// The command set's bytes: CommandGroupLength, then every present element in tag order.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (element, kind, value) in self.elements() {
            let bytes: Vec<u8> = match (kind, value) {
                (Kind::U16, Value::U16(v)) => v.to_le_bytes().to_vec(),
                (Kind::Uid, Value::Text(t)) => padded(t, 0),
                (Kind::Text, Value::Text(t)) => padded(t, b' '),
                _ => unreachable!("kinds and values are paired in elements()"),
            };
            put_header(&mut body, element, bytes.len() as u32);
            body.extend_from_slice(&bytes);
        }
        let mut out = Vec::with_capacity(12 + body.len());
        put_header(&mut out, 0x0000, 4);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a command set (see the module documentation).
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        if bytes.len() > COMMAND_BYTES_MAX {
            return Err(CommandError::TooLong { len: bytes.len() });
        }
        let mut command = Command::default();
        let (mut has_field, mut has_type) = (false, false);
        let mut at = 0;
        while at < bytes.len() {
            let header = bytes
                .get(at..at + 8)
                .ok_or(CommandError::Truncated { offset: at })?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0x0000 {
                return Err(CommandError::NotCommandGroup { offset: at, group });
            }
            let value = bytes
                .get(at + 8..)
                .and_then(|rest| rest.get(..len))
                .ok_or(CommandError::Truncated { offset: at })?;
            let u16_value = || -> Result<u16, CommandError> {
                match value {
                    [a, b] => Ok(u16::from_le_bytes([*a, *b])),
                    _ => Err(CommandError::BadValue { element, len }),
                }
            };
            let text_value = || -> Result<String, CommandError> {
                let text = std::str::from_utf8(value)
                    .ok()
                    .filter(|t| t.is_ascii())
                    .ok_or(CommandError::NotAscii { element })?;
                Ok(text.trim_end_matches(['\0', ' ']).trim_start().to_string())
            };
            match element {
                0x0000 => {
                    let declared = match value {
                        [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
                        _ => return Err(CommandError::BadValue { element, len }),
                    };
                    let actual = bytes.len() - (at + 8 + len);
                    if declared as usize != actual {
                        return Err(CommandError::GroupLength { declared, actual });
                    }
                }
                0x0002 => command.affected_sop_class_uid = Some(text_value()?),
                0x0003 => command.requested_sop_class_uid = Some(text_value()?),
                0x0100 => {
                    command.field = u16_value()?;
                    has_field = true;
                }
                0x0110 => command.message_id = Some(u16_value()?),
                0x0120 => command.message_id_being_responded_to = Some(u16_value()?),
                0x0600 => command.move_destination = Some(text_value()?),
                0x0700 => command.priority = Some(u16_value()?),
                0x0800 => {
                    command.data_set_type = u16_value()?;
                    has_type = true;
                }
                0x0900 => command.status = Some(u16_value()?),
                0x0902 => command.error_comment = Some(text_value()?),
                0x1000 => command.affected_sop_instance_uid = Some(text_value()?),
                0x1001 => command.requested_sop_instance_uid = Some(text_value()?),
                0x1002 => command.event_type_id = Some(u16_value()?),
                0x1008 => command.action_type_id = Some(u16_value()?),
                0x1020 => command.remaining = Some(u16_value()?),
                0x1021 => command.completed = Some(u16_value()?),
                0x1022 => command.failed = Some(u16_value()?),
                0x1023 => command.warning = Some(u16_value()?),
                0x1030 => command.move_originator_ae_title = Some(text_value()?),
                0x1031 => command.move_originator_message_id = Some(u16_value()?),
                _ => {} // other (retired, offending-element, …) elements are not used
            }
            at += 8 + len;
        }
        if !has_field {
            return Err(CommandError::Missing { element: 0x0100 });
        }
        if !has_type {
            return Err(CommandError::Missing { element: 0x0800 });
        }
        Ok(command)
    }
}

enum Value<'a> {
    Text(&'a str),
    U16(u16),
}

fn padded(text: &str, pad: u8) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

fn put_header(out: &mut Vec<u8>, element: u16, len: u32) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A C-ECHO-RQ as dcmtk's echoscu writes it, built element by element here.
    fn echo_request_bytes() -> Vec<u8> {
        let mut body = Vec::new();
        put_header(&mut body, 0x0002, 18);
        body.extend_from_slice(b"1.2.840.10008.1.1\0");
        for (element, value) in [(0x0100u16, 0x0030u16), (0x0110, 7), (0x0800, 0x0101)] {
            put_header(&mut body, element, 2);
            body.extend_from_slice(&value.to_le_bytes());
        }
        let mut out = Vec::new();
        put_header(&mut out, 0x0000, 4);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn an_echo_request_is_read_and_answered() {
        let request = Command::decode(&echo_request_bytes()).unwrap();
        assert_eq!(request.field, field::C_ECHO_RQ);
        assert_eq!(
            request.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.1.1")
        );
        assert_eq!(request.message_id, Some(7));
        assert!(!request.has_data_set());
        let response = Command::response_to(&request, status::SUCCESS);
        let bytes = response.encode();
        let back = Command::decode(&bytes).unwrap();
        assert_eq!(back.field, field::C_ECHO_RSP);
        assert_eq!(back.message_id_being_responded_to, Some(7));
        assert_eq!(back.status, Some(0));
        // Group length, then elements in tag order: 0002, 0100, 0120, 0800, 0900.
        let elements: Vec<u16> = {
            let mut at = 0;
            let mut out = Vec::new();
            while at < bytes.len() {
                out.push(u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]));
                let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
                at += 8 + len as usize;
            }
            out
        };
        assert_eq!(
            elements,
            vec![0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900]
        );
    }

    #[test]
    fn bad_command_sets_are_refused_with_their_reason() {
        let good = echo_request_bytes();
        // Cut short: the group length no longer adds up; without the group length element,
        // the cut element itself is reported.
        assert_eq!(
            Command::decode(&good[..good.len() - 1]),
            Err(CommandError::GroupLength {
                declared: (good.len() - 12) as u32,
                actual: good.len() - 13
            })
        );
        assert_eq!(
            Command::decode(&good[12..good.len() - 1]),
            Err(CommandError::Truncated {
                offset: good.len() - 22
            })
        );
        let mut huge = good.clone();
        huge[12 + 4..12 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Command::decode(&huge),
            Err(CommandError::Truncated { .. })
        ));
        let mut other_group = good.clone();
        other_group[12] = 0x08;
        assert!(matches!(
            Command::decode(&other_group),
            Err(CommandError::NotCommandGroup { group: 0x0008, .. })
        ));
        let mut wrong_length = good.clone();
        wrong_length[8] += 2;
        assert!(matches!(
            Command::decode(&wrong_length),
            Err(CommandError::GroupLength { .. })
        ));
        assert_eq!(
            Command::decode(&vec![0; COMMAND_BYTES_MAX + 1]),
            Err(CommandError::TooLong {
                len: COMMAND_BYTES_MAX + 1
            })
        );
        let no_field = Command {
            field: 1,
            ..Command::default()
        }
        .encode();
        // Remove the CommandField element: group length then no 0100.
        let mut cut = Vec::new();
        let mut at = 12;
        while at < no_field.len() {
            let element = u16::from_le_bytes([no_field[at + 2], no_field[at + 3]]);
            let len = u32::from_le_bytes(no_field[at + 4..at + 8].try_into().unwrap()) as usize;
            if element != 0x0100 {
                cut.extend_from_slice(&no_field[at..at + 8 + len]);
            }
            at += 8 + len;
        }
        assert_eq!(
            Command::decode(&cut),
            Err(CommandError::Missing { element: 0x0100 })
        );
    }

    fn uid() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[0-9]{1,8}(\\.[0-9]{1,8}){0,6}")
    }

    fn ae() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[A-Z][A-Z0-9_]{0,15}")
    }

    proptest! {
        #[test]
        fn commands_round_trip(
            field in any::<u16>(),
            class in uid(),
            instance in uid(),
            message_id in proptest::option::of(any::<u16>()),
            status in proptest::option::of(any::<u16>()),
            destination in ae(),
            counts in proptest::option::of((any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>())),
            data_set_type in prop_oneof![Just(NO_DATA_SET), Just(DATA_SET_PRESENT)],
        ) {
            let command = Command {
                field,
                affected_sop_class_uid: class,
                affected_sop_instance_uid: instance,
                message_id,
                status,
                move_destination: destination,
                remaining: counts.map(|c| c.0),
                completed: counts.map(|c| c.1),
                failed: counts.map(|c| c.2),
                warning: counts.map(|c| c.3),
                data_set_type,
                ..Command::default()
            };
            prop_assert_eq!(Command::decode(&command.encode()), Ok(command));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Command::decode(&bytes);
        }
    }
}
