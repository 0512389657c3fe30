//! Who may use the daemon: the checks every HTTP request and WebSocket
//! upgrade pass before anything else (docs/api.md, "Connecting").
//!
//! - `Host` must name the daemon's own loopback address and port, so that a
//!   site whose DNS name is rebound to 127.0.0.1 is refused (DNS rebinding).
//! - A browser's `Origin` must be the daemon's own page, so that a page
//!   from elsewhere cannot open the API (cross-site WebSocket hijacking).
//! - The API needs the token the daemon wrote to a 0600 file.
//!
//! Pure functions of the request's headers: tested without sockets.

use subtle::ConstantTimeEq;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is missing or not the daemon's: 421.
    Host,
    /// `Origin` is another site's: 403.
    Origin,
    /// No token, or a wrong one: 401.
    Token,
}

impl Refusal {
    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Host => 421,
            Refusal::Origin => 403,
            Refusal::Token => 401,
        }
    }

    /// What the refusal says (the body of the answer; also counted in logs).
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Host => "refused: Host is not this daemon's loopback address",
            Refusal::Origin => "refused: Origin is not this daemon's page",
            Refusal::Token => "refused: missing or wrong API token",
        }
    }
}

/// The hosts the daemon answers to, with its port.
#[derive(Debug, Clone)]
pub struct Access {
    hosts: Vec<String>,
    /// Listening on every address (the dangerous setting): any IP literal
    /// with our port is a host of ours (DNS names still are not).
    any_ip_port: Option<u16>,
    token: String,
}

impl Access {
    /// For a daemon listening on `port` with API token `token`. With
    /// `listen_ip` not loopback (the dangerous setting), that address is
    /// accepted as a host too.
    pub fn new(listen: std::net::SocketAddr, token: String) -> Self {
        let port = listen.port();
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        if !listen.ip().is_loopback() && !listen.ip().is_unspecified() {
            hosts.push(listen.to_string());
        }
        let any_ip_port = listen.ip().is_unspecified().then_some(port);
        Self {
            hosts,
            any_ip_port,
            token,
        }
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Every request: `Host` is one of ours (case-insensitive, as DNS names are).
    pub fn check_host(&self, host: Option<&str>) -> Result<(), Refusal> {
        let host = host.ok_or(Refusal::Host)?.to_ascii_lowercase();
        if self.hosts.contains(&host) || self.any_ip(&host) {
            Ok(())
        } else {
            Err(Refusal::Host)
        }
    }

    /// `host` is an IP literal with our port, and we listen on every address.
    fn any_ip(&self, host: &str) -> bool {
        self.any_ip_port.is_some_and(|port| {
            host.parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.port() == port)
        })
    }

    /// The API: `Origin`, if sent, is our page; the token is right. The
    /// token comes from the `token` query parameter or `Authorization:
    /// Bearer`.
    pub fn check_api(
        &self,
        origin: Option<&str>,
        query_token: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<(), Refusal> {
        if let Some(o) = origin {
            let o = o.to_ascii_lowercase();
            let ours = o
                .strip_prefix("http://")
                .is_some_and(|rest| self.hosts.iter().any(|h| h == rest) || self.any_ip(rest));
            if !ours {
                return Err(Refusal::Origin);
            }
        }
        let given = query_token
            .or_else(|| authorization.and_then(|a| a.strip_prefix("Bearer ")))
            .ok_or(Refusal::Token)?;
        if given.len() == self.token.len()
            && bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
        {
            Ok(())
        } else {
            Err(Refusal::Token)
        }
    }
}

/// A new API token: 32 random bytes (written as hex).
pub fn new_token() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new("127.0.0.1:1978".parse().unwrap(), "ab".repeat(32))
    }

    #[test]
    fn only_our_own_hosts_are_answered() {
        let a = access();
        for ok in [
            "127.0.0.1:1978",
            "localhost:1978",
            "LOCALHOST:1978",
            "[::1]:1978",
        ] {
            assert_eq!(a.check_host(Some(ok)), Ok(()), "{ok}");
        }
        // DNS rebinding: a site's name pointed at 127.0.0.1.
        for bad in [
            "evil.example:1978",
            "127.0.0.1",
            "127.0.0.1:1979",
            "localhost",
            "127.0.0.1.evil.example:1978",
            "",
        ] {
            assert_eq!(a.check_host(Some(bad)), Err(Refusal::Host), "{bad}");
        }
        assert_eq!(a.check_host(None), Err(Refusal::Host));
    }

    #[test]
    fn another_origin_is_refused_even_with_the_token() {
        let a = access();
        let t = "ab".repeat(32);
        assert_eq!(
            a.check_api(Some("http://127.0.0.1:1978"), Some(&t), None),
            Ok(())
        );
        assert_eq!(
            a.check_api(Some("http://localhost:1978"), Some(&t), None),
            Ok(())
        );
        for bad in [
            "http://evil.example",
            "https://127.0.0.1:1978",
            "http://127.0.0.1:1979",
            "http://127.0.0.1:1978.evil.example",
            "null",
            "file://",
        ] {
            assert_eq!(
                a.check_api(Some(bad), Some(&t), None),
                Err(Refusal::Origin),
                "{bad}"
            );
        }
    }

    #[test]
    fn listening_everywhere_takes_ip_literals_but_never_names() {
        let a = Access::new("0.0.0.0:1978".parse().unwrap(), "ab".repeat(32));
        assert_eq!(a.check_host(Some("192.0.2.7:1978")), Ok(()));
        assert_eq!(a.check_host(Some("[2001:db8::1]:1978")), Ok(()));
        assert_eq!(a.check_host(Some("192.0.2.7:1979")), Err(Refusal::Host));
        assert_eq!(a.check_host(Some("evil.example:1978")), Err(Refusal::Host));
        let t = "ab".repeat(32);
        assert_eq!(
            a.check_api(Some("http://192.0.2.7:1978"), Some(&t), None),
            Ok(())
        );
        assert_eq!(
            a.check_api(Some("http://evil.example:1978"), Some(&t), None),
            Err(Refusal::Origin)
        );
        // Loopback only: an IP literal that is not ours is refused.
        assert_eq!(
            access().check_host(Some("192.0.2.7:1978")),
            Err(Refusal::Host)
        );
    }

    #[test]
    fn the_token_is_needed_and_must_be_exact() {
        let a = access();
        let t = "ab".repeat(32);
        assert_eq!(a.check_api(None, Some(&t), None), Ok(()));
        assert_eq!(
            a.check_api(None, None, Some(&format!("Bearer {t}"))),
            Ok(())
        );
        assert_eq!(a.check_api(None, None, None), Err(Refusal::Token));
        assert_eq!(a.check_api(None, Some(&t[1..]), None), Err(Refusal::Token));
        assert_eq!(
            a.check_api(None, Some(&"ac".repeat(32)), None),
            Err(Refusal::Token)
        );
        assert_eq!(a.check_api(None, None, Some(&t)), Err(Refusal::Token));
    }

    #[test]
    fn tokens_are_new_each_time() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }
}
