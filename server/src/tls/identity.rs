//! From a verified client certificate to the identity it acts as, the one place both
//! protocols ask.
//!
//! The certificate names an organisation OID where `tls.organisation_oid_from` says (a subject
//! attribute, or a subjectAltName URI `urn:oid:<oid>`), and its subject common name (CN)
//! names the system. The identity is the `[[identities]]` entry of that organisation whose
//! `certificate_names` lists the CN; failing that, the one identity of that organisation with
//! `certificate_names = ["*"]` ([`Directory::by_certificate`]). In the standalone profile every
//! certificate that verified is the one operator, as every caller is.

use super::OidSource;
use crate::archive::directory::{CertificateMiss, Directory, Identity};
use std::sync::Arc;

/// OID of the organizationIdentifier attribute (X.520).
const ORGANIZATION_IDENTIFIER: &str = "2.5.4.97";
/// OID of organizationName (O).
const ORGANIZATION_NAME: &str = "2.5.4.10";
/// OID of organizationalUnitName (OU).
const ORGANIZATIONAL_UNIT: &str = "2.5.4.11";
/// OID of commonName (CN).
const COMMON_NAME: &str = "2.5.4.3";
/// The URI form of an OID in a subjectAltName (RFC 3061).
const URN_OID: &str = "urn:oid:";

/// What a verified client certificate says about its holder, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The organisation OID, or why none could be read.
    pub organisation: Result<String, String>,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The subject, for logs and refusals.
    pub subject: String,
}

impl CertificateFacts {
    /// Reads a DER certificate (one the TLS layer has verified).
    pub fn read(der: &[u8], from: OidSource) -> CertificateFacts {
        let certificate = match x509_parser::parse_x509_certificate(der) {
            Ok((_, certificate)) => certificate,
            Err(e) => {
                return CertificateFacts {
                    organisation: Err(format!("the certificate cannot be read: {e}")),
                    common_name: None,
                    subject: String::new(),
                }
            }
        };
        let subject = certificate.subject();
        let attributes = |oid: &str| -> Vec<String> {
            subject
                .iter_attributes()
                .filter(|a| a.attr_type().to_id_string() == oid)
                .filter_map(|a| a.as_str().ok())
                .map(|v| v.trim().to_string())
                .collect()
        };
        let common_name = attributes(COMMON_NAME).into_iter().next();
        let candidates = match from {
            OidSource::SubjectOrganizationIdentifier => attributes(ORGANIZATION_IDENTIFIER),
            OidSource::SubjectOrganization => attributes(ORGANIZATION_NAME),
            OidSource::SubjectOrganizationalUnit => attributes(ORGANIZATIONAL_UNIT),
            OidSource::SubjectCommonName => attributes(COMMON_NAME),
            OidSource::SanUri => match certificate.subject_alternative_name() {
                Ok(Some(san)) => san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .filter_map(|uri| {
                        let prefix = uri.get(..URN_OID.len())?;
                        prefix
                            .eq_ignore_ascii_case(URN_OID)
                            .then(|| uri[URN_OID.len()..].trim().to_string())
                    })
                    .collect(),
                Ok(None) => Vec::new(),
                Err(e) => {
                    return CertificateFacts {
                        organisation: Err(format!("its subjectAltName cannot be read: {e}")),
                        common_name,
                        subject: subject.to_string(),
                    }
                }
            },
        };
        CertificateFacts {
            organisation: organisation_oid(candidates, from),
            common_name,
            subject: subject.to_string(),
        }
    }

    /// `CN pacs.example.fi`, or `no CN`.
    fn cn_text(&self) -> String {
        match &self.common_name {
            Some(cn) => format!("CN {cn}"),
            None => "no CN".into(),
        }
    }
}

/// The one OID among the values found (others, such as an OU naming a department beside the
/// OU holding the OID, are ignored); none, or two different ones, is a refusal.
fn organisation_oid(candidates: Vec<String>, from: OidSource) -> Result<String, String> {
    let mut oids: Vec<String> = candidates
        .into_iter()
        .filter(|v| crate::archive::documents::is_oid(v))
        .collect();
    oids.sort();
    oids.dedup();
    match oids.as_slice() {
        [oid] => Ok(oid.clone()),
        [] => Err(format!("it names no organisation OID in {}", from.name())),
        many => Err(format!(
            "it names {} different organisation OIDs in {} ({})",
            many.len(),
            from.name(),
            many.join(", ")
        )),
    }
}

/// The identity a verified client certificate acts as; the refusal names the organisation
/// OID and the CN (HTTP answers it with 403, DIMSE rejects the association).
pub fn identify(directory: &Directory, facts: &CertificateFacts) -> Result<Arc<Identity>, String> {
    if directory.is_standalone() {
        return directory
            .by_certificate("", facts.common_name.as_deref())
            .map_err(|_| "the standalone profile has no identity".to_string());
    }
    let organisation = facts.organisation.as_ref().map_err(|reason| {
        format!(
            "client certificate ({}) is refused: {reason}",
            if facts.subject.is_empty() {
                "unreadable subject"
            } else {
                &facts.subject
            }
        )
    })?;
    directory
        .by_certificate(organisation, facts.common_name.as_deref())
        .map_err(|miss| match miss {
            CertificateMiss::UnknownOrganisation => format!(
                "client certificate for organisation {organisation} ({}) names an organisation this archive does not know",
                facts.cn_text()
            ),
            CertificateMiss::NoIdentity => format!(
                "client certificate for organisation {organisation} ({}) matches no identity",
                facts.cn_text()
            ),
        })
}

/// A DIMSE caller with a verified client certificate: the certificate's identity, which must
/// also own the calling AE title (a certificate of organisation A never acts as B's AE title).
pub fn identify_association(
    directory: &Directory,
    facts: &CertificateFacts,
    calling_ae_title: &str,
) -> Result<Arc<Identity>, String> {
    let identity = identify(directory, facts)?;
    if directory.is_standalone() {
        return Ok(identity);
    }
    let calling = calling_ae_title.trim();
    if identity.ae_titles.iter().any(|t| t.trim() == calling) {
        Ok(identity)
    } else {
        Err(format!(
            "client certificate for organisation {} ({}) is identity {}, which does not own calling AE title {calling:?}",
            identity.organisation,
            facts.cn_text(),
            identity.id
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    const COUNTY: &str = "1.2.246.10.1001";
    const COMPANY: &str = "1.2.246.10.2002";

    /// A self-signed certificate (the mapping reads certificates the TLS layer verified; who
    /// signed them does not matter here).
    fn certificate(subject: &[(DnType, &str)], san_uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = san_uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("IA5 URI")))
            .collect();
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    fn organization_identifier() -> DnType {
        DnType::CustomDnType(vec![2, 5, 4, 97])
    }

    fn directory(identities: &str) -> Directory {
        Config::from_toml(&format!(
            "[archive]\nprofile = \"national\"\n\
             [[organisations]]\noid = \"{COUNTY}\"\nname = \"County\"\ncontroller_type = \"public\"\n\
             [[organisations]]\noid = \"{COMPANY}\"\nname = \"Company\"\ncontroller_type = \"private\"\n\
             {identities}"
        ))
        .expect("config")
        .directory()
        .expect("directory")
    }

    const TWO_SYSTEMS: &str = "[[identities]]\nid = \"county-pacs\"\norganisation = \"1.2.246.10.1001\"\nrole = \"system\"\n\
         ae_titles = [\"COUNTYPACS\"]\ncertificate_names = [\"pacs.county.example\"]\n\
         [[identities]]\nid = \"county-ris\"\norganisation = \"1.2.246.10.1001\"\nrole = \"system\"\n\
         certificate_names = [\"ris.county.example\", \"ris2.county.example\"]\n\
         [[identities]]\nid = \"company\"\norganisation = \"1.2.246.10.2002\"\nrole = \"system\"\n\
         ae_titles = [\"COMPANY\"]\ncertificate_names = [\"*\"]\n";

    #[test]
    fn each_oid_source_reads_its_place_and_only_there() {
        let cases: Vec<(OidSource, Vec<u8>)> = vec![
            (
                OidSource::SubjectOrganizationIdentifier,
                certificate(
                    &[
                        (organization_identifier(), COUNTY),
                        (DnType::OrganizationName, "1.2.246.10.2002"),
                        (DnType::CommonName, "pacs.county.example"),
                    ],
                    &[],
                ),
            ),
            (
                OidSource::SubjectOrganization,
                certificate(
                    &[
                        (DnType::OrganizationName, COUNTY),
                        (DnType::CommonName, "pacs.county.example"),
                    ],
                    &[],
                ),
            ),
            (
                OidSource::SubjectOrganizationalUnit,
                certificate(
                    &[
                        (DnType::OrganizationName, "Testimaan hyvinvointialue"),
                        (DnType::OrganizationalUnitName, COUNTY),
                        (DnType::CommonName, "pacs.county.example"),
                    ],
                    &[],
                ),
            ),
            (
                OidSource::SubjectCommonName,
                certificate(&[(DnType::CommonName, COUNTY)], &[]),
            ),
            (
                OidSource::SanUri,
                certificate(
                    &[(DnType::CommonName, "pacs.county.example")],
                    &["https://pacs.county.example/", "URN:OID:1.2.246.10.1001"],
                ),
            ),
        ];
        for (from, der) in &cases {
            let facts = CertificateFacts::read(der, *from);
            assert_eq!(facts.organisation, Ok(COUNTY.to_string()), "{from:?}");
        }
        // The same certificates read from another place: nothing there (or not an OID).
        let facts = CertificateFacts::read(&cases[1].1, OidSource::SanUri);
        let reason = facts.organisation.expect_err("no SAN");
        assert!(
            reason.contains("no organisation OID in san:uri"),
            "{reason}"
        );
        let facts = CertificateFacts::read(&cases[4].1, OidSource::SubjectOrganization);
        assert!(facts.organisation.is_err());
        // Two different OIDs: ambiguous, refused (the same one twice is one).
        let der = certificate(
            &[(DnType::CommonName, "pacs")],
            &[&format!("urn:oid:{COUNTY}"), &format!("urn:oid:{COMPANY}")],
        );
        let reason = CertificateFacts::read(&der, OidSource::SanUri)
            .organisation
            .expect_err("two OIDs");
        assert!(reason.contains("2 different organisation OIDs"), "{reason}");
        let der = certificate(
            &[(DnType::CommonName, "pacs")],
            &[&format!("urn:oid:{COUNTY}"), &format!("urn:oid:{COUNTY}")],
        );
        assert_eq!(
            CertificateFacts::read(&der, OidSource::SanUri).organisation,
            Ok(COUNTY.to_string())
        );
        // Not a certificate at all.
        let facts = CertificateFacts::read(b"not DER", OidSource::SanUri);
        assert!(facts.organisation.is_err());
    }

    #[test]
    fn a_listed_name_maps_to_its_identity_and_the_wildcard_takes_the_rest() {
        let directory = directory(TWO_SYSTEMS);
        let read = |oid: &str, cn: &str| {
            CertificateFacts::read(
                &certificate(
                    &[(organization_identifier(), oid), (DnType::CommonName, cn)],
                    &[],
                ),
                OidSource::SubjectOrganizationIdentifier,
            )
        };
        let id = |facts: &CertificateFacts| identify(&directory, facts).map(|i| i.id.clone());
        assert_eq!(
            id(&read(COUNTY, "pacs.county.example")),
            Ok("county-pacs".into())
        );
        // Names compare without regard to ASCII case.
        assert_eq!(
            id(&read(COUNTY, "RIS2.County.Example")),
            Ok("county-ris".into())
        );
        // County lists its names and has no wildcard: another CN matches nothing.
        let reason = id(&read(COUNTY, "laptop.county.example")).expect_err("no identity");
        assert_eq!(
            reason,
            "client certificate for organisation 1.2.246.10.1001 (CN laptop.county.example) matches no identity"
        );
        // Company's one identity takes every CN.
        assert_eq!(
            id(&read(COMPANY, "anything.company.example")),
            Ok("company".into())
        );
        // An organisation the archive does not know.
        let reason = id(&read("1.2.246.10.7777", "pacs")).expect_err("unknown");
        assert!(
            reason.contains("organisation 1.2.246.10.7777 (CN pacs)")
                && reason.contains("does not know"),
            "{reason}"
        );
        // A certificate naming no OID.
        let facts = CertificateFacts::read(
            &certificate(&[(DnType::CommonName, "pacs")], &[]),
            OidSource::SubjectOrganizationIdentifier,
        );
        let reason = id(&facts).expect_err("no OID");
        assert!(
            reason.contains("CN=pacs") && reason.contains("subject:organizationIdentifier"),
            "{reason}"
        );
    }

    #[test]
    fn an_association_needs_the_certificate_identitys_own_ae_title() {
        let directory = directory(TWO_SYSTEMS);
        let county = CertificateFacts::read(
            &certificate(
                &[
                    (organization_identifier(), COUNTY),
                    (DnType::CommonName, "pacs.county.example"),
                ],
                &[],
            ),
            OidSource::SubjectOrganizationIdentifier,
        );
        assert_eq!(
            identify_association(&directory, &county, "COUNTYPACS").map(|i| i.id.clone()),
            Ok("county-pacs".into())
        );
        let reason =
            identify_association(&directory, &county, "COMPANY").expect_err("another's AE");
        assert!(
            reason.contains("county-pacs") && reason.contains("\"COMPANY\""),
            "{reason}"
        );
        // Standalone: every verified certificate is the operator, whatever the AE title.
        let standalone = Directory::standalone("local");
        assert_eq!(
            identify_association(&standalone, &county, "ANY").map(|i| i.id.clone()),
            Ok("standalone".into())
        );
    }

    #[test]
    fn ambiguous_or_malformed_certificate_names_are_refused_at_load() {
        let two_wildcards = "[[identities]]\nid = \"a\"\norganisation = \"1.2.246.10.1001\"\nrole = \"system\"\ncertificate_names = [\"*\"]\n\
             [[identities]]\nid = \"b\"\norganisation = \"1.2.246.10.1001\"\nrole = \"operator\"\ncertificate_names = [\"*\"]\n";
        let name_twice = "[[identities]]\nid = \"a\"\norganisation = \"1.2.246.10.1001\"\nrole = \"system\"\ncertificate_names = [\"pacs\"]\n\
             [[identities]]\nid = \"b\"\norganisation = \"1.2.246.10.1001\"\nrole = \"operator\"\ncertificate_names = [\"PACS\"]\n";
        let pattern = "[[identities]]\nid = \"a\"\norganisation = \"1.2.246.10.1001\"\nrole = \"system\"\ncertificate_names = [\"*.county.example\"]\n";
        for (identities, expected) in [
            (two_wildcards, "both have certificate_names = [\"*\"]"),
            (name_twice, "belongs to two identities"),
            (pattern, "must be a whole name"),
        ] {
            let err = Config::from_toml(&format!(
                "[[organisations]]\noid = \"{COUNTY}\"\nname = \"County\"\ncontroller_type = \"public\"\n{identities}"
            ))
            .expect("config")
            .directory()
            .expect_err(expected);
            assert!(format!("{err:#}").contains(expected), "{err:#}");
        }
        // The same name in two organisations is two different systems: fine.
        directory(
            "[[identities]]\nid = \"a\"\norganisation = \"1.2.246.10.1001\"\nrole = \"system\"\ncertificate_names = [\"pacs\"]\n\
             [[identities]]\nid = \"b\"\norganisation = \"1.2.246.10.2002\"\nrole = \"system\"\ncertificate_names = [\"pacs\"]\n",
        );
    }
}
