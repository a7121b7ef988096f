//! Client identity for per-client limits: the address a request really
//! came from, safe against spoofing by default.
//!
//! A per-IP limit is only as good as its key. The peer address cannot be
//! forged (it is the TCP connection's), but behind a reverse proxy every
//! request comes from the proxy, and the client's address travels in
//! `X-Forwarded-For` or RFC 7239 `Forwarded`, which anyone can write.
//! [`ClientIp`] therefore:
//!
//! - reads the **peer address** from the request's extensions (a
//!   `SocketAddr`, as hyper servers insert it, or axum's
//!   `ConnectInfo<SocketAddr>` with the `axum` feature);
//! - believes forwarding headers **only from trusted proxies** (a CIDR
//!   list), and then takes the **right-most hop that is not itself a
//!   trusted proxy**: the hops to its left were written by the client and
//!   are ignored. With no trusted proxy (the default) headers are never
//!   read, so nothing a client sends changes its key;
//! - keys IPv6 clients by **prefix** (/64 by default: one host is handed a
//!   whole /64 and could otherwise mint a fresh bucket per address), and
//!   IPv4-mapped IPv6 addresses as the IPv4 address they are.
//!
//! ```
//! use std::net::SocketAddr;
//! use floodwall_http::client_ip::ClientIp;
//!
//! // Behind a load balancer at 10.0.0.0/8: its X-Forwarded-For is believed.
//! let ip = ClientIp::behind(["10.0.0.0/8".parse()?]);
//! let mut req = http::Request::builder()
//!     .header("x-forwarded-for", "203.0.113.9, 198.51.100.7")
//!     .body(())?;
//! req.extensions_mut().insert(SocketAddr::from(([10, 1, 2, 3], 40000)));
//! // The right-most untrusted hop; "203.0.113.9" was written by the client.
//! assert_eq!(ip.client(&req), Some("198.51.100.7".parse()?));
//!
//! // A peer that is not a trusted proxy is the client, whatever it says.
//! let direct = ClientIp::peer();
//! assert_eq!(direct.client(&req), Some("10.1.2.3".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! As a key for a keyed limiter, [`ClientIp::key`] (the address masked to
//! its prefix) through [`ClientIp::extractor`]:
//!
//! ```
//! use floodwall_http::client_ip::ClientIp;
//! use floodwall_token_bucket::{Quota, TokenBucketLayer};
//!
//! let per_ip = TokenBucketLayer::builder(Quota::per_second(10)?)
//!     .name("per_ip")
//!     .build_keyed(ClientIp::peer().extractor::<()>())?;
//! # let _ = per_ip;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use floodwall_core::ConfigError;
use http::{HeaderMap, Request};

/// The most forwarding hops read from a request: a proxy chain is a few
/// hops long, and a header padded with thousands is not walked.
pub const MAX_HOPS: usize = 32;

/// An IP network: an address and a prefix length (`10.0.0.0/8`,
/// `2001:db8::/32`); a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The network of `addr` with a prefix of `len` bits (host bits are
    /// cleared). IPv4-mapped IPv6 addresses are taken as IPv4.
    ///
    /// # Errors
    /// [`ConfigError`] when `len` exceeds the address width (32 or 128).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, ConfigError> {
        let addr = canonical(addr);
        let max = width(addr);
        if len > max {
            return Err(ConfigError::new("cidr", "prefix longer than the address").with_value(len));
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        width(ip) == width(self.addr) && mask(ip, self.len) == self.addr
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether the prefix is empty (`0.0.0.0/0` or `::/0`: every address).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::new("cidr", "is not an address or address/prefix").with_value(s);
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let len = match len {
            Some(len) => len.trim().parse::<u8>().map_err(|_| bad())?,
            None => width(canonical(addr)),
        };
        Self::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which forwarding header a trusted proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// Finds a request's client address (see the [module docs](self)). Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[Cidr]>,
    header: ForwardedHeader,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// The peer address is the client: forwarding headers are never read.
    /// The right choice for a service clients reach directly.
    pub fn peer() -> Self {
        Self::behind([])
    }

    /// Behind the proxies in `trusted`: a request from one of them is
    /// attributed to the right-most `X-Forwarded-For` hop that is not a
    /// trusted proxy; any other peer is the client.
    pub fn behind(trusted: impl IntoIterator<Item = Cidr>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
            header: ForwardedHeader::XForwardedFor,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }

    /// Reads `header` from trusted proxies instead of `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The IPv6 prefix a client is keyed by. Default 64 (a host's usual
    /// allocation); 128 keys every address on its own.
    ///
    /// # Errors
    /// [`ConfigError`] unless `1 <= bits <= 128`.
    pub fn ipv6_prefix(mut self, bits: u8) -> Result<Self, ConfigError> {
        if !(1..=128).contains(&bits) {
            return Err(ConfigError::new("ipv6_prefix", "must be in 1..=128").with_value(bits));
        }
        self.ipv6_prefix = bits;
        Ok(self)
    }

    /// The IPv4 prefix a client is keyed by. Default 32 (each address).
    ///
    /// # Errors
    /// [`ConfigError`] unless `1 <= bits <= 32`.
    pub fn ipv4_prefix(mut self, bits: u8) -> Result<Self, ConfigError> {
        if !(1..=32).contains(&bits) {
            return Err(ConfigError::new("ipv4_prefix", "must be in 1..=32").with_value(bits));
        }
        self.ipv4_prefix = bits;
        Ok(self)
    }

    /// The trusted proxies.
    pub fn trusted(&self) -> &[Cidr] {
        &self.trusted
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client's address, or `None` when the request carries no peer
    /// address (see [`peer_addr`]).
    pub fn client<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        Some(self.client_of(peer_addr(req)?, req.headers()))
    }

    /// The client's address given the peer's: the peer unless it is a
    /// trusted proxy, else the right-most forwarding hop that is not one.
    /// A hop that cannot be read stops the walk at the nearest proxy, so a
    /// malformed header never yields an address the client chose.
    pub fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let mut seen = 0;
        let mut hops = Hops::new(self.header, headers);
        while let Some(hop) = hops.next_back() {
            seen += 1;
            if seen > MAX_HOPS {
                return client;
            }
            let Some(ip) = hop else { return client };
            client = canonical(ip);
            if !self.is_trusted(client) {
                return client;
            }
        }
        client
    }

    /// The key for keyed limiters: the client's address masked to its
    /// prefix (IPv6 /64 by default).
    pub fn key<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        self.client(req).map(|ip| self.mask(ip))
    }

    /// `ip` masked to the configured prefix of its family.
    pub fn mask(&self, ip: IpAddr) -> IpAddr {
        let ip = canonical(ip);
        match ip {
            IpAddr::V4(_) => mask(ip, self.ipv4_prefix),
            IpAddr::V6(_) => mask(ip, self.ipv6_prefix),
        }
    }

    /// [`key`](Self::key) as a key extractor for keyed layers
    /// (`build_keyed`).
    pub fn extractor<B>(
        &self,
    ) -> impl Fn(&Request<B>) -> Option<IpAddr> + Clone + Send + Sync + 'static + use<B> {
        let this = self.clone();
        move |req| this.key(req)
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::peer()
    }
}

/// The peer address a server put in the request's extensions: a
/// `SocketAddr` (hyper servers, floodwall's gateway) or, with the `axum`
/// feature, axum's `ConnectInfo<SocketAddr>`.
pub fn peer_addr<B>(req: &Request<B>) -> Option<IpAddr> {
    let ext = req.extensions();
    if let Some(addr) = ext.get::<SocketAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

/// The hops of a forwarding header, right to left: `Some(ip)` for an
/// address, `None` for one that cannot be read (garbage, `unknown`, an
/// obfuscated RFC 7239 node).
struct Hops<'a> {
    header: ForwardedHeader,
    values: Option<http::header::ValueIter<'a, http::HeaderValue>>,
    current: Option<&'a str>,
    broken: bool,
}

impl<'a> Hops<'a> {
    fn new(header: ForwardedHeader, headers: &'a HeaderMap) -> Self {
        // Names made once: a name given as text is parsed on every lookup.
        const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
        let name = match header {
            ForwardedHeader::XForwardedFor => &XFF,
            ForwardedHeader::Forwarded => &http::header::FORWARDED,
        };
        // An absent header (a request straight from its client, the usual
        // case) is found absent by a walk over the names, not a hash.
        let values =
            floodwall_core::wire::holds_header(headers, name).then(|| headers.get_all(name).iter());
        Self {
            header,
            values,
            current: None,
            broken: false,
        }
    }

    fn next_back(&mut self) -> Option<Option<IpAddr>> {
        if self.broken {
            return None;
        }
        loop {
            if let Some(rest) = self.current {
                let (left, hop) = match rest.rsplit_once(',') {
                    Some((left, hop)) => (Some(left), hop),
                    None => (None, rest),
                };
                self.current = left;
                let hop = hop.trim();
                if hop.is_empty() {
                    continue;
                }
                let ip = match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(hop),
                    ForwardedHeader::Forwarded => forwarded_for(hop),
                };
                if ip.is_none() {
                    self.broken = true;
                }
                return Some(ip);
            }
            let value = self.values.as_mut()?.next_back()?;
            match value.to_str() {
                Ok(s) => self.current = Some(s),
                Err(_) => {
                    self.broken = true;
                    return Some(None);
                }
            }
        }
    }
}

/// The `for=` node of one RFC 7239 element (`for=192.0.2.60;proto=http`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"')?,
            None => value,
        };
        parse_node(value)
    })
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`.
pub(crate) fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn width(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests;
