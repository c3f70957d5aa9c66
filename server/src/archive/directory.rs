//! Who may call: organisations (the data controllers and the registers they control) and the
//! identities that act for them, from the configuration.
//!
//! A DIMSE caller is identified by its calling AE title, a DICOMweb or API caller by its
//! bearer token, and either, under mutual TLS, by its client certificate (the organisation
//! OID it names and its subject CN, `crate::tls::identity`). In the national profile a caller
//! the directory does not know gets nothing; in the standalone profile every caller acts as
//! the one configured organisation's operator.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Controller type code system 1.2.246.537.5.40172: public healthcare (1) or a private
/// provider (2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerType {
    Public,
    Private,
}

impl ControllerType {
    pub fn parse(text: &str) -> Result<ControllerType, String> {
        match text.trim() {
            "public" | "1" => Ok(ControllerType::Public),
            "private" | "2" => Ok(ControllerType::Private),
            other => Err(format!(
                "controller type {other:?}: expected `public` (1) or `private` (2)"
            )),
        }
    }

    /// The code in 1.2.246.537.5.40172.
    pub fn code(self) -> u8 {
        match self {
            ControllerType::Public => 1,
            ControllerType::Private => 2,
        }
    }
}

/// A data controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Organisation {
    /// OID (public organisations from 1.2.246.537.6.40174, private ones from
    /// 1.2.246.537.6.202, independent practitioners from 1.2.246.537.6.203).
    pub oid: String,
    pub name: String,
    pub controller_type: ControllerType,
    /// The registers (OIDs) it controls; by default one register with the organisation's OID.
    pub registers: Vec<String>,
}

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A connecting system (PACS, RIS, modality, ECG or dental system) of its organisation:
    /// stores and reads under the register rules; organisers' systems also manage their
    /// authorizations.
    System,
    /// The patient portal: reads one patient's data at a time, on that patient's behalf,
    /// and sets or clears that patient's disclosure prohibition.
    Portal,
    /// An archive operator: administers quarantine, corrections, prohibitions and the audit
    /// log; reads every study (every read is audited).
    Operator,
    /// The patient data repository: announces documents.
    Registry,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role, String> {
        match text.trim() {
            "system" => Ok(Role::System),
            "portal" => Ok(Role::Portal),
            "operator" => Ok(Role::Operator),
            "registry" => Ok(Role::Registry),
            other => Err(format!(
                "role {other:?}: expected system, portal, operator or registry"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Portal => "portal",
            Role::Operator => "operator",
            Role::Registry => "registry",
        }
    }
}

/// A configured caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Configured id, written into every audit record.
    pub id: String,
    /// The organisation (OID) it acts for.
    pub organisation: String,
    pub role: Role,
    pub ae_titles: Vec<String>,
    pub tokens: Vec<String>,
}

/// The identities configuration as the directory takes it (the config file's
/// `[[organisations]]` and `[[identities]]`).
#[derive(Debug, Clone, Default)]
pub struct DirectoryConfig {
    pub organisations: Vec<Organisation>,
    pub identities: Vec<Identity>,
    /// Identity id → the client certificate subject CNs it answers to (`["*"]`: any CN of
    /// its organisation that no other identity lists).
    pub certificate_names: HashMap<String, Vec<String>>,
}

/// The wildcard of `certificate_names`.
pub const ANY_CERTIFICATE_NAME: &str = "*";
/// Longest certificate name accepted (a CN is at most 64 characters, RFC 5280's upper bound).
pub const CERTIFICATE_NAME_CHARS_MAX: usize = 64;

/// Why a client certificate matches no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateMiss {
    /// The organisation OID it names is not configured.
    UnknownOrganisation,
    /// The organisation is known but no identity lists the CN and none takes `*`.
    NoIdentity,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Directory {
    organisations: HashMap<String, Organisation>,
    /// Register OID → controlling organisation OID.
    controllers: HashMap<String, String>,
    by_ae_title: HashMap<String, Arc<Identity>>,
    by_token: HashMap<String, Arc<Identity>>,
    /// (organisation OID, lower-case certificate CN) → identity.
    by_certificate_name: HashMap<(String, String), Arc<Identity>>,
    /// Organisation OID → its identity with `certificate_names = ["*"]`.
    by_certificate_wildcard: HashMap<String, Arc<Identity>>,
    /// Identity id → identity (operator commands act as a configured identity).
    by_id: HashMap<String, Arc<Identity>>,
    /// Standalone: the one identity every caller gets.
    standalone: Option<Arc<Identity>>,
}

/// Tokens shorter than this are refused at configuration time: a bearer token is a secret.
pub const TOKEN_CHARS_MIN: usize = 16;

impl Directory {
    /// The national profile's directory; every reference is checked.
    pub fn national(config: DirectoryConfig) -> Result<Directory, String> {
        let mut organisations = HashMap::new();
        let mut controllers = HashMap::new();
        for mut org in config.organisations {
            if !super::documents::is_oid(&org.oid) {
                return Err(format!("organisation {:?}: oid is not an OID", org.oid));
            }
            if org.registers.is_empty() {
                org.registers.push(org.oid.clone());
            }
            for register in &org.registers {
                if !super::documents::is_oid(register) {
                    return Err(format!(
                        "organisation {}: register {register:?} is not an OID",
                        org.oid
                    ));
                }
                if let Some(other) = controllers.insert(register.clone(), org.oid.clone()) {
                    return Err(format!(
                        "register {register} is controlled by both {other} and {}",
                        org.oid
                    ));
                }
            }
            if organisations.insert(org.oid.clone(), org.clone()).is_some() {
                return Err(format!("organisation {} is configured twice", org.oid));
            }
        }
        let mut by_ae_title = HashMap::new();
        let mut by_token = HashMap::new();
        let mut by_id = HashMap::new();
        let mut by_certificate_name = HashMap::new();
        let mut by_certificate_wildcard: HashMap<String, Arc<Identity>> = HashMap::new();
        let mut certificate_names = config.certificate_names;
        for identity in config.identities {
            if identity.id.trim().is_empty() || by_id.contains_key(&identity.id) {
                return Err(format!(
                    "identity id {:?} is empty or used twice",
                    identity.id
                ));
            }
            if !organisations.contains_key(&identity.organisation) {
                return Err(format!(
                    "identity {}: organisation {:?} is not configured",
                    identity.id, identity.organisation
                ));
            }
            let names = certificate_names.remove(&identity.id).unwrap_or_default();
            if identity.ae_titles.is_empty() && identity.tokens.is_empty() && names.is_empty() {
                return Err(format!(
                    "identity {} has no ae_titles, tokens or certificate_names: nothing could authenticate as it",
                    identity.id
                ));
            }
            let identity = Arc::new(identity);
            by_id.insert(identity.id.clone(), identity.clone());
            for name in &names {
                let name = name.trim();
                if name == ANY_CERTIFICATE_NAME {
                    if let Some(other) = by_certificate_wildcard
                        .insert(identity.organisation.clone(), identity.clone())
                    {
                        return Err(format!(
                            "identities {} and {} of organisation {} both have certificate_names = [\"*\"]: a certificate could not tell them apart",
                            other.id, identity.id, identity.organisation
                        ));
                    }
                    continue;
                }
                if name.is_empty()
                    || name.len() > CERTIFICATE_NAME_CHARS_MAX
                    || name.contains('*')
                    || name.chars().any(char::is_control)
                {
                    return Err(format!(
                        "identity {}: certificate name {name:?} must be a whole name (1 to {CERTIFICATE_NAME_CHARS_MAX} characters, the certificate's subject CN) or \"*\"",
                        identity.id
                    ));
                }
                let key = (identity.organisation.clone(), name.to_ascii_lowercase());
                if by_certificate_name.insert(key, identity.clone()).is_some() {
                    return Err(format!(
                        "certificate name {name} of organisation {} belongs to two identities",
                        identity.organisation
                    ));
                }
            }
            for ae in &identity.ae_titles {
                let ae = ae.trim();
                if ae.is_empty() || ae.len() > 16 {
                    return Err(format!(
                        "identity {}: AE title {ae:?} must be 1 to 16 characters",
                        identity.id
                    ));
                }
                if matches!(identity.role, Role::Portal | Role::Registry) {
                    return Err(format!(
                        "identity {}: a {} identity calls over HTTP only (no AE titles)",
                        identity.id,
                        identity.role.name()
                    ));
                }
                if by_ae_title
                    .insert(ae.to_string(), identity.clone())
                    .is_some()
                {
                    return Err(format!("AE title {ae} belongs to two identities"));
                }
            }
            for token in &identity.tokens {
                if token.len() < TOKEN_CHARS_MIN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "identity {}: a token must be at least {TOKEN_CHARS_MIN} printable ASCII characters",
                        identity.id
                    ));
                }
                if by_token.insert(token.clone(), identity.clone()).is_some() {
                    return Err(format!("a token of identity {} is used twice", identity.id));
                }
            }
        }
        if let Some(id) = certificate_names.keys().next() {
            return Err(format!(
                "certificate_names are given for identity {id:?}, which is not configured"
            ));
        }
        if by_ae_title.is_empty()
            && by_token.is_empty()
            && by_certificate_name.is_empty()
            && by_certificate_wildcard.is_empty()
        {
            return Err("the national profile needs at least one [[identities]] entry (nobody could call otherwise); for a local trial use the standalone profile".into());
        }
        Ok(Directory {
            organisations,
            controllers,
            by_ae_title,
            by_token,
            by_certificate_name,
            by_certificate_wildcard,
            by_id,
            standalone: None,
        })
    }

    /// The standalone profile's directory: every caller is `organisation`'s operator, which
    /// controls one register of the same name.
    pub fn standalone(organisation: &str) -> Directory {
        let org = Organisation {
            oid: organisation.to_string(),
            name: organisation.to_string(),
            controller_type: ControllerType::Public,
            registers: vec![organisation.to_string()],
        };
        let identity = Arc::new(Identity {
            id: "standalone".into(),
            organisation: organisation.to_string(),
            role: Role::Operator,
            ae_titles: Vec::new(),
            tokens: Vec::new(),
        });
        Directory {
            controllers: HashMap::from([(organisation.to_string(), organisation.to_string())]),
            organisations: HashMap::from([(organisation.to_string(), org)]),
            by_ae_title: HashMap::new(),
            by_token: HashMap::new(),
            by_certificate_name: HashMap::new(),
            by_certificate_wildcard: HashMap::new(),
            by_id: HashMap::new(),
            standalone: Some(identity),
        }
    }

    pub fn is_standalone(&self) -> bool {
        self.standalone.is_some()
    }

    /// The identity of a DIMSE caller.
    pub fn by_ae_title(&self, calling_ae_title: &str) -> Option<Arc<Identity>> {
        if let Some(identity) = &self.standalone {
            return Some(identity.clone());
        }
        self.by_ae_title.get(calling_ae_title.trim()).cloned()
    }

    /// The identity of an HTTP caller (`Authorization: Bearer <token>`; `None` when absent).
    pub fn by_token(&self, token: Option<&str>) -> Option<Arc<Identity>> {
        if let Some(identity) = &self.standalone {
            return Some(identity.clone());
        }
        self.by_token.get(token?).cloned()
    }

    /// The identity of a caller with a verified client certificate naming `organisation` and
    /// subject CN `common_name`: the identity of that organisation listing the CN (ASCII case
    /// ignored), else its identity with `certificate_names = ["*"]`. Standalone: the one
    /// identity. `crate::tls::identity::identify` reads the certificate and words refusals.
    pub fn by_certificate(
        &self,
        organisation: &str,
        common_name: Option<&str>,
    ) -> Result<Arc<Identity>, CertificateMiss> {
        if let Some(identity) = &self.standalone {
            return Ok(identity.clone());
        }
        if !self.organisations.contains_key(organisation) {
            return Err(CertificateMiss::UnknownOrganisation);
        }
        let named = common_name.and_then(|cn| {
            self.by_certificate_name
                .get(&(organisation.to_string(), cn.trim().to_ascii_lowercase()))
        });
        named
            .or_else(|| self.by_certificate_wildcard.get(organisation))
            .cloned()
            .ok_or(CertificateMiss::NoIdentity)
    }

    /// A configured identity by its id, for operator commands (`kuvasto import --as`); in
    /// the standalone profile, the one identity whatever the id.
    pub fn by_id(&self, id: &str) -> Option<Arc<Identity>> {
        if let Some(identity) = &self.standalone {
            return Some(identity.clone());
        }
        self.by_id.get(id.trim()).cloned()
    }

    /// The AE titles of the national profile's identities, sorted.
    pub fn ae_titles(&self) -> Vec<String> {
        let mut titles: Vec<String> = self.by_ae_title.keys().cloned().collect();
        titles.sort();
        titles
    }

    pub fn organisation(&self, oid: &str) -> Option<&Organisation> {
        self.organisations.get(oid)
    }

    pub fn organisations(&self) -> impl Iterator<Item = &Organisation> {
        self.organisations.values()
    }

    /// The organisation controlling `register`, if the register is known.
    pub fn controller_of(&self, register: &str) -> Option<&str> {
        self.controllers.get(register).map(String::as_str)
    }

    /// The register an organisation writes its own studies into when nothing else names one.
    pub fn own_register(&self, organisation: &str) -> Option<&str> {
        self.organisations
            .get(organisation)?
            .registers
            .first()
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(oid: &str, registers: &[&str]) -> Organisation {
        Organisation {
            oid: oid.into(),
            name: format!("org {oid}"),
            controller_type: ControllerType::Public,
            registers: registers.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn identity(
        id: &str,
        organisation: &str,
        role: Role,
        ae: &[&str],
        tokens: &[&str],
    ) -> Identity {
        Identity {
            id: id.into(),
            organisation: organisation.into(),
            role,
            ae_titles: ae.iter().map(|a| a.to_string()).collect(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn national_directory_finds_callers_and_controllers() {
        let directory = Directory::national(DirectoryConfig {
            organisations: vec![
                org("1.2.246.10.1", &[]),
                org("1.2.246.10.2", &["1.2.246.10.2.7"]),
            ],
            identities: vec![
                identity(
                    "pacs",
                    "1.2.246.10.1",
                    Role::System,
                    &["PACS"],
                    &["token-of-the-pacs-1"],
                ),
                identity(
                    "portal",
                    "1.2.246.10.2",
                    Role::Portal,
                    &[],
                    &["token-of-the-portal"],
                ),
            ],
            ..DirectoryConfig::default()
        })
        .expect("valid");
        assert_eq!(
            directory.by_ae_title("PACS ").map(|i| i.id.clone()),
            Some("pacs".into())
        );
        assert!(directory.by_ae_title("OTHER").is_none());
        assert_eq!(
            directory
                .by_token(Some("token-of-the-portal"))
                .map(|i| i.role),
            Some(Role::Portal)
        );
        assert!(directory.by_token(None).is_none());
        assert!(directory.by_token(Some("token-of-the-pacs-2")).is_none());
        assert_eq!(
            directory.by_id("portal").map(|i| i.role),
            Some(Role::Portal)
        );
        assert!(directory.by_id("nobody").is_none());
        let standalone = Directory::standalone("local");
        assert_eq!(
            standalone.by_id("anything").map(|i| i.id.clone()),
            Some("standalone".into())
        );
        assert_eq!(
            directory.controller_of("1.2.246.10.1"),
            Some("1.2.246.10.1")
        );
        assert_eq!(
            directory.controller_of("1.2.246.10.2.7"),
            Some("1.2.246.10.2")
        );
        assert_eq!(directory.controller_of("1.2.246.10.2"), None);
    }

    #[test]
    fn national_directory_refuses_broken_configuration() {
        let cases = [
            (vec![org("1.2.246.10.1", &[])], vec![], "at least one"),
            (
                vec![org("not-an-oid", &[])],
                vec![identity("a", "not-an-oid", Role::System, &["A"], &[])],
                "not an OID",
            ),
            (
                vec![org("1.2.3", &[])],
                vec![identity("a", "1.2.4", Role::System, &["A"], &[])],
                "not configured",
            ),
            (
                vec![org("1.2.3", &[])],
                vec![identity("a", "1.2.3", Role::System, &[], &["short"])],
                "at least 16",
            ),
            (
                vec![org("1.2.3", &[])],
                vec![identity("a", "1.2.3", Role::Portal, &["PORTAL"], &[])],
                "HTTP only",
            ),
            (
                vec![org("1.2.3", &["1.2.9"]), org("1.2.4", &["1.2.9"])],
                vec![identity("a", "1.2.3", Role::System, &["A"], &[])],
                "controlled by both",
            ),
            (
                vec![org("1.2.3", &[])],
                vec![
                    identity("a", "1.2.3", Role::System, &["A"], &[]),
                    identity("b", "1.2.3", Role::System, &["A"], &[]),
                ],
                "two identities",
            ),
        ];
        for (organisations, identities, expected) in cases {
            let err = Directory::national(DirectoryConfig {
                organisations,
                identities,
                ..DirectoryConfig::default()
            })
            .expect_err(expected);
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }

    #[test]
    fn standalone_directory_makes_everyone_the_operator() {
        let directory = Directory::standalone("local");
        let identity = directory.by_ae_title("ANY").expect("everyone");
        assert_eq!(identity.role, Role::Operator);
        assert_eq!(
            directory.by_token(None).map(|i| i.organisation.clone()),
            Some("local".into())
        );
        assert_eq!(directory.controller_of("local"), Some("local"));
    }
}
