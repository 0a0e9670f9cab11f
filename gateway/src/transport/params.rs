//! Query parameters the read endpoints share (`/sse`, `/poll`, `/history`): numbers bounded by
//! configuration, and the latest-value options `latest=N` and `since=latest`.

use shared::ErrorCode;

use crate::error::ApiError;

/// `value` as a whole number, clamped to `max` (a bound, not a refusal: asking for more than
/// the gateway gives is not an error); 400 `invalid_parameter` naming `name` otherwise.
pub fn bounded(name: &str, value: &str, max: u64) -> Result<u64, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("{name} must be a whole number (at most {max})"),
        ));
    }
    Ok(value.parse::<u64>().map_or(max, |n| n.min(max)))
}

/// How many of the channel's last events a subscription asks for: `latest=N`, or `since=latest`
/// (the latest value: one event). `None` when neither is given.
pub fn latest(
    since: Option<&str>,
    latest: Option<&str>,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    let from_since = match since {
        None | Some("") => None,
        Some("latest") => Some(1),
        Some(_) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                "since takes `latest` here; resume with lastEventId or Last-Event-ID",
            ));
        }
    };
    match latest {
        Some(n) => bounded("latest", n, max).map(Some),
        None => Ok(from_since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_clamped_not_refused() {
        assert_eq!(bounded("limit", "10", 100).unwrap(), 10);
        assert_eq!(bounded("limit", "1000", 100).unwrap(), 100);
        assert_eq!(bounded("limit", "99999999999999999999", 100).unwrap(), 100);
        assert_eq!(bounded("limit", " 0 ", 100).unwrap(), 0);
    }

    #[test]
    fn garbage_is_refused_with_a_code() {
        for bad in ["", "-1", "1.5", "x", "1e3", "+3", "123456789012345678901"] {
            let e = bounded("limit", bad, 100).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameter, "{bad}");
            assert!(e.detail().contains("limit"));
        }
    }

    #[test]
    fn latest_options() {
        assert_eq!(latest(None, None, 50).unwrap(), None);
        assert_eq!(latest(Some("latest"), None, 50).unwrap(), Some(1));
        assert_eq!(latest(None, Some("5"), 50).unwrap(), Some(5));
        assert_eq!(latest(Some("latest"), Some("7"), 50).unwrap(), Some(7));
        assert_eq!(latest(None, Some("500"), 50).unwrap(), Some(50));
        assert!(latest(Some("1:2"), None, 50).is_err());
        assert!(latest(None, Some("x"), 50).is_err());
    }
}
