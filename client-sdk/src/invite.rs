//! Invite strings: `umbra1:<public key hex>:<name>`. They hold nothing secret,
//! so any channel can carry them; what matters is that the key is the right one.

use crate::Error;
use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "umbra1:";
const MAX_NAME: usize = 64;

/// What one person gives another to become a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The inviter's x25519 public key.
    pub public: [u8; 32],
    /// A display name the inviter chose (at most 64 characters, no ':' or control characters).
    pub name: String,
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name: String = self
            .name
            .chars()
            .filter(|c| *c != ':' && !c.is_control())
            .collect::<String>()
            .chars()
            .take(MAX_NAME)
            .collect();
        write!(f, "{PREFIX}{}:{name}", hex::encode(self.public))
    }
}

impl FromStr for Invite {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::InvalidInvite(format!("must start with {PREFIX}")))?;
        let (key, name) = rest.split_once(':').unwrap_or((rest, ""));
        let mut public = [0u8; 32];
        hex::decode_to_slice(key, &mut public)
            .map_err(|e| Error::InvalidInvite(format!("key: {e}")))?;
        if name.len() > MAX_NAME * 4 {
            return Err(Error::InvalidInvite("name too long".into()));
        }
        // Names come from strangers: no control characters (terminal
        // escapes), no separators, bounded length.
        let name = name
            .chars()
            .filter(|c| *c != ':' && !c.is_control())
            .take(MAX_NAME)
            .collect();
        Ok(Self { public, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let i = Invite {
            public: [7; 32],
            name: "alice".into(),
        };
        let s = i.to_string();
        assert_eq!(s.parse::<Invite>().unwrap(), i);
        assert_eq!(format!("  {s}\n").parse::<Invite>().unwrap(), i);
        assert!("hello".parse::<Invite>().is_err());
        assert!("umbra1:zz:bob".parse::<Invite>().is_err());
        assert!("umbra1:0102:bob".parse::<Invite>().is_err());
        let odd = Invite {
            public: [1; 32],
            name: "a:b\nc".into(),
        };
        assert_eq!(odd.to_string().parse::<Invite>().unwrap().name, "abc");
    }
}
