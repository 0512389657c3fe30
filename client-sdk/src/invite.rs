//! Invite strings: `umbra2:<public key>:<Olm identity key>:<one-time key>:<name>`
//! (keys in hex). They hold nothing secret, so any channel can carry them;
//! what matters is that the keys are the right ones. The Olm keys let the
//! first message start a session (protocol.md §13.1, §13.2).

use crate::Error;
use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "umbra2:";
/// Invites of Umbra before end-to-end sessions: refused with a clear error.
const OLD_PREFIX: &str = "umbra1:";
const MAX_NAME: usize = 64;

/// What one person gives another to become a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The inviter's x25519 public key: who they are (dropboxes, safety numbers).
    pub public: [u8; 32],
    /// The inviter's Olm identity key (Curve25519).
    pub olm_identity: [u8; 32],
    /// A one-time key of the inviter's Olm account: the first message's
    /// session starts from it.
    pub one_time_key: [u8; 32],
    /// A display name the inviter chose (at most 64 characters, no ':' or control characters).
    pub name: String,
}

/// A display name as an invite carries it. Names come from strangers: no
/// control characters (terminal escapes), no separators, at most
/// [`MAX_NAME`] characters, and no surrounding whitespace — an invite string
/// is trimmed when read, so whitespace left at the end of a name (before a
/// control character that was dropped) would not survive being printed and
/// read again.
fn clean_name(name: &str) -> String {
    let name: String = name
        .chars()
        .filter(|c| *c != ':' && !c.is_control())
        .take(MAX_NAME)
        .collect();
    name.trim().to_owned()
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = clean_name(&self.name);
        write!(
            f,
            "{PREFIX}{}:{}:{}:{name}",
            hex::encode(self.public),
            hex::encode(self.olm_identity),
            hex::encode(self.one_time_key)
        )
    }
}

fn key_at(part: Option<&str>, what: &str) -> Result<[u8; 32], Error> {
    let part = part.ok_or_else(|| Error::InvalidInvite(format!("{what}: missing")))?;
    let mut k = [0u8; 32];
    hex::decode_to_slice(part, &mut k).map_err(|e| Error::InvalidInvite(format!("{what}: {e}")))?;
    Ok(k)
}

impl FromStr for Invite {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.starts_with(OLD_PREFIX) {
            return Err(Error::InvalidInvite(
                "an umbra1 invite, from an Umbra without end-to-end sessions: \
                 ask the contact for a new invite (this version reads umbra2)"
                    .into(),
            ));
        }
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::InvalidInvite(format!("must start with {PREFIX}")))?;
        let mut parts = rest.splitn(4, ':');
        let public = key_at(parts.next(), "key")?;
        let olm_identity = key_at(parts.next(), "session identity key")?;
        let one_time_key = key_at(parts.next(), "one-time key")?;
        let name = parts.next().unwrap_or("");
        if name.len() > MAX_NAME * 4 {
            return Err(Error::InvalidInvite("name too long".into()));
        }
        let name = clean_name(name);
        Ok(Self {
            public,
            olm_identity,
            one_time_key,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let i = Invite {
            public: [7; 32],
            olm_identity: [8; 32],
            one_time_key: [9; 32],
            name: "alice".into(),
        };
        let s = i.to_string();
        assert!(s.starts_with("umbra2:0707"));
        assert_eq!(s.parse::<Invite>().unwrap(), i);
        assert_eq!(format!("  {s}\n").parse::<Invite>().unwrap(), i);
        assert!("hello".parse::<Invite>().is_err());
        assert!("umbra2:zz:bob".parse::<Invite>().is_err());
        assert!("umbra2:0102:bob".parse::<Invite>().is_err());
        // Missing session keys.
        let short = format!("umbra2:{}", hex::encode([7; 32]));
        assert!(short.parse::<Invite>().is_err());
        let odd = Invite {
            name: "a:b\nc".into(),
            ..i.clone()
        };
        assert_eq!(odd.to_string().parse::<Invite>().unwrap().name, "abc");
        // No name at all.
        let bare = format!(
            "umbra2:{}:{}:{}",
            hex::encode([7; 32]),
            hex::encode([8; 32]),
            hex::encode([9; 32])
        );
        assert_eq!(bare.parse::<Invite>().unwrap().name, "");
    }

    #[test]
    fn a_name_ending_in_blanks_before_control_characters_reads_back_the_same() {
        // Found by the `invite` fuzz target: the control characters went, the
        // blanks before them stayed, and the printed invite (trimmed when
        // read) came back with another name.
        let k = hex::encode([7; 32]);
        let text = format!("umbra2:{k}:{k}:{k}:bob  \x01\x0b");
        let i: Invite = text.parse().unwrap();
        assert_eq!(i.name, "bob");
        assert_eq!(i.to_string().parse::<Invite>().unwrap(), i);
        let spaced = Invite {
            name: " carol \x07 ".into(),
            ..i.clone()
        };
        assert_eq!(spaced.to_string().parse::<Invite>().unwrap().name, "carol");
    }

    #[test]
    fn an_old_invite_is_refused_with_a_clear_error() {
        let old = format!("umbra1:{}:bob", hex::encode([7; 32]));
        let Err(Error::InvalidInvite(why)) = old.parse::<Invite>() else {
            panic!("an umbra1 invite was accepted");
        };
        assert!(why.contains("new invite"), "{why}");
    }
}
