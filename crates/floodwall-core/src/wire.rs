//! Header (and gRPC metadata) names the floodwall layers exchange between
//! services.
//!
//! gRPC metadata travels as HTTP/2 headers, so one lower-case name serves
//! both protocols. Edge services strip or overwrite the request headers when
//! they come from untrusted callers.

/// Request header: the request's [`Priority`](crate::Priority), written as
/// `business-user` (`"3-87"`). Set at the entry service and forwarded on
/// every downstream call.
pub const PRIORITY_HEADER: &str = "x-floodwall-priority";

/// Response header: the responding server's admission level, in the same
/// `business-user` form (`"255-127"` admits everything). Collaborative
/// clients drop locally what the level would refuse.
pub const ADMISSION_LEVEL_HEADER: &str = "x-floodwall-admission-level";

/// Request header: how many requests for this server the sending client
/// dropped locally (by the server's advertised admission level) since its
/// previous request. The server counts them as arrivals it refused.
pub const UPSTREAM_DROPS_HEADER: &str = "x-floodwall-upstream-drops";
