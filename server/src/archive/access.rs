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

/// Authorizations a refusal names, at most (the newest).
const GAPS_NAMED_MAX: usize = 3;

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
    let mut held: Vec<&Authorization> = maps
        .authorizations
        .values()
        .filter(|a| a.producer == organisation && a.register == register)
        .collect();
    // The newest first: the reason names the authorizations most likely meant.
    held.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
    for a in &held {
        match authorization_gap(a, right, patient, service_event, now_ms) {
            None => return Ok(a.id.clone()),
            Some(gap) => gaps.push(gap),
        }
    }
    if gaps.len() > GAPS_NAMED_MAX {
        let more = gaps.len() - GAPS_NAMED_MAX;
        gaps.truncate(GAPS_NAMED_MAX);
        gaps.push(format!("{more} older authorizations do not serve either"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::directory::{ControllerType, DirectoryConfig, Organisation};
    use crate::archive::state::{Prohibition, StudyState, RECORD_VERSION};

    const COUNTY: &str = "1.2.246.10.1";
    const PRODUCER: &str = "1.2.246.10.2";
    const OTHER: &str = "1.2.246.10.3";
    const NOW: i64 = 1_000_000;

    fn directory() -> Directory {
        let org = |oid: &str| Organisation {
            oid: oid.into(),
            name: oid.into(),
            controller_type: ControllerType::Public,
            registers: vec![],
        };
        Directory::national(DirectoryConfig {
            organisations: vec![org(COUNTY), org(PRODUCER), org(OTHER)],
            identities: vec![identity("x", COUNTY, Role::System)],
            ..DirectoryConfig::default()
        })
        .expect("directory")
    }

    fn identity(id: &str, organisation: &str, role: Role) -> Identity {
        Identity {
            id: id.into(),
            organisation: organisation.into(),
            role,
            ae_titles: vec![id.to_uppercase()],
            tokens: vec![],
        }
    }

    fn authorization(id: &str, read: bool, write: bool) -> Authorization {
        Authorization {
            v: RECORD_VERSION,
            id: id.into(),
            organiser: COUNTY.into(),
            register: COUNTY.into(),
            producer: PRODUCER.into(),
            valid_from_ms: NOW - 10,
            valid_until_ms: NOW + 10,
            read,
            write,
            patients: vec![],
            service_events: vec![],
            created_by: String::new(),
            created_ms: 0,
            revoked_by: String::new(),
            revoked_ms: None,
        }
    }

    fn study(patient: &str) -> StudyRecord {
        StudyRecord {
            v: RECORD_VERSION,
            study: "1.2.3".into(),
            patient: patient.into(),
            register: COUNTY.into(),
            producer: PRODUCER.into(),
            producer_system: String::new(),
            service_event: "1.2.246.10.1.7".into(),
            accession: String::new(),
            examination_code: String::new(),
            content_type: String::new(),
            documents: vec![],
            state: StudyState::Linked,
            created_ms: 0,
            changed_ms: 0,
        }
    }

    fn with(authorizations: Vec<Authorization>) -> Maps {
        let mut maps = Maps::default();
        for a in authorizations {
            maps.authorizations.insert(a.id.clone(), a);
        }
        maps
    }

    fn write(maps: &Maps, organisation: &str) -> Result<String, String> {
        register_right(
            &directory(),
            maps,
            organisation,
            COUNTY,
            Right::Write,
            "p",
            "1.2.246.10.1.7",
            NOW,
        )
    }

    #[test]
    fn the_controller_writes_and_others_need_a_serving_authorization() {
        let d = directory();
        assert_eq!(write(&Maps::default(), COUNTY).as_deref(), Ok("controller"));
        let none = write(&Maps::default(), PRODUCER).unwrap_err();
        assert!(none.starts_with("no authorization"), "{none}");
        assert_eq!(
            write(&with(vec![authorization("a", true, true)]), PRODUCER).as_deref(),
            Ok("a")
        );
        let unknown = register_right(
            &d,
            &Maps::default(),
            COUNTY,
            "9.9",
            Right::Read,
            "p",
            "",
            NOW,
        );
        assert!(unknown.unwrap_err().contains("not known"));
        let mut revoked = authorization("r", true, true);
        revoked.revoked_ms = Some(NOW - 1);
        let mut expired = authorization("e", true, true);
        expired.valid_until_ms = NOW;
        let mut early = authorization("f", true, true);
        early.valid_from_ms = NOW + 1;
        let read_only = authorization("o", true, false);
        let mut other_patient = authorization("q", true, true);
        other_patient.patients = vec!["someone else".into()];
        let mut other_event = authorization("s", true, true);
        other_event.service_events = vec!["1.2.246.10.1.8".into()];
        for (a, gap) in [
            (revoked.clone(), "was revoked"),
            (expired, "expired at"),
            (early, "valid only from"),
            (read_only, "does not grant write"),
            (other_patient, "does not cover this patient"),
            (other_event, "does not cover service event"),
        ] {
            let err = write(&with(vec![a]), PRODUCER).unwrap_err();
            assert!(
                err.starts_with("authorization") && err.contains(gap),
                "{err}"
            );
        }
        // A revocation in the future has not happened yet; any serving authorization wins.
        revoked.revoked_ms = Some(NOW + 5);
        assert!(write(&with(vec![revoked]), PRODUCER).is_ok());
        let maps = with(vec![
            authorization("o", true, false),
            authorization("w", false, true),
        ]);
        assert_eq!(write(&maps, PRODUCER).as_deref(), Ok("w"));
        assert!(
            write(&maps, OTHER).is_err(),
            "an authorization serves its producer only"
        );
    }

    #[test]
    fn reads_follow_registers_prohibitions_and_the_portal_patient() {
        let d = directory();
        let record = study("p1");
        let read = |maps: &Maps, who: &Identity, patient: Option<&str>| {
            may_read_study(&d, maps, who, patient, &record, NOW)
        };
        let county = identity("c", COUNTY, Role::System);
        let producer = identity("p", PRODUCER, Role::System);
        let portal = identity("portal", OTHER, Role::Portal);
        let operator = identity("op", OTHER, Role::Operator);
        let registry = identity("reg", OTHER, Role::Registry);
        let authorized = with(vec![authorization("a", true, false)]);
        assert!(read(&Maps::default(), &county, None).is_ok());
        assert!(
            read(&Maps::default(), &producer, None).is_err(),
            "producing is not reading"
        );
        assert!(read(&authorized, &producer, None).is_ok());
        assert!(read(
            &with(vec![authorization("w", false, true)]),
            &producer,
            None
        )
        .is_err());
        assert!(read(&Maps::default(), &portal, Some("p1")).is_ok());
        assert!(read(&Maps::default(), &portal, Some("p2")).is_err());
        assert!(read(&Maps::default(), &portal, None).is_err());
        assert!(read(&Maps::default(), &registry, None).is_err());
        assert!(read(&Maps::default(), &operator, None).is_ok());
        let mut prohibited = with(vec![authorization("a", true, false)]);
        prohibited.prohibitions.insert(
            "p1".into(),
            Prohibition {
                v: RECORD_VERSION,
                patient: "p1".into(),
                set_by: String::new(),
                set_ms: 0,
            },
        );
        let err = read(&prohibited, &producer, None).unwrap_err();
        assert!(err.contains("prohibited disclosure"), "{err}");
        assert!(
            read(&prohibited, &county, None).is_ok(),
            "the controller still reads"
        );
        assert!(
            read(&prohibited, &portal, Some("p1")).is_ok(),
            "the patient still reads"
        );
        // Quarantined or invalidated studies: operators only.
        let mut held = study("p1");
        held.state = StudyState::Quarantined {
            reason: "documents first".into(),
            since_ms: 0,
        };
        assert!(may_read_study(&d, &authorized, &county, None, &held, NOW).is_err());
        assert!(may_read_study(&d, &authorized, &operator, None, &held, NOW).is_ok());
        let standalone = Directory::standalone("local");
        assert!(may_read_study(&standalone, &Maps::default(), &producer, None, &held, NOW).is_ok());
    }
}
