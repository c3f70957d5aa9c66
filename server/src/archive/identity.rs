//! The Finnish personal identity code (henkilötunnus, issuer OID 1.2.246.21), which is the
//! PatientID of the national archive (`../shared/DOMAIN.md`, rule 6; issue 6 builds the ingest
//! validation on this).
//!
//! Layout `DDMMYYCZZZQ`: birth date, century sign, individual number, check character. The
//! century signs are `+` (1800s), `-` and, since 2023, `Y X W V U` (1900s), and `A` and, since
//! 2023, `B C D E F` (2000s). The individual number is 002–999, where 900–999 mark a temporary
//! code (given, e.g., by a hospital before the population register's; the examples in official
//! texts use them too): valid in form, reported by [`PersonalIdentityCode::is_temporary`] so
//! that the archive's rules can treat it as the temporary id it is. The check character is the
//! nine-digit number `DDMMYYZZZ` modulo 31, taken from `0123456789ABCDEFHJKLMNPRSTUVWXY`.

use std::fmt;

/// The check characters, indexed by the remainder modulo 31.
const CHECK_CHARACTERS: &[u8; 31] = b"0123456789ABCDEFHJKLMNPRSTUVWXY";
/// Individual numbers in use (000 and 001 are not).
const INDIVIDUAL_NUMBERS: std::ops::RangeInclusive<u16> = 2..=999;
/// Individual numbers of temporary codes.
const TEMPORARY_NUMBERS: std::ops::RangeInclusive<u16> = 900..=999;

/// A valid personal identity code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalIdentityCode {
    /// The code as written (uppercase, 11 characters).
    pub code: String,
    pub birth_year: u16,
    pub birth_month: u8,
    pub birth_day: u8,
    pub individual_number: u16,
}

/// Why a text is not a personal identity code; each reason names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCodeError {
    /// Not 11 ASCII characters.
    Length { len: usize },
    /// The date part is not six digits of a real calendar date.
    BirthDate { text: String },
    /// The seventh character is not a century sign.
    CenturySign { sign: char },
    /// The individual number is not three digits in 002–999.
    IndividualNumber { text: String },
    /// The check character does not match.
    CheckCharacter { expected: char, found: char },
}

impl fmt::Display for IdentityCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityCodeError::Length { len } => write!(
                f,
                "a personal identity code has 11 characters (DDMMYYCZZZQ), not {len}"
            ),
            IdentityCodeError::BirthDate { text } => {
                write!(f, "{text:?} is not a birth date (DDMMYY)")
            }
            IdentityCodeError::CenturySign { sign } => write!(
                f,
                "{sign:?} is not a century sign (+, - Y X W V U, A B C D E F)"
            ),
            IdentityCodeError::IndividualNumber { text } => {
                write!(f, "individual number {text:?} is not 002-999")
            }
            IdentityCodeError::CheckCharacter { expected, found } => write!(
                f,
                "check character {found:?} does not match the code (expected {expected:?})"
            ),
        }
    }
}

impl std::error::Error for IdentityCodeError {}

fn digits(text: &str) -> Option<u32> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

impl PersonalIdentityCode {
    /// A temporary code (individual number 900–999).
    pub fn is_temporary(&self) -> bool {
        TEMPORARY_NUMBERS.contains(&self.individual_number)
    }

    /// Parses and checks `text` (surrounding spaces ignored, letters in any case).
    pub fn parse(text: &str) -> Result<PersonalIdentityCode, IdentityCodeError> {
        let code = text.trim().to_ascii_uppercase();
        if code.len() != 11 || !code.is_ascii() {
            return Err(IdentityCodeError::Length {
                len: code.chars().count(),
            });
        }
        let date = &code[0..6];
        let sign = char::from(code.as_bytes()[6]);
        let individual = &code[7..10];
        let found = char::from(code.as_bytes()[10]);
        let century = match sign {
            '+' => 1800,
            '-' | 'Y' | 'X' | 'W' | 'V' | 'U' => 1900,
            'A' | 'B' | 'C' | 'D' | 'E' | 'F' => 2000,
            _ => return Err(IdentityCodeError::CenturySign { sign }),
        };
        let bad_date = || IdentityCodeError::BirthDate {
            text: date.to_string(),
        };
        let (day, month, year) = match (
            digits(&date[0..2]),
            digits(&date[2..4]),
            digits(&date[4..6]),
        ) {
            (Some(d), Some(m), Some(y)) => (d as u8, m as u8, century + y as u16),
            _ => return Err(bad_date()),
        };
        if day == 0 || day > days_in_month(year, month) {
            return Err(bad_date());
        }
        let number = digits(individual)
            .map(|n| n as u16)
            .filter(|n| INDIVIDUAL_NUMBERS.contains(n))
            .ok_or_else(|| IdentityCodeError::IndividualNumber {
                text: individual.to_string(),
            })?;
        let nine = digits(&format!("{date}{individual}")).ok_or_else(bad_date)?;
        let expected = char::from(CHECK_CHARACTERS[(nine % 31) as usize]);
        if found != expected {
            return Err(IdentityCodeError::CheckCharacter { expected, found });
        }
        Ok(PersonalIdentityCode {
            code,
            birth_year: year,
            birth_month: month,
            birth_day: day,
            individual_number: number,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_codes_of_every_century_sign_are_accepted() {
        for (code, year, month, day) in [
            ("131052-308T", 1952, 10, 13),
            ("010594Y9021", 1994, 5, 1), // a 2023 century sign
            ("311299U450R", 1999, 12, 31),
            ("010106A9089", 2006, 1, 1),
            ("291224B123J", 2024, 12, 29),
            ("150601F899S", 2001, 6, 15),
            ("290200A002C", 2000, 2, 29), // 2000 was a leap year
            ("010101+123N", 1801, 1, 1),
        ] {
            let parsed =
                PersonalIdentityCode::parse(code).unwrap_or_else(|e| panic!("{code}: {e}"));
            assert_eq!(
                (parsed.birth_year, parsed.birth_month, parsed.birth_day),
                (year, month, day),
                "{code}"
            );
        }
        assert_eq!(
            PersonalIdentityCode::parse(" 131052-308t ").unwrap().code,
            "131052-308T"
        );
        assert!(!PersonalIdentityCode::parse("131052-308T")
            .unwrap()
            .is_temporary());
        assert!(PersonalIdentityCode::parse("010594Y9021")
            .unwrap()
            .is_temporary());
        assert!(PersonalIdentityCode::parse("131052-900W")
            .unwrap()
            .is_temporary());
    }

    #[test]
    fn each_kind_of_broken_code_gets_its_own_reason() {
        use IdentityCodeError::*;
        let err = |code: &str| PersonalIdentityCode::parse(code).unwrap_err();
        assert!(matches!(err("131052-308"), Length { len: 10 }));
        assert!(matches!(err("131052-308TT"), Length { len: 12 }));
        assert!(matches!(err("131052*308T"), CenturySign { sign: '*' }));
        assert!(matches!(err("131052G308T"), CenturySign { sign: 'G' }));
        assert!(matches!(err("321052-308T"), BirthDate { .. }));
        assert!(
            matches!(err("290201A002C"), BirthDate { .. }),
            "2001 was no leap year"
        );
        assert!(matches!(err("131352-308T"), BirthDate { .. }));
        assert!(matches!(err("13A052-308T"), BirthDate { .. }));
        assert!(matches!(err("131052-001T"), IndividualNumber { .. }));
        assert!(matches!(err("131052-000T"), IndividualNumber { .. }));
        assert!(matches!(
            err("131052-308U"),
            CheckCharacter {
                expected: 'T',
                found: 'U'
            }
        ));
        assert!(matches!(err("131052-3ä8T"), Length { .. }));
        assert!(err("131052-308U").to_string().contains("expected 'T'"));
    }

    proptest! {
        /// Any valid code with one character changed is refused (the check character catches
        /// every single substitution among digits and check characters).
        #[test]
        fn a_single_changed_character_is_caught(
            day in 1u8..=28, month in 1u8..=12, year in 0u8..=99,
            sign in prop::sample::select(vec!['-', 'Y', 'X', 'W', 'V', 'U', 'A', 'B', 'C', 'D', 'E', 'F', '+']),
            number in 2u16..=999, position in prop::sample::select(vec![0usize, 1, 2, 3, 4, 5, 7, 8, 9, 10]),
            replacement in 0u8..=9,
        ) {
            let base = format!("{day:02}{month:02}{year:02}{number:03}");
            let nine: u32 = base.parse().unwrap();
            let check = char::from(CHECK_CHARACTERS[(nine % 31) as usize]);
            let code = format!("{}{sign}{}{check}", &base[..6], &base[6..]);
            prop_assert!(PersonalIdentityCode::parse(&code).is_ok(), "{}", code);
            let mut bytes = code.into_bytes();
            let new = b'0' + replacement;
            prop_assume!(bytes[position] != new);
            bytes[position] = new;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(PersonalIdentityCode::parse(&changed).is_err(), "{}", changed);
        }
    }
}
