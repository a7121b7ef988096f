use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

#[test]
fn cidrs_parse_mask_and_match() {
    let net = cidr("10.1.2.3/8");
    assert_eq!(net.addr(), ip("10.0.0.0"));
    assert_eq!(net.to_string(), "10.0.0.0/8");
    assert!(net.contains(ip("10.255.0.1")));
    assert!(!net.contains(ip("11.0.0.1")));
    assert!(!net.contains(ip("::a01:203")), "families do not mix");
    // A bare address is one host; IPv4-mapped IPv6 is IPv4.
    assert!(cidr("192.0.2.7").contains(ip("::ffff:192.0.2.7")));
    assert!(!cidr("192.0.2.7").contains(ip("192.0.2.8")));
    let v6 = cidr("2001:db8::/32");
    assert!(v6.contains(ip("2001:db8:ffff::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "nonsense",
        "10.0.0.0/x",
        "",
        "10.0.0/8",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
    let err = "10.0.0.0/40".parse::<Cidr>().unwrap_err();
    assert_eq!(err.field(), "cidr");
    assert!(err.to_string().contains("40"), "{err}");
}

#[test]
fn without_trusted_proxies_headers_are_never_read() {
    let ip_of = ClientIp::peer();
    let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
    assert_eq!(ip_of.client_of(ip("203.0.113.1"), &h), ip("203.0.113.1"));
    let fwd = ClientIp::peer().header(ForwardedHeader::Forwarded);
    assert_eq!(fwd.client_of(ip("203.0.113.1"), &h), ip("203.0.113.1"));
}

#[test]
fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
    let ip_of = ClientIp::behind([cidr("10.0.0.0/8")]);
    let h = headers(&[("x-forwarded-for", "10.0.0.1, 1.2.3.4")]);
    assert_eq!(ip_of.client_of(ip("198.51.100.2"), &h), ip("198.51.100.2"));
}

#[test]
fn the_rightmost_untrusted_hop_is_the_client() {
    let ip_of = ClientIp::behind([cidr("10.0.0.0/8"), cidr("192.168.0.0/16")]);
    // client-written junk, the real client, then two trusted proxies.
    let h = headers(&[(
        "x-forwarded-for",
        "6.6.6.6, 203.0.113.9, 192.168.1.1, 10.0.0.2",
    )]);
    assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    // Split over several header fields, in order.
    let h = headers(&[
        ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
        ("x-forwarded-for", "192.168.1.1"),
    ]);
    assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    // Every hop trusted: the left-most (an internal client).
    let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
    assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("10.9.9.9"));
    // No header: the proxy itself.
    assert_eq!(
        ip_of.client_of(ip("10.0.0.1"), &HeaderMap::new()),
        ip("10.0.0.1")
    );
}

#[test]
fn a_hop_that_cannot_be_read_stops_at_the_nearest_proxy() {
    let ip_of = ClientIp::behind([cidr("10.0.0.0/8")]);
    for xff in [
        "1.2.3.4, garbage",
        "1.2.3.4, unknown, 10.0.0.3",
        "1.2.3.4, 999.1.1.1",
    ] {
        let h = headers(&[("x-forwarded-for", xff)]);
        let client = ip_of.client_of(ip("10.0.0.1"), &h);
        assert!(ip_of.is_trusted(client), "{xff} gave {client}");
        assert_ne!(
            client,
            ip("1.2.3.4"),
            "{xff}: never an address left of garbage"
        );
    }
}

#[test]
fn hops_carry_ports_and_brackets() {
    let ip_of = ClientIp::behind([cidr("10.0.0.0/8")]);
    for (xff, want) in [
        ("203.0.113.9:5123", "203.0.113.9"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
    ] {
        let h = headers(&[("x-forwarded-for", xff)]);
        assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip(want), "{xff}");
    }
    for bad in [
        "[2001:db8::7]:",
        "[2001:db8::7]x",
        "203.0.113.9:123456",
        "203.0.113.9:",
    ] {
        let h = headers(&[("x-forwarded-for", bad)]);
        assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("10.0.0.1"), "{bad}");
    }
}

#[test]
fn rfc_7239_forwarded_nodes() {
    let ip_of = ClientIp::behind([cidr("10.0.0.0/8")]).header(ForwardedHeader::Forwarded);
    let h = headers(&[(
        "forwarded",
        r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.5;by=10.0.0.1"#,
    )]);
    assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
    let h = headers(&[("forwarded", "proto=http;for=198.51.100.17;by=10.0.0.1")]);
    assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("198.51.100.17"));
    // unknown and obfuscated nodes cannot be keyed: the nearest proxy is.
    for node in ["for=unknown", "for=_hidden", "for=\"_x:80\"", "proto=http"] {
        let h = headers(&[("forwarded", &format!("for=6.6.6.6, {node}"))]);
        assert_eq!(
            ip_of.client_of(ip("10.0.0.1"), &h),
            ip("10.0.0.1"),
            "{node}"
        );
    }
    // X-Forwarded-For is not read when Forwarded is configured.
    let h = headers(&[("x-forwarded-for", "6.6.6.6")]);
    assert_eq!(ip_of.client_of(ip("10.0.0.1"), &h), ip("10.0.0.1"));
}

#[test]
fn a_padded_header_is_walked_at_most_max_hops() {
    let ip_of = ClientIp::behind([cidr("10.0.0.0/8")]);
    let mut xff = vec!["203.0.113.1"; 1];
    xff.extend(std::iter::repeat_n("10.0.0.9", 10_000));
    let h = headers(&[("x-forwarded-for", &xff.join(","))]);
    let client = ip_of.client_of(ip("10.0.0.1"), &h);
    assert!(
        ip_of.is_trusted(client),
        "stopped inside the trusted run: {client}"
    );
}

#[test]
fn ipv6_clients_are_keyed_by_prefix() {
    let ip_of = ClientIp::peer();
    let a = ip_of.mask(ip("2001:db8:1:2:aaaa::1"));
    let b = ip_of.mask(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
    assert_eq!(a, b, "one /64, one key");
    assert_eq!(a, ip("2001:db8:1:2::"));
    assert_ne!(a, ip_of.mask(ip("2001:db8:1:3::1")));
    assert_eq!(ip_of.mask(ip("192.0.2.77")), ip("192.0.2.77"));
    assert_eq!(ip_of.mask(ip("::ffff:192.0.2.77")), ip("192.0.2.77"));
    let per_address = ClientIp::peer().ipv6_prefix(128).unwrap();
    assert_ne!(
        per_address.mask(ip("2001:db8::1")),
        per_address.mask(ip("2001:db8::2"))
    );
    let per_24 = ClientIp::peer().ipv4_prefix(24).unwrap();
    assert_eq!(per_24.mask(ip("192.0.2.77")), ip("192.0.2.0"));
    assert_eq!(
        ClientIp::peer().ipv6_prefix(0).unwrap_err().field(),
        "ipv6_prefix"
    );
    assert_eq!(
        ClientIp::peer().ipv6_prefix(129).unwrap_err().field(),
        "ipv6_prefix"
    );
    assert_eq!(
        ClientIp::peer().ipv4_prefix(33).unwrap_err().field(),
        "ipv4_prefix"
    );
}

#[test]
fn the_peer_comes_from_the_extensions() {
    let mut req = Request::new(());
    assert_eq!(ClientIp::peer().client(&req), None);
    req.extensions_mut()
        .insert(SocketAddr::from(([192, 0, 2, 1], 1234)));
    assert_eq!(ClientIp::peer().client(&req), Some(ip("192.0.2.1")));
    let extract = ClientIp::peer().extractor::<()>();
    assert_eq!(extract(&req), Some(ip("192.0.2.1")));
}

#[cfg(feature = "axum")]
#[test]
fn axum_connect_info_is_a_peer() {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::from((
            [192, 0, 2, 9],
            1,
        ))));
    assert_eq!(ClientIp::peer().client(&req), Some(ip("192.0.2.9")));
}
