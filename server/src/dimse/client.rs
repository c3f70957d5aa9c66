//! Associations this archive opens itself (C-MOVE destinations, Storage Commitment results on
//! a new association, Instance Availability Notifications), with the listener's limits:
//! ARTIM for the connection and negotiation, the idle timeout afterwards, TCP_NODELAY.

use super::link::Link;
use crate::config::{DimseSection, Peer};
use dicom_ul::association::client::ClientAssociation;
use std::net::TcpStream;
use std::time::Duration;

/// One presentation context to propose.
pub struct Proposal {
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
    /// SCU/SCP role selection (scu, scp) to propose for the abstract syntax, if any.
    pub roles: Option<(bool, bool)>,
}

/// Opens an association to `peer` proposing `proposals`.
pub fn connect(
    config: &DimseSection,
    peer: &Peer,
    proposals: Vec<Proposal>,
) -> Result<Link<ClientAssociation<TcpStream>>, dicom_ul::association::Error> {
    let mut options = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title(config.ae_title.clone())
        .called_ae_title(peer.ae_title.clone())
        .max_pdu_length(config.max_pdu_bytes)
        .connection_timeout(Duration::from_secs(config.artim_timeout_seconds))
        .read_timeout(Duration::from_secs(config.artim_timeout_seconds))
        .write_timeout(Duration::from_secs(config.artim_timeout_seconds));
    for proposal in proposals {
        if let Some((scu, scp)) = proposal.roles {
            options = options.with_role_selection(proposal.abstract_syntax.clone(), scu, scp);
        }
        options =
            options.with_presentation_context(proposal.abstract_syntax, proposal.transfer_syntaxes);
    }
    let mut association = options.establish(peer.address.as_str())?;
    let socket = association.inner_stream();
    let idle = Some(Duration::from_secs(config.idle_timeout_seconds));
    let _ = socket.set_nodelay(true);
    let _ = socket.set_read_timeout(idle);
    let _ = socket.set_write_timeout(idle);
    Ok(Link::new(association))
}
