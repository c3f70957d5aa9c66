//! Who may read and write what: registers, purchased-service authorizations, disclosure
//! prohibitions, the portal's one patient. Pure decisions over the directory and the rules'
//! state at an instant; `Archive` calls them on every read and write path.

use super::directory::{Directory, Identity, Role};
use super::state::{Authorization, Maps, StudyRecord};
use super::time::format_ms;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
}

impl Right {
    fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
        }
    }
}

/// Why an authorization does not serve now, or `None` when it does.
fn authorization_gap(
    a: &Authorization,
    right: Right,
    patient: &str,
    service_event: &str,
    now_ms: i64,
) -> Option<String> {
    if let Some(revoked) = a.revoked_ms {
        if revoked <= now_ms {
            return Some(format!(
                "authorization {} was revoked at {}",
                a.id,
                format_ms(revoked)
            ));
        }
    }
    if now_ms < a.valid_from_ms {
        return Some(format!(
            "authorization {} is valid only from {}",
            a.id,
            format_ms(a.valid_from_ms)
        ));
    }
    if now_ms >= a.valid_until_ms {
        return Some(format!(
            "authorization {} expired at {}",
            a.id,
            format_ms(a.valid_until_ms)
        ));
    }
    let granted = match right {
        Right::Read => a.read,
        Right::Write => a.write,
    };
    if !granted {
        return Some(format!(
            "authorization {} does not grant {} access",
            a.id,
            right.name()
        ));
    }
    if !a.patients.is_empty() && !a.patients.iter().any(|p| p == patient) {
        return Some(format!(
            "authorization {} does not cover this patient",
            a.id
        ));
    }
    if !a.service_events.is_empty() && !a.service_events.iter().any(|s| s == service_event) {
        return Some(format!(
            "authorization {} does not cover service event {service_event:?}",
            a.id
        ));
    }
    None
}

/// Whether `organisation` may use `register` for `right` on this patient's service event:
/// it controls the register, or holds an authorization from its controller that serves now.
/// `Ok` names how ("controller" or the authorization id).
#[allow(clippy::too_many_arguments)] // each argument is one fact of the decision
pub fn register_right(
    directory: &Directory,
    maps: &Maps,
    organisation: &str,
    register: &str,
    right: Right,
    patient: &str,
    service_event: &str,
    now_ms: i64,
) -> Result<String, String> {
    let Some(controller) = directory.controller_of(register) else {
        return Err(format!("register {register} is not known to this archive"));
    };
    if controller == organisation {
        return Ok("controller".into());
    }
    let mut gaps = Vec::new();
    for a in maps
        .authorizations
        .values()
        .filter(|a| a.producer == organisation && a.register == register)
    {
        match authorization_gap(a, right, patient, service_event, now_ms) {
            None => return Ok(a.id.clone()),
            Some(gap) => gaps.push(gap),
        }
    }
    // The reason comes first: DIMSE carries it in a 64-character ErrorComment.
    if gaps.is_empty() {
        Err(format!(
            "no authorization: organisation {organisation} neither controls register {register} (controller {controller}) nor holds an authorization for it"
        ))
    } else {
        Err(format!(
            "{}; so organisation {organisation} may not {} register {register}",
            gaps.join("; "),
            right.name(),
        ))
    }
}

/// Whether the caller may read a study the rules know.
pub fn may_read_study(
    directory: &Directory,
    maps: &Maps,
    identity: &Identity,
    on_behalf_of: Option<&str>,
    study: &StudyRecord,
    now_ms: i64,
) -> Result<(), String> {
    if directory.is_standalone() {
        return Ok(());
    }
    if !study.is_linked() {
        if identity.role == Role::Operator {
            return Ok(());
        }
        return Err(format!(
            "study {} is not available ({})",
            study.study,
            match &study.state {
                super::state::StudyState::Quarantined { .. } => "in quarantine",
                super::state::StudyState::Invalidated { .. } => "invalidated",
                super::state::StudyState::Expired { .. } => "expired",
                super::state::StudyState::Linked => "linked",
            }
        ));
    }
    match identity.role {
        Role::Operator => Ok(()),
        Role::Registry => {
            Err("the registry identity announces documents; it reads no images".into())
        }
        Role::Portal => match on_behalf_of {
            Some(patient) if patient == study.patient => Ok(()),
            Some(_) => Err(format!(
                "study {} is not the data of the patient the portal acts for",
                study.study
            )),
            None => Err("the portal must say which patient it acts for".into()),
        },
        Role::System => {
            let controller = directory.controller_of(&study.register).unwrap_or_default();
            if maps.prohibitions.contains_key(&study.patient) {
                return if controller == identity.organisation {
                    Ok(())
                } else {
                    Err(format!(
                        "the patient has prohibited disclosure: study {} is available only to its controller {controller}",
                        study.study
                    ))
                };
            }
            register_right(
                directory,
                maps,
                &identity.organisation,
                &study.register,
                Right::Read,
                &study.patient,
                &study.service_event,
                now_ms,
            )
            .map(|_| ())
        }
    }
}
