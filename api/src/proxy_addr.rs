//! The proxy's address as configured: `HOST:PORT`, where the host is a DNS
//! name, an IPv4 address or a bracketed IPv6 address. A name is resolved at
//! every connect (so a reconnect follows a moved proxy), and is the default
//! name the proxy's certificate is checked for.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// Why an address is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxy address {0:?}: expected HOST:PORT (a DNS name, an IPv4 address or [IPv6]:PORT)")]
pub struct ProxyAddrError(pub String);

/// A proxy address: a host (name or IP) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyAddr {
    host: String,
    port: u16,
}

impl ProxyAddr {
    /// Parses `HOST:PORT` (`[v6]:PORT` for IPv6).
    pub fn parse(s: &str) -> Result<ProxyAddr, ProxyAddrError> {
        let bad = || ProxyAddrError(s.chars().take(200).collect());
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ProxyAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok || port == 0 {
            return Err(bad());
        }
        Ok(ProxyAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host: a DNS name or an IP address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket addresses the host resolves to now (an IP resolves to
    /// itself, with no lookup); the first is the one to connect to.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.host),
                )
            })
    }
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ProxyAddr {
    type Err = ProxyAddrError;

    fn from_str(s: &str) -> Result<ProxyAddr, ProxyAddrError> {
        ProxyAddr::parse(s)
    }
}

impl From<SocketAddr> for ProxyAddr {
    fn from(addr: SocketAddr) -> ProxyAddr {
        ProxyAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl<'de> Deserialize<'de> for ProxyAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ProxyAddr, D::Error> {
        let s = String::deserialize(d)?;
        ProxyAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_ips_and_v6_parse_and_print_back() {
        for (text, host, port) in [
            ("127.0.0.1:8443", "127.0.0.1", 8443),
            ("[::1]:9", "::1", 9),
            ("proxy.example.com:443", "proxy.example.com", 443),
            ("LocalHost:1", "localhost", 1),
        ] {
            let a = ProxyAddr::parse(text).unwrap();
            assert_eq!((a.host(), a.port()), (host, port), "{text}");
            assert_eq!(ProxyAddr::parse(&a.to_string()).unwrap(), a);
        }
        for bad in [
            "",
            "proxy",
            "proxy:",
            ":1",
            "proxy:0",
            "proxy:70000",
            "a b:1",
            "-x:1",
            "a..b:1",
            "::1:9",
            "x/y:1",
        ] {
            assert!(ProxyAddr::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn localhost_resolves_at_connect_time() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let a = ProxyAddr::parse("localhost:4321").unwrap();
        let addr = rt.block_on(a.resolve()).unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 4321);
        let ip = ProxyAddr::parse("10.1.2.3:5").unwrap();
        assert_eq!(
            rt.block_on(ip.resolve()).unwrap(),
            "10.1.2.3:5".parse().unwrap()
        );
    }
}
