//! DIMSE messages over one `dicom-ul` association, either side: reading command sets and data
//! sets PDV by PDV, sending them split to the peer's maximum PDU length, and noticing a
//! C-CANCEL while a long operation answers.
//!
//! Reading after association establishment is our own: P-DATA-TF PDUs are parsed in place in
//! one bounded buffer and each PDV's data is handed on as slices of it, so a C-STORE data set
//! goes from the socket buffer straight into the engine (dicom-ul's `receive` would copy every
//! byte three more times: into its buffer, into the PDU, into each PDV's `Vec`). Other PDUs
//! (release, abort, anything unexpected) are cut out of the buffer whole and parsed by
//! dicom-ul's `read_pdu`. Owning the buffer also lets a cancel check see a C-CANCEL that
//! arrived in the same segment as the request it cancels.
//!
//! An association of the listener is plain or over TLS ([`ServerWire`]); under TLS the
//! reads go through rustls (its plaintext is read into the same buffer) and the cancel check
//! asks rustls for plaintext already decrypted before it looks at the socket.

use kuvasto_dimse::command::{self, field, Command};
use kuvasto_dimse::dataset::{DataSet, DATA_SET_BYTES_MAX};
use kuvasto_engine::dicom::json::Encoding;
use std::io::Read;
use std::net::TcpStream;

use dicom_ul::association::client::ClientAssociation;
use dicom_ul::association::server::{ServerAssociation, TlsStream};
use dicom_ul::association::{Association, SyncAssociation};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};

/// Bytes of a PDU's header (type, reserved, length).
const PDU_HEADER_BYTES: usize = 6;
/// P-DATA-TF's PDU type.
const P_DATA_TF: u8 = 0x04;
/// The read buffer: socket reads are at most this large, and every PDU other than P-DATA-TF
/// must fit (P-DATA-TF is streamed, whatever its size up to the maximum PDU length).
const READ_BUFFER_BYTES: usize = 256 * 1024;
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
    /// Reads what has arrived into `buffer` (blocking until something has, or the socket's
    /// read timeout).
    fn read_input(&mut self, buffer: &mut [u8]) -> std::io::Result<usize>;
    /// Whether input is waiting (so [`Wire::read_input`] would not block), without blocking.
    fn input_waiting(&mut self) -> std::io::Result<bool>;
    /// Bytes dicom-ul read past the association negotiation, if any (taken once).
    fn take_read_buffer(&mut self) -> Vec<u8>;
    /// Largest PDU the peer accepts (0: no limit).
    fn peer_max_pdu(&self) -> u32;
    /// Largest PDU this side accepts.
    fn local_max_pdu(&self) -> u32;
    fn contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated];
}

/// `Wire` for one side; `peer` and `local` name the association's methods giving the peer's
/// and this side's maximum PDU length.
macro_rules! wire {
    ($side:ty, peer: $peer:ident, local: $local:ident) => {
        impl Wire for $side {
            fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), LinkError> {
                Ok(self.send(pdu)?)
            }
            fn read_input(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
                self.inner_stream().read(buffer)
            }
            fn input_waiting(&mut self) -> std::io::Result<bool> {
                tcp_input_waiting(self.inner_stream())
            }
            fn take_read_buffer(&mut self) -> Vec<u8> {
                SyncAssociation::get_mut(self).1.split().to_vec()
            }
            fn peer_max_pdu(&self) -> u32 {
                Association::$peer(self)
            }
            fn local_max_pdu(&self) -> u32 {
                Association::$local(self)
            }
            fn contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated] {
                Association::presentation_contexts(self)
            }
        }
    };
}

wire!(ServerAssociation<TcpStream>, peer: requestor_max_pdu_length, local: acceptor_max_pdu_length);
wire!(ClientAssociation<TcpStream>, peer: acceptor_max_pdu_length, local: requestor_max_pdu_length);

/// Whether the socket has bytes to read, without blocking.
fn tcp_input_waiting(socket: &mut TcpStream) -> std::io::Result<bool> {
    socket.set_nonblocking(true)?;
    let mut probe = [0u8; 1];
    let ready = match socket.peek(&mut probe) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    };
    socket.set_nonblocking(false)?;
    ready
}

/// Whether a TLS stream has plaintext to read, without blocking: plaintext rustls already
/// decrypted, else whatever records have arrived are taken in (never waiting for more) and
/// decrypted. A partial record, or records without application data, is not input.
fn tls_input_waiting(stream: &mut TlsStream) -> std::io::Result<bool> {
    let state = stream
        .conn
        .process_new_packets()
        .map_err(std::io::Error::other)?;
    if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
        return Ok(true);
    }
    stream.sock.set_nonblocking(true)?;
    let waiting = loop {
        match stream.conn.read_tls(&mut stream.sock) {
            // The peer closed the connection: a read reports it at once.
            Ok(0) => break Ok(true),
            Ok(_) => match stream.conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    break Ok(true)
                }
                Ok(_) => continue,
                Err(e) => break Err(std::io::Error::other(e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    stream.sock.set_nonblocking(false)?;
    waiting
}

/// An association of the listener: plain DICOM, or DICOM over TLS.
pub enum ServerWire {
    Plain(ServerAssociation<TcpStream>),
    Tls(Box<ServerAssociation<TlsStream>>),
}

impl ServerWire {
    /// Sends one PDU.
    pub fn send(&mut self, pdu: &Pdu) -> Result<(), dicom_ul::association::Error> {
        match self {
            ServerWire::Plain(a) => a.send(pdu),
            ServerWire::Tls(a) => a.send(pdu),
        }
    }

    /// The TCP socket under the association (under TLS too): timeouts, shutdown.
    pub fn inner_stream(&mut self) -> &mut TcpStream {
        match self {
            ServerWire::Plain(a) => a.inner_stream(),
            ServerWire::Tls(a) => &mut a.inner_stream().sock,
        }
    }

    /// The calling AE title.
    pub fn peer_ae_title(&self) -> &str {
        match self {
            ServerWire::Plain(a) => a.peer_ae_title(),
            ServerWire::Tls(a) => a.peer_ae_title(),
        }
    }
}

impl Wire for ServerWire {
    fn send_pdu(&mut self, pdu: &Pdu) -> Result<(), LinkError> {
        Ok(self.send(pdu)?)
    }
    fn read_input(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ServerWire::Plain(a) => a.inner_stream().read(buffer),
            ServerWire::Tls(a) => a.inner_stream().read(buffer),
        }
    }
    fn input_waiting(&mut self) -> std::io::Result<bool> {
        match self {
            ServerWire::Plain(a) => tcp_input_waiting(a.inner_stream()),
            ServerWire::Tls(a) => tls_input_waiting(a.inner_stream()),
        }
    }
    fn take_read_buffer(&mut self) -> Vec<u8> {
        match self {
            ServerWire::Plain(a) => a.take_read_buffer(),
            ServerWire::Tls(a) => SyncAssociation::get_mut(a.as_mut()).1.split().to_vec(),
        }
    }
    fn peer_max_pdu(&self) -> u32 {
        match self {
            ServerWire::Plain(a) => a.peer_max_pdu(),
            ServerWire::Tls(a) => a.requestor_max_pdu_length(),
        }
    }
    fn local_max_pdu(&self) -> u32 {
        match self {
            ServerWire::Plain(a) => a.local_max_pdu(),
            ServerWire::Tls(a) => a.acceptor_max_pdu_length(),
        }
    }
    fn contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated] {
        match self {
            ServerWire::Plain(a) => a.contexts(),
            ServerWire::Tls(a) => a.presentation_contexts(),
        }
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

/// The header of a PDV being read.
#[derive(Debug, Clone, Copy)]
struct PdvHeader {
    context: u8,
    command: bool,
    last: bool,
}

/// See the module documentation.
pub struct Link<W: Wire> {
    pub wire: W,
    accepted: Vec<Context>,
    /// Received bytes not yet consumed: `buffer[start..end]`.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the current P-DATA-TF PDU not yet parsed (0: at a PDU boundary).
    pdu_left: usize,
    /// Data bytes of the current PDV not yet consumed.
    pdv_left: usize,
    /// Largest PDU accepted from the peer.
    max_pdu_in: u32,
}

fn uid(text: &str) -> &str {
    text.trim_end_matches(['\0', ' '])
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl<W: Wire> Link<W> {
    pub fn new(mut wire: W) -> Link<W> {
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
        let max_pdu_in = match wire.local_max_pdu() {
            0 => u32::MAX,
            n => n,
        };
        let leftover = wire.take_read_buffer();
        let mut buffer = vec![0; READ_BUFFER_BYTES.max(leftover.len())];
        buffer[..leftover.len()].copy_from_slice(&leftover);
        Link {
            wire,
            accepted,
            end: leftover.len(),
            buffer,
            start: 0,
            pdu_left: 0,
            pdv_left: 0,
            max_pdu_in,
        }
    }

    /// The accepted presentation contexts.
    pub fn accepted(&self) -> &[Context] {
        &self.accepted
    }

    pub fn context(&self, id: u8) -> Option<&Context> {
        self.accepted.iter().find(|c| c.id == id)
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.available());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// One socket read into the free space (moving unconsumed bytes to the front first when
    /// the free space is at the end and small).
    fn read_some(&mut self) -> Result<(), LinkError> {
        if self.buffer.len() - self.end < self.buffer.len() / 4 && self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buffer.len() {
            return Err(LinkError::Protocol("read buffer full".into()));
        }
        let n = self.wire.read_input(&mut self.buffer[self.end..])?;
        if n == 0 {
            return Err(LinkError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the peer",
            )));
        }
        self.end += n;
        Ok(())
    }

    /// Ensures `n` bytes are buffered.
    fn fill(&mut self, n: usize) -> Result<(), LinkError> {
        debug_assert!(n <= self.buffer.len());
        if self.buffer.len() - self.start < n {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.available() < n {
            self.read_some()?;
        }
        Ok(())
    }

    /// Reads the header of the next PDV (after the previous one's data is consumed); a
    /// release or abort at a PDU boundary is `Err(Released / Aborted)`.
    fn next_pdv_header(&mut self) -> Result<PdvHeader, LinkError> {
        debug_assert_eq!(self.pdv_left, 0, "the previous PDV's data is consumed");
        if self.pdu_left == 0 {
            self.fill(PDU_HEADER_BYTES)?;
            let at = self.start;
            let kind = self.buffer[at];
            let len = be_u32(&self.buffer[at + 2..at + 6]);
            if kind == P_DATA_TF {
                if len > self.max_pdu_in {
                    return Err(LinkError::Protocol(format!(
                        "a P-DATA-TF PDU of {len} bytes, over the maximum of {} this side accepts",
                        self.max_pdu_in
                    )));
                }
                self.consume(PDU_HEADER_BYTES);
                self.pdu_left = len as usize;
            } else {
                return Err(self.other_pdu(kind, len));
            }
        }
        if self.pdu_left < PDV_HEADER_BYTES as usize {
            return Err(LinkError::Protocol(format!(
                "{} bytes left in a P-DATA-TF PDU, too few for a PDV item",
                self.pdu_left
            )));
        }
        self.fill(PDV_HEADER_BYTES as usize)?;
        let at = self.start;
        let item_len = be_u32(&self.buffer[at..at + 4]) as usize;
        let header = PdvHeader {
            context: self.buffer[at + 4],
            command: self.buffer[at + 5] & 0x01 != 0,
            last: self.buffer[at + 5] & 0x02 != 0,
        };
        if item_len < 2 || item_len + 4 > self.pdu_left {
            return Err(LinkError::Protocol(format!(
                "a PDV item of {item_len} bytes in a P-DATA-TF PDU with {} bytes left",
                self.pdu_left
            )));
        }
        self.consume(PDV_HEADER_BYTES as usize);
        self.pdu_left -= item_len + 4;
        self.pdv_left = item_len - 2;
        Ok(header)
    }

    /// A PDU other than P-DATA-TF: read whole and parsed by dicom-ul; what it means here.
    fn other_pdu(&mut self, kind: u8, len: u32) -> LinkError {
        let total = PDU_HEADER_BYTES + len as usize;
        if total > self.buffer.len() {
            return LinkError::Protocol(format!("a PDU of type {kind:02X} and {len} bytes"));
        }
        if let Err(e) = self.fill(total) {
            return e;
        }
        let parsed = dicom_ul::pdu::read_pdu(
            &self.buffer[self.start..self.start + total],
            self.max_pdu_in.clamp(
                dicom_ul::pdu::MINIMUM_PDU_SIZE,
                dicom_ul::pdu::MAXIMUM_PDU_SIZE,
            ),
            false,
        );
        self.consume(total);
        match parsed {
            Ok(Some(Pdu::ReleaseRQ)) => LinkError::Released,
            Ok(Some(Pdu::AbortRQ { .. })) => LinkError::Aborted,
            Ok(Some(other)) => LinkError::Protocol(format!(
                "unexpected {} PDU during data transfer",
                pdu_name(&other)
            )),
            Ok(None) => LinkError::Protocol(format!("an incomplete PDU of type {kind:02X}")),
            Err(e) => LinkError::Protocol(format!("an unreadable PDU of type {kind:02X}: {e}")),
        }
    }

    /// Hands the current PDV's data to `f` as it arrives, in slices of the read buffer.
    fn pdv_data(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<(), LinkError> {
        while self.pdv_left > 0 {
            if self.available() == 0 {
                self.read_some()?;
            }
            let take = self.available().min(self.pdv_left);
            f(&self.buffer[self.start..self.start + take]);
            self.consume(take);
            self.pdv_left -= take;
        }
        Ok(())
    }

    /// The next command set (its fragments joined, at most `COMMAND_BYTES_MAX` bytes).
    pub fn next_command(&mut self) -> Result<Incoming, LinkError> {
        let mut bytes = Vec::new();
        let mut context = None;
        loop {
            let header = match self.next_pdv_header() {
                Ok(header) => header,
                Err(LinkError::Released) if context.is_none() => return Ok(Incoming::Released),
                Err(LinkError::Aborted) => return Ok(Incoming::Aborted),
                Err(e) => return Err(e),
            };
            if !header.command {
                return Err(LinkError::Protocol(
                    "a data set fragment arrived where a command was expected".into(),
                ));
            }
            if *context.get_or_insert(header.context) != header.context {
                return Err(LinkError::Protocol(
                    "command fragments on different presentation contexts".into(),
                ));
            }
            if bytes.len() + self.pdv_left > command::COMMAND_BYTES_MAX {
                return Err(LinkError::Protocol(format!(
                    "command set over {} bytes",
                    command::COMMAND_BYTES_MAX
                )));
            }
            self.pdv_data(&mut |data| bytes.extend_from_slice(data))?;
            if header.last {
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

    /// Hands the data set that follows a command on `context` to `f`, fragment by fragment,
    /// as the bytes arrive.
    pub fn stream_data(&mut self, context: u8, f: &mut dyn FnMut(&[u8])) -> Result<(), LinkError> {
        loop {
            let header = self.next_pdv_header()?;
            if header.command {
                return Err(LinkError::Protocol(
                    "a command arrived in the middle of a data set".into(),
                ));
            }
            if header.context != context {
                return Err(LinkError::Protocol(format!(
                    "data set fragment on presentation context {} after a command on {context}",
                    header.context
                )));
            }
            self.pdv_data(f)?;
            if header.last {
                return Ok(());
            }
        }
    }

    /// A whole (small) data set of `context`: at most `DATA_SET_BYTES_MAX` bytes.
    pub fn read_data_set_bytes(&mut self, context: u8) -> Result<Vec<u8>, LinkError> {
        let mut bytes = Vec::new();
        let mut over = false;
        self.stream_data(context, &mut |data| {
            if bytes.len() + data.len() > DATA_SET_BYTES_MAX {
                over = true;
            } else {
                bytes.extend_from_slice(data);
            }
        })?;
        if over {
            return Err(LinkError::Protocol(format!(
                "data set over {DATA_SET_BYTES_MAX} bytes where an identifier was expected"
            )));
        }
        Ok(bytes)
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
    /// has arrived). Only a whole C-CANCEL that comes next is taken; anything else stays
    /// buffered for [`Link::next_command`].
    pub fn cancel_requested(&mut self, message_id: Option<u16>) -> Result<bool, LinkError> {
        debug_assert_eq!(self.pdv_left, 0, "called between messages");
        if self.available() < PDU_HEADER_BYTES + PDV_HEADER_BYTES as usize + 128 {
            // Whatever has arrived (without waiting for more).
            if self.wire.input_waiting()? {
                self.read_some()?;
            }
        }
        // Parse without consuming: [PDU header] PDV header, command data.
        let bytes = &self.buffer[self.start..self.end];
        let mut at = 0;
        let mut pdu_left = self.pdu_left;
        if pdu_left == 0 {
            if bytes.len() < PDU_HEADER_BYTES || bytes[0] != P_DATA_TF {
                return Ok(false);
            }
            pdu_left = be_u32(&bytes[2..6]) as usize;
            at = PDU_HEADER_BYTES;
        }
        let Some(pdv) = bytes.get(at..at + PDV_HEADER_BYTES as usize) else {
            return Ok(false);
        };
        let item_len = be_u32(pdv) as usize;
        let (command, last) = (pdv[5] & 0x01 != 0, pdv[5] & 0x02 != 0);
        if !command || !last || item_len < 2 || item_len + 4 > pdu_left {
            return Ok(false);
        }
        let data_at = at + PDV_HEADER_BYTES as usize;
        let Some(data) = bytes.get(data_at..data_at + item_len - 2) else {
            return Ok(false);
        };
        let Ok(cancel) = Command::decode(data) else {
            return Ok(false); // next_command reports it
        };
        if cancel.field != field::C_CANCEL_RQ
            || (message_id.is_some() && cancel.message_id_being_responded_to != message_id)
        {
            return Ok(false);
        }
        self.consume(data_at + item_len - 2);
        self.pdu_left = pdu_left - (item_len + 4);
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A TLS connection over loopback TCP: (server side as the listener has it, client side).
    fn tls_pair() -> (
        TlsStream,
        rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    ) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("names");
        let certificate = params.self_signed(&key).expect("certificate");
        let der = CertificateDer::from(certificate.der().to_vec());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let client_side = std::thread::spawn(move || {
            let socket = TcpStream::connect(address).expect("connect");
            let connection = rustls::ClientConnection::new(
                Arc::new(client),
                "localhost".try_into().expect("name"),
            )
            .expect("client");
            let mut stream = rustls::StreamOwned::new(connection, socket);
            while stream.conn.is_handshaking() {
                stream
                    .conn
                    .complete_io(&mut stream.sock)
                    .expect("client handshake");
            }
            stream
        });
        let (socket, _) = listener.accept().expect("accept");
        let connection = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let mut server_side = rustls::StreamOwned::new(connection, socket);
        while server_side.conn.is_handshaking() {
            server_side
                .conn
                .complete_io(&mut server_side.sock)
                .expect("server handshake");
        }
        (server_side, client_side.join().expect("client thread"))
    }

    fn eventually_waiting(stream: &mut TlsStream) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if tls_input_waiting(stream).expect("check") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn tls_input_is_seen_in_the_socket_and_in_what_rustls_already_decrypted() {
        let (mut server, mut client) = tls_pair();
        assert!(
            !tls_input_waiting(&mut server).expect("check"),
            "nothing sent yet"
        );
        client.write_all(b"C-CANCEL").expect("write");
        client.flush().expect("flush");
        assert!(eventually_waiting(&mut server), "sent bytes are input");
        // The socket stays blocking for the reads that follow.
        let mut two = [0u8; 2];
        server.read_exact(&mut two).expect("read");
        assert_eq!(&two, b"C-");
        // The rest is decrypted inside rustls, not in the socket: still input.
        assert!(tls_input_waiting(&mut server).expect("check"));
        let mut rest = [0u8; 6];
        server.read_exact(&mut rest).expect("read");
        assert_eq!(&rest, b"CANCEL");
        assert!(!tls_input_waiting(&mut server).expect("check"), "all read");
        // The peer closing is input too (a read reports it at once).
        client.conn.send_close_notify();
        client.conn.complete_io(&mut client.sock).expect("close");
        assert!(eventually_waiting(&mut server), "close is reported");
        let mut buffer = [0u8; 8];
        assert_eq!(server.read(&mut buffer).expect("read at close"), 0);
    }
}
