//! The room calls (`get_room`, `batch_rooms`) and what the room handlers
//! share: query parameters, field masks, the JSON of a room, gRPC statuses
//! as HTTP answers, and the priority and deadline on an outbound call.

use floodwall::core::{Deadline, Priority, Rejected};
use floodwall::http::Respond;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tonic::Code;

use super::super::upstream::GrpcUpstream;
use super::super::{Body, GatewayResponder, json, refusal};
use crate::proto::{BatchGetRoomsRequest, GetRoomRequest, RoomInfo};

/// The query parameter `name`, if present.
pub(super) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(super) fn fields_of(query: Option<&str>) -> Vec<String> {
    query_param(query, "fields")
        .map(|f| {
            f.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn mask(fields: &[String]) -> Option<prost_types::FieldMask> {
    (!fields.is_empty()).then(|| prost_types::FieldMask {
        paths: fields.to_vec(),
    })
}

/// A room as JSON: the requested fields, or all of them.
pub(super) fn room_json(r: &RoomInfo, fields: &[String]) -> serde_json::Value {
    let all = fields.is_empty();
    let want = |f: &str| all || fields.iter().any(|x| x == f);
    let mut m = serde_json::Map::new();
    if want("room_id") {
        m.insert("room_id".into(), r.room_id.into());
    }
    if want("title") {
        m.insert("title".into(), r.title.clone().into());
    }
    if want("anchor") {
        m.insert("anchor".into(), r.anchor.clone().into());
    }
    if want("viewers") {
        m.insert("viewers".into(), r.viewers.into());
    }
    if want("live") {
        m.insert("live".into(), r.live.into());
    }
    if want("tags") {
        m.insert("tags".into(), r.tags.clone().into());
    }
    serde_json::Value::Object(m)
}

/// The response for a failed room call: a floodwall rejection made by the
/// client stack renders as one (429/503/504 with its reason); the room
/// service's own statuses map to HTTP.
pub(super) fn status_response(status: &tonic::Status) -> Response<Body> {
    if let Some(r) = std::error::Error::source(status).and_then(Rejected::find) {
        return GatewayResponder.respond(r);
    }
    // The room service's own answers about the request (a bad argument, a
    // missing room) are the client's business; transport and server
    // failures are not: their text stays inside.
    let msg = status.message();
    match status.code() {
        Code::InvalidArgument => bad_request(msg),
        Code::NotFound => refusal(StatusCode::NOT_FOUND, "not_found", msg),
        Code::DeadlineExceeded => refusal(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "the upstream did not answer in time",
        ),
        Code::Unavailable | Code::ResourceExhausted => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            "the upstream is unavailable",
        ),
        _ => refusal(StatusCode::BAD_GATEWAY, "upstream_error", "upstream error"),
    }
}

pub(super) fn bad_request(message: &str) -> Response<Body> {
    refusal(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A room call's answer: `render` of its reply as JSON, or the response
/// for its failure.
pub(super) fn answer<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    render: impl FnOnce(T) -> serde_json::Value,
) -> Response<Body> {
    match result {
        Ok(r) => json(StatusCode::OK, &render(r.into_inner())),
        Err(status) => status_response(&status),
    }
}

/// A tonic request carrying the inbound request's priority and deadline,
/// which the client stack propagates.
pub(super) fn outbound<T>(
    msg: T,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(p) = priority {
        req.extensions_mut().insert(p);
    }
    if let Some(d) = deadline {
        req.extensions_mut().insert(d);
    }
    req
}

pub(super) async fn get_room(
    g: &GrpcUpstream,
    req: &Request<Incoming>,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> Response<Body> {
    let query = req.uri().query();
    let Some(room_id) = query_param(query, "id").and_then(|v| v.parse::<u64>().ok()) else {
        return bad_request("`id` must be a room number");
    };
    let fields = fields_of(query);
    let mut client = g.client.clone();
    let call = client.get_room(outbound(
        GetRoomRequest {
            room_id,
            field_mask: mask(&fields),
        },
        priority,
        deadline,
    ));
    answer(call.await, |r| room_json(&r, &fields))
}

pub(super) async fn batch_rooms(
    g: &GrpcUpstream,
    req: &Request<Incoming>,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> Response<Body> {
    let query = req.uri().query();
    let ids: Result<Vec<u64>, _> = query_param(query, "ids")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect();
    let Ok(room_ids) = ids else {
        return bad_request("`ids` must be room numbers");
    };
    let fields = fields_of(query);
    let mut client = g.client.clone();
    let call = client.batch_get_rooms(outbound(
        BatchGetRoomsRequest {
            room_ids,
            field_mask: mask(&fields),
        },
        priority,
        deadline,
    ));
    answer(call.await, |r| {
        let rooms: Vec<_> = r.rooms.iter().map(|r| room_json(r, &fields)).collect();
        serde_json::json!({ "rooms": rooms })
    })
}
