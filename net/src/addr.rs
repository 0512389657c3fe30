//! `host:port` addresses an operator writes in a config (`public_address`):
//! an IP address or a DNS name, resolved when it is used, so that a node
//! behind a dynamic address or a Kubernetes Service keeps publishing the
//! right one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;

/// An IP socket address, or a DNS name and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPort {
    /// An address needing no lookup.
    Ip(SocketAddr),
    /// A name to resolve, and the port.
    Name(String, u16),
}

impl HostPort {
    /// Parses `1.2.3.4:5`, `[2001:db8::1]:5` or `name.example:5`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Ip(a));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port (the port is missing)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: port {port:?} is not a number from 1 to 65535"))?;
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a DNS name"
            ));
        }
        Ok(Self::Name(host.to_string(), port))
    }

    /// The address now: as written, or the name's first address of the
    /// same family as `like` (else its first address).
    pub async fn resolve(&self, like: SocketAddr) -> std::io::Result<SocketAddr> {
        match self {
            Self::Ip(a) => Ok(*a),
            Self::Name(host, port) => {
                let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                all.iter()
                    .find(|a| a.is_ipv4() == like.is_ipv4())
                    .or(all.first())
                    .copied()
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{host} has no address"),
                        )
                    })
            }
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        Self::Ip(a)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_and_names_parse_and_junk_is_refused_with_the_reason() {
        assert_eq!(
            HostPort::parse("203.0.113.7:9000").unwrap(),
            HostPort::Ip("203.0.113.7:9000".parse().unwrap())
        );
        assert!(matches!(
            HostPort::parse("[2001:db8::1]:9").unwrap(),
            HostPort::Ip(a) if a.is_ipv6()
        ));
        assert_eq!(
            HostPort::parse("mix-0.umbra.svc.cluster.local:9000").unwrap(),
            HostPort::Name("mix-0.umbra.svc.cluster.local".into(), 9000)
        );
        assert_eq!(
            HostPort::parse("mix.example.:7").unwrap().to_string(),
            "mix.example.:7"
        );
        for (bad, why) in [
            ("mix.example", "port is missing"),
            ("mix.example:0", "port \"0\""),
            ("mix.example:x", "port \"x\""),
            ("mi_x.example:1", "neither an IP address nor a DNS name"),
            (":1", "neither"),
            ("-a.example:1", "neither"),
        ] {
            let e = HostPort::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_name_resolves_to_the_family_of_the_listen_address() {
        let v4: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let a = HostPort::parse("localhost:9000")
            .unwrap()
            .resolve(v4)
            .await
            .unwrap();
        assert_eq!(a, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        let ip = HostPort::parse("192.0.2.1:5").unwrap();
        assert_eq!(ip.resolve(v4).await.unwrap().to_string(), "192.0.2.1:5");
    }
}
