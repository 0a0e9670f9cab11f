//! Why a token was refused, in the gateway's own words: one variant per rule, each with its
//! stable [`ErrorCode`] and a fixed explanation (never a library's error text, which may change
//! between versions or echo token contents).

use http::StatusCode;
use shared::ErrorCode;

use crate::error::ApiError;

/// The rule a token broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token in the request.
    Missing,
    /// Not a compact JWS the gateway can read; says what is wrong.
    Malformed(&'static str),
    /// The signature does not verify.
    BadSignature,
    /// The `kid` names no known key.
    UnknownKey,
    /// `alg` is `none`, unknown, or not the algorithm of the key.
    AlgorithmNotAllowed,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// `aud` names none of the configured audiences.
    WrongAudience,
    /// `iss` is not a configured issuer.
    WrongIssuer,
    /// A `crit` header lists extensions the gateway does not understand.
    UnsupportedCrit,
}

impl TokenError {
    /// The stable code of the 401 body.
    pub const fn code(self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::Unauthorized,
            Self::Malformed(_) => ErrorCode::TokenMalformed,
            Self::BadSignature => ErrorCode::TokenBadSignature,
            Self::UnknownKey => ErrorCode::TokenUnknownKey,
            Self::AlgorithmNotAllowed => ErrorCode::TokenAlgorithmNotAllowed,
            Self::Expired => ErrorCode::TokenExpired,
            Self::NotYetValid => ErrorCode::TokenNotYetValid,
            Self::WrongAudience => ErrorCode::TokenWrongAudience,
            Self::WrongIssuer => ErrorCode::TokenWrongIssuer,
            Self::UnsupportedCrit => ErrorCode::TokenUnsupportedCrit,
        }
    }

    /// The human explanation of the 401 body (and of the WebSocket 4500 close reason).
    pub const fn detail(self) -> &'static str {
        match self {
            Self::Missing => {
                "a token is required: Authorization: Bearer <token>, ?token=<token> or the auth cookie"
            }
            Self::Malformed(what) => what,
            Self::BadSignature => "the token's signature does not verify",
            Self::UnknownKey => "the token names a key (kid) this gateway does not know",
            Self::AlgorithmNotAllowed => "the token's alg is not the algorithm of its key",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet (nbf)",
            Self::WrongAudience => "the token is not meant for this audience (aud)",
            Self::WrongIssuer => "the token was not issued by an accepted issuer (iss)",
            Self::UnsupportedCrit => "the token requires header extensions (crit) not supported",
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_code_and_fits_a_close_frame() {
        let all = [
            TokenError::Missing,
            TokenError::Malformed("x"),
            TokenError::BadSignature,
            TokenError::UnknownKey,
            TokenError::AlgorithmNotAllowed,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::WrongIssuer,
            TokenError::UnsupportedCrit,
        ];
        for (i, a) in all.iter().enumerate() {
            // "unauthorized: " + detail is cut at 120 characters in the close reason.
            assert!(a.detail().len() <= 105, "{a:?}");
            for b in &all[i + 1..] {
                assert_ne!(a.code(), b.code());
            }
        }
    }
}
