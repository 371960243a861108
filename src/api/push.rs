//! `POST /loki/api/v1/push` (and the legacy `/api/prom/push`): decoding a push body.
//!
//! Owns choosing the decoder the way Loki does — `Content-Type: application/json` means
//! JSON, anything else (also none) means snappy-block protobuf — applying
//! `Content-Encoding` (`gzip`, `deflate`; `snappy` is accepted and ignored) with the
//! decompressed size capped by `distributor.max_decompressed_size` before it is allocated,
//! and mapping the distributor's outcome to Loki's statuses: 204 stored, 400 some entries
//! refused (the rest stored), 413 too large, 422 no streams, 429 rate or stream limit,
//! 500 WAL/storage failure. The body size cap (`distributor.max_recv_msg_size`) is a layer
//! set in `api::router`.
//!
//! It does not own validation or storing (`distributor`, `ingester`).

use std::io::Read;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};

use lode_push::{DecodeError, PushRequest};

use super::error::{ApiError, ApiErrorKind};
use super::{tenant_of, AppState};
use crate::distributor;

/// The push handler.
pub async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(&state, &headers)?;
    let max = state.config.distributor.max_decompressed_size.as_usize();
    let is_json = media_type(&headers).eq_ignore_ascii_case("application/json");
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // Decoding is CPU work proportional to the body: keep it off the async workers.
    let request = tokio::task::spawn_blocking(move || decode(&body, is_json, &encoding, max))
        .await
        .map_err(|e| ApiError::internal(format!("push decode task failed: {e}")))??;
    match state.distributor.push(&tenant, request).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(push_error(e)),
    }
}

/// The media type of `Content-Type`, parameters such as `charset` removed.
fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

/// Decodes a push body; every failure is the client's (400 or 413).
pub fn decode(
    body: &[u8],
    is_json: bool,
    content_encoding: &str,
    max_decompressed: usize,
) -> Result<PushRequest, ApiError> {
    let inflated;
    let raw: &[u8] = match content_encoding {
        "" | "identity" | "snappy" => body,
        "gzip" | "x-gzip" => {
            inflated = read_capped(flate2::read::GzDecoder::new(body), max_decompressed, "gzip")?;
            &inflated
        }
        "deflate" => {
            inflated = read_capped(
                flate2::read::DeflateDecoder::new(body),
                max_decompressed,
                "deflate",
            )?;
            &inflated
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Content-Encoding {other:?} not supported: send gzip, deflate, snappy or none"
            )))
        }
    };
    let decoded = if is_json {
        lode_push::decode_json(raw)
    } else {
        lode_push::decode_protobuf_snappy(raw, max_decompressed)
    };
    decoded.map_err(|e| match e {
        DecodeError::TooLarge { size, limit } => ApiError::new(
            ApiErrorKind::PayloadTooLarge,
            format!("decompressed push body of {size} bytes exceeds the limit of {limit} bytes (distributor.max_decompressed_size)"),
        ),
        other => ApiError::bad_request(other.to_string()),
    })
}

/// Reads a decompressing reader to its end, refusing to hold more than `max` bytes.
fn read_capped(reader: impl Read, max: usize, what: &str) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("corrupt {what} push body: {e}")))?;
    if out.len() > max {
        return Err(ApiError::new(
            ApiErrorKind::PayloadTooLarge,
            format!(
                "{what}-decompressed push body exceeds the limit of {max} bytes (distributor.max_decompressed_size)"
            ),
        ));
    }
    Ok(out)
}

fn push_error(e: distributor::Error) -> ApiError {
    let kind = match &e {
        distributor::Error::NoStreams => ApiErrorKind::UnprocessableEntity,
        distributor::Error::RateLimited(_) => ApiErrorKind::TooManyRequests,
        distributor::Error::Rejected { limited: true, .. } => ApiErrorKind::TooManyRequests,
        distributor::Error::Rejected { .. } => ApiErrorKind::BadRequest,
        distributor::Error::Ingester(_) => ApiErrorKind::Internal,
    };
    ApiError::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_gzip_bomb_is_refused_before_it_is_held() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'a'; 4 << 20]).unwrap();
        let body = gz.finish().unwrap();
        let err = decode(&body, true, "gzip", 1 << 20).unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            err.message.contains("max_decompressed_size"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_encodings_and_corrupt_bodies_are_400() {
        let err = decode(b"x", true, "br", 1 << 20).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err
            .message
            .starts_with("Content-Encoding \"br\" not supported"));
        let err = decode(b"not gzip", true, "gzip", 1 << 20).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err = decode(b"\xff\xff\xff", false, "", 1 << 20).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
