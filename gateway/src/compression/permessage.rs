//! `permessage-deflate` (RFC 7692) negotiation: which of the client's offers the gateway
//! accepts, and the answer it sends.
//!
//! The gateway always answers `server_no_context_takeover`: each event is compressed once, by a
//! fresh compressor, and the same bytes go to every subscriber, which only works if no message
//! refers back to earlier ones. Clients must accept that parameter (RFC 7692 §7.1.1.1), so it
//! needs nothing from the offer. `server_max_window_bits=N` is accepted too: a message of at
//! most 2^N bytes compressed from scratch cannot refer further back than 2^N, so such messages
//! are sent compressed and longer ones uncompressed. `client_no_context_takeover` is answered
//! when offered, and also when the gateway keeps no inflater between messages (the default),
//! so an idle connection holds no window.

/// The accepted parameters of one connection's `permessage-deflate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMessageDeflate {
    /// The client resets its compressor for every message: no inflater is kept between them.
    pub client_no_context_takeover: bool,
    /// The client's window for our messages, as bits (8-15); 15 when not limited.
    pub server_max_window_bits: u8,
}

impl PerMessageDeflate {
    /// The first acceptable `permessage-deflate` offer among `Sec-WebSocket-Extensions`
    /// values, or none (then the connection runs uncompressed). `client_takeover`: whether the
    /// gateway lets clients keep their context (and so keeps an inflater per connection).
    pub fn negotiate<'a>(
        values: impl IntoIterator<Item = &'a str>,
        client_takeover: bool,
    ) -> Option<Self> {
        values
            .into_iter()
            .flat_map(|v| v.split(','))
            .find_map(|offer| parse_offer(offer, client_takeover))
    }

    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        out
    }

    /// The longest message sent compressed: with a smaller window, longer ones could refer
    /// further back than the client keeps.
    pub fn max_compressed(&self) -> usize {
        1usize << self.server_max_window_bits
    }
}

/// One offer: `permessage-deflate` and valid parameters, each at most once; anything else
/// declines the offer (RFC 7692 §7.1).
fn parse_offer(offer: &str, client_takeover: bool) -> Option<PerMessageDeflate> {
    let mut parts = offer.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let (mut server_nct, mut client_nct, mut server_bits, mut client_bits) =
        (false, false, None, None);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param.trim(), None),
        };
        let bits = || {
            value
                .and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if !server_nct && value.is_none() => server_nct = true,
            "client_no_context_takeover" if !client_nct && value.is_none() => client_nct = true,
            "server_max_window_bits" if server_bits.is_none() => server_bits = Some(bits()?),
            // A bare client_max_window_bits only says the client could take a limit; the
            // gateway inflates with a full window whatever the client uses, so it sets none.
            "client_max_window_bits" if client_bits.is_none() => {
                client_bits = Some(if value.is_some() { bits()? } else { 15 });
            }
            _ => return None,
        }
    }
    Some(PerMessageDeflate {
        client_no_context_takeover: client_nct || !client_takeover,
        server_max_window_bits: server_bits.unwrap_or(15),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offer: &str, takeover: bool) -> Option<String> {
        PerMessageDeflate::negotiate([offer], takeover).map(|p| p.response())
    }

    #[test]
    fn browser_and_library_offers_are_answered_without_server_context() {
        // Chromium's offer.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits", false).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits", true).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        // Python websockets' default offer.
        let p = PerMessageDeflate::negotiate(
            ["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"],
            true,
        )
        .unwrap();
        assert_eq!(p.max_compressed(), 4096);
        assert_eq!(
            p.response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
        );
        assert_eq!(
            answer(
                "PerMessage-Deflate;Client_No_Context_Takeover;server_no_context_takeover",
                true
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            answer(r#"permessage-deflate; server_max_window_bits="10""#, true).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
        );
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(answer(bad, true), None, "{bad}");
        }
        assert_eq!(
            answer(
                "permessage-deflate; server_max_window_bits=99, permessage-deflate",
                true
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            PerMessageDeflate::negotiate(["foo", "permessage-deflate"], true)
                .map(|p| p.max_compressed()),
            Some(1 << 15)
        );
    }
}
