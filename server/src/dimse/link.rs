//! DIMSE messages over one `dicom-ul` association, either side: reading command sets and data
//! sets PDV by PDV, sending them split to the peer's maximum PDU length, and noticing a
//! C-CANCEL while a long operation answers.
//!
//! [`Link`] wraps the association and a queue of PDVs already received but not yet consumed
//! (one P-DATA-TF PDU may carry several PDVs, and a cancel check may read ahead).

use kuvasto_dimse::command::{self, field, Command};
use kuvasto_dimse::dataset::{DataSet, DATA_SET_BYTES_MAX};
use kuvasto_engine::dicom::json::Encoding;
use std::collections::VecDeque;
use std::net::TcpStream;

use dicom_ul::association::client::ClientAssociation;
use dicom_ul::association::server::ServerAssociation;
use dicom_ul::association::Association;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};

/// Bytes of a PDV's header inside a P-DATA-TF PDU (item length, context id, control header).
const PDV_HEADER_BYTES: u32 = 6;
/// Largest PDV data we send, whatever the peer accepts (bounds our send buffers).
pub const SEND_PDV_BYTES_MAX: usize = 1 << 20;

/// Why a DIMSE exchange ended early.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("association: {0}")]
    Association(#[from] dicom_ul::association::Error),
    /// The peer broke the protocol; the association is aborted.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer released the association (between messages).
    #[error("the peer released the association")]
    Released,
    /// The association ended in order (a release answered by a service).
    #[error("the association was released")]
    Closed,
    /// The peer aborted the association.
    #[error("the peer aborted the association")]
    Aborted,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The association operations a [`Link`] needs; implemented for both sides.
pub trait Wire {
    fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), LinkError>;
    fn receive_pdu(&mut self) -> Result<Pdu, LinkError>;
    fn socket(&mut self) -> &mut TcpStream;
    /// Largest PDU the peer accepts (0: no limit).
    fn peer_max_pdu(&self) -> u32;
    fn contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated];
}

impl Wire for ServerAssociation<TcpStream> {
    fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), LinkError> {
        Ok(self.send(pdu)?)
    }
    fn receive_pdu(&mut self) -> Result<Pdu, LinkError> {
        Ok(self.receive()?)
    }
    fn socket(&mut self) -> &mut TcpStream {
        self.inner_stream()
    }
    fn peer_max_pdu(&self) -> u32 {
        Association::requestor_max_pdu_length(self)
    }
    fn contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated] {
        Association::presentation_contexts(self)
    }
}

impl Wire for ClientAssociation<TcpStream> {
    fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), LinkError> {
        Ok(self.send(pdu)?)
    }
    fn receive_pdu(&mut self) -> Result<Pdu, LinkError> {
        Ok(self.receive()?)
    }
    fn socket(&mut self) -> &mut TcpStream {
        self.inner_stream()
    }
    fn peer_max_pdu(&self) -> u32 {
        Association::acceptor_max_pdu_length(self)
    }
    fn contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated] {
        Association::presentation_contexts(self)
    }
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// What the peer sent next.
pub enum Incoming {
    /// A command set on presentation context `context`.
    Command {
        context: u8,
        command: Box<Command>,
    },
    Released,
    Aborted,
}

/// See the module documentation.
pub struct Link<W: Wire> {
    pub wire: W,
    pending: VecDeque<PDataValue>,
    accepted: Vec<Context>,
}

fn uid(text: &str) -> &str {
    text.trim_end_matches(['\0', ' '])
}

impl<W: Wire> Link<W> {
    pub fn new(wire: W) -> Link<W> {
        let accepted = wire
            .contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| Context {
                id: pc.id,
                abstract_syntax: uid(&pc.abstract_syntax).to_string(),
                transfer_syntax: uid(&pc.transfer_syntax).to_string(),
            })
            .collect();
        Link {
            wire,
            pending: VecDeque::new(),
            accepted,
        }
    }

    /// The accepted presentation contexts.
    pub fn accepted(&self) -> &[Context] {
        &self.accepted
    }

    pub fn context(&self, id: u8) -> Option<&Context> {
        self.accepted.iter().find(|c| c.id == id)
    }

    /// The next PDV, receiving PDUs as needed; `Err(Released/Aborted)` when the peer ends the
    /// association.
    pub fn next_pdv(&mut self) -> Result<PDataValue, LinkError> {
        loop {
            if let Some(pdv) = self.pending.pop_front() {
                return Ok(pdv);
            }
            match self.wire.receive_pdu()? {
                Pdu::PData { data } => self.pending.extend(data),
                Pdu::ReleaseRQ => return Err(LinkError::Released),
                Pdu::AbortRQ { .. } => return Err(LinkError::Aborted),
                other => {
                    return Err(LinkError::Protocol(format!(
                        "unexpected {} PDU during data transfer",
                        pdu_name(&other)
                    )))
                }
            }
        }
    }

    /// The next command set (its fragments joined, at most `COMMAND_BYTES_MAX` bytes).
    pub fn next_command(&mut self) -> Result<Incoming, LinkError> {
        let mut bytes = Vec::new();
        let mut context = None;
        loop {
            let pdv = match self.next_pdv() {
                Ok(pdv) => pdv,
                Err(LinkError::Released) if bytes.is_empty() => return Ok(Incoming::Released),
                Err(LinkError::Aborted) => return Ok(Incoming::Aborted),
                Err(e) => return Err(e),
            };
            if pdv.value_type != PDataValueType::Command {
                return Err(LinkError::Protocol(
                    "a data set fragment arrived where a command was expected".into(),
                ));
            }
            if *context.get_or_insert(pdv.presentation_context_id) != pdv.presentation_context_id {
                return Err(LinkError::Protocol(
                    "command fragments on different presentation contexts".into(),
                ));
            }
            if bytes.len() + pdv.data.len() > command::COMMAND_BYTES_MAX {
                return Err(LinkError::Protocol(format!(
                    "command set over {} bytes",
                    command::COMMAND_BYTES_MAX
                )));
            }
            bytes.extend_from_slice(&pdv.data);
            if pdv.is_last {
                break;
            }
        }
        let context = context.unwrap_or_default();
        if self.context(context).is_none() {
            return Err(LinkError::Protocol(format!(
                "a command on presentation context {context}, which was not accepted"
            )));
        }
        let command = Command::decode(&bytes)
            .map_err(|e| LinkError::Protocol(format!("unreadable command set: {e}")))?;
        Ok(Incoming::Command {
            context,
            command: Box::new(command),
        })
    }

    /// The next data set fragment of `context`: `(bytes, last)`.
    pub fn next_data(&mut self, context: u8) -> Result<(Vec<u8>, bool), LinkError> {
        let pdv = self.next_pdv()?;
        if pdv.value_type != PDataValueType::Data {
            return Err(LinkError::Protocol(
                "a command arrived in the middle of a data set".into(),
            ));
        }
        if pdv.presentation_context_id != context {
            return Err(LinkError::Protocol(format!(
                "data set fragment on presentation context {} after a command on {context}",
                pdv.presentation_context_id
            )));
        }
        Ok((pdv.data, pdv.is_last))
    }

    /// A whole (small) data set of `context`: at most `DATA_SET_BYTES_MAX` bytes.
    pub fn read_data_set_bytes(&mut self, context: u8) -> Result<Vec<u8>, LinkError> {
        let mut bytes = Vec::new();
        loop {
            let (data, last) = self.next_data(context)?;
            if bytes.len() + data.len() > DATA_SET_BYTES_MAX {
                return Err(LinkError::Protocol(format!(
                    "data set over {DATA_SET_BYTES_MAX} bytes where an identifier was expected"
                )));
            }
            bytes.extend_from_slice(&data);
            if last {
                return Ok(bytes);
            }
        }
    }

    /// Reads a small data set of `context` and decodes it in the context's encoding.
    pub fn read_data_set(&mut self, context: u8) -> Result<Result<DataSet, String>, LinkError> {
        let bytes = self.read_data_set_bytes(context)?;
        Ok(self.decode(context, &bytes))
    }

    fn decode(&self, context: u8, bytes: &[u8]) -> Result<DataSet, String> {
        let encoding = self.encoding(context)?;
        DataSet::decode(bytes, encoding).map_err(|e| e.to_string())
    }

    /// The data set encoding of `context`'s transfer syntax.
    pub fn encoding(&self, context: u8) -> Result<Encoding, String> {
        let ts = self
            .context(context)
            .map(|c| c.transfer_syntax.as_str())
            .unwrap_or_default();
        Encoding::of_transfer_syntax(ts, false)
            .ok_or_else(|| format!("transfer syntax {ts} is not supported for identifiers"))
    }

    /// Largest PDV data the peer takes.
    pub fn pdv_bytes_max(&self) -> usize {
        match self.wire.peer_max_pdu() {
            0 => SEND_PDV_BYTES_MAX,
            n => (n.saturating_sub(PDV_HEADER_BYTES) as usize).clamp(64, SEND_PDV_BYTES_MAX),
        }
    }

    pub fn send_command(&mut self, context: u8, command: &Command) -> Result<(), LinkError> {
        let bytes = command.encode();
        self.send_fragments(context, PDataValueType::Command, &bytes)
    }

    /// A command followed by its data set.
    pub fn send_with_data(
        &mut self,
        context: u8,
        command: &Command,
        data: &[u8],
    ) -> Result<(), LinkError> {
        debug_assert!(command.has_data_set());
        self.send_command(context, command)?;
        self.send_fragments(context, PDataValueType::Data, data)
    }

    fn send_fragments(
        &mut self,
        context: u8,
        value_type: PDataValueType,
        bytes: &[u8],
    ) -> Result<(), LinkError> {
        let max = self.pdv_bytes_max();
        let mut chunks = bytes.chunks(max).peekable();
        if chunks.peek().is_none() {
            return self.send_pdv(context, value_type.clone(), Vec::new(), true);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send_pdv(context, value_type.clone(), chunk.to_vec(), last)?;
        }
        Ok(())
    }

    pub fn send_pdv(
        &mut self,
        context: u8,
        value_type: PDataValueType,
        data: Vec<u8>,
        is_last: bool,
    ) -> Result<(), LinkError> {
        self.wire.send_pdu(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type,
                is_last,
                data,
            }],
        })
    }

    /// Whether the peer has sent a C-CANCEL for `message_id` (without blocking when nothing
    /// has arrived). Other PDVs read on the way stay queued for later.
    pub fn cancel_requested(&mut self, message_id: Option<u16>) -> Result<bool, LinkError> {
        if self.pending.is_empty() {
            let socket = self.wire.socket();
            socket.set_nonblocking(true)?;
            let mut probe = [0u8; 1];
            let ready = match socket.peek(&mut probe) {
                Ok(n) => n > 0,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(e) => {
                    socket.set_nonblocking(false)?;
                    return Err(e.into());
                }
            };
            socket.set_nonblocking(false)?;
            if !ready {
                return Ok(false);
            }
            match self.wire.receive_pdu()? {
                Pdu::PData { data } => self.pending.extend(data),
                Pdu::ReleaseRQ => return Err(LinkError::Released),
                Pdu::AbortRQ { .. } => return Err(LinkError::Aborted),
                other => {
                    return Err(LinkError::Protocol(format!(
                        "unexpected {} PDU during data transfer",
                        pdu_name(&other)
                    )))
                }
            }
        }
        self.take_cancel(message_id)
    }

    /// Removes a queued C-CANCEL for `message_id`, if a whole one is queued first.
    fn take_cancel(&mut self, message_id: Option<u16>) -> Result<bool, LinkError> {
        let Some(first) = self.pending.front() else {
            return Ok(false);
        };
        if first.value_type != PDataValueType::Command || !first.is_last {
            return Ok(false);
        }
        let Ok(command) = Command::decode(&first.data) else {
            return Ok(false); // next_command reports it
        };
        if command.field == field::C_CANCEL_RQ
            && (message_id.is_none() || command.message_id_being_responded_to == message_id)
        {
            self.pending.pop_front();
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads the next command; a C-CANCEL for `message_id` in between is noted in `cancelled`
    /// and skipped.
    pub fn next_command_noting_cancel(
        &mut self,
        message_id: Option<u16>,
        cancelled: &mut bool,
    ) -> Result<Incoming, LinkError> {
        loop {
            match self.next_command()? {
                Incoming::Command { command, .. }
                    if command.field == field::C_CANCEL_RQ
                        && command.message_id_being_responded_to == message_id =>
                {
                    *cancelled = true;
                }
                other => return Ok(other),
            }
        }
    }
}

pub fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::Unknown { .. } => "unknown",
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
    }
}
