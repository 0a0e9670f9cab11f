//! `permessage-deflate` (RFC 7692) negotiation: which of the client's offers the gateway
//! accepts, and the answer it sends.
//!
//! Each event is compressed once and the same bytes go to every subscriber, so a message may
//! refer back only into what *every* client that gets it has inflated. Two shared forms exist
//! (`hub::message`): one compressed from scratch, which any client can inflate, and one
//! compressed against the channel's previous event, for a client that keeps its window between
//! messages and inflated exactly that event last. The gateway therefore keeps server context
//! takeover — costing it nothing per connection — when the offer allows it with a full
//! 32 KiB window (browsers' offers do), and answers `server_no_context_takeover` otherwise
//! (asked for, `server_max_window_bits` below 15, or `compression.ws_server_context_takeover`
//! off). `server_max_window_bits=N` is accepted: a message of at most 2^N bytes compressed from
//! scratch cannot refer further back than 2^N, so such messages are sent compressed and longer
//! ones uncompressed. `client_no_context_takeover` is answered when offered, and also when the
//! gateway keeps no inflater between messages (the default), so an idle connection holds no
//! window.

/// The accepted parameters of one connection's `permessage-deflate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMessageDeflate {
    /// The client resets its compressor for every message: no inflater is kept between them.
    pub client_no_context_takeover: bool,
    /// The client's window for our messages, as bits (8-15), when its offer limited it; the
    /// answer repeats it (RFC 7692 §7.1.2.1: that is how the limit is accepted).
    pub server_max_window_bits: Option<u8>,
    /// The client keeps its window between our messages: a message may refer back into the
    /// last compressed one.
    pub server_context_takeover: bool,
}

/// What the gateway allows, from `[compression]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow {
    /// Clients may keep their compression context (the gateway keeps an inflater for them).
    pub client_takeover: bool,
    /// The gateway keeps its context when the offer allows (see the module's notes).
    pub server_takeover: bool,
}

impl PerMessageDeflate {
    /// The first acceptable `permessage-deflate` offer among `Sec-WebSocket-Extensions`
    /// values, or none (then the connection runs uncompressed), within what `allow` permits.
    pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>, allow: Allow) -> Option<Self> {
        values
            .into_iter()
            .flat_map(|v| v.split(','))
            .find_map(|offer| parse_offer(offer, allow))
    }

    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate");
        if !self.server_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            out.push_str(&format!("; server_max_window_bits={bits}"));
        }
        out
    }

    /// The client's window for our messages, in bits: 15 (32 KiB) unless the offer limited it.
    pub fn server_window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }

    /// The longest message sent compressed: with a smaller window, longer ones could refer
    /// further back than the client keeps.
    pub fn max_compressed(&self) -> usize {
        1usize << self.server_window_bits()
    }
}

/// One offer: `permessage-deflate` and valid parameters, each at most once; anything else
/// declines the offer (RFC 7692 §7.1).
fn parse_offer(offer: &str, allow: Allow) -> Option<PerMessageDeflate> {
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
        client_no_context_takeover: client_nct || !allow.client_takeover,
        server_max_window_bits: server_bits,
        // The compressor's window is 32 KiB: with a smaller client window a message could
        // refer back further than the client keeps.
        server_context_takeover: allow.server_takeover
            && !server_nct
            && server_bits.is_none_or(|b| b == 15),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Allow = Allow {
        client_takeover: true,
        server_takeover: true,
    };
    const CLIENT: Allow = Allow {
        client_takeover: true,
        server_takeover: false,
    };
    const SERVER: Allow = Allow {
        client_takeover: false,
        server_takeover: true,
    };

    fn answer(offer: &str, allow: Allow) -> Option<String> {
        PerMessageDeflate::negotiate([offer], allow).map(|p| p.response())
    }

    #[test]
    fn browser_offers_keep_server_context_unless_it_is_off() {
        // Chromium's offer.
        let chromium = "permessage-deflate; client_max_window_bits";
        assert_eq!(
            answer(chromium, SERVER).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        assert_eq!(
            answer(chromium, BOTH).as_deref(),
            Some("permessage-deflate")
        );
        let p = PerMessageDeflate::negotiate([chromium], BOTH).unwrap();
        assert!(p.server_context_takeover && p.max_compressed() == 1 << 15);
        assert_eq!(
            answer(chromium, CLIENT).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        // Firefox's.
        assert_eq!(
            answer("permessage-deflate", SERVER).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
    }

    #[test]
    fn offers_that_limit_the_server_get_no_server_context() {
        // A client that limits our window to 4 KiB (Python `websockets` can be told to): too
        // small for the compressor's 32 KiB, so messages stand alone.
        let p = PerMessageDeflate::negotiate(
            ["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"],
            BOTH,
        )
        .unwrap();
        assert_eq!(p.max_compressed(), 4096);
        assert!(!p.server_context_takeover);
        assert_eq!(
            p.response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
        );
        assert_eq!(
            answer(
                "PerMessage-Deflate;Client_No_Context_Takeover;server_no_context_takeover",
                BOTH
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            answer(r#"permessage-deflate; server_max_window_bits="10""#, BOTH).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
        );
        assert_eq!(
            answer("permessage-deflate; server_max_window_bits=15", BOTH).as_deref(),
            Some("permessage-deflate; server_max_window_bits=15"),
            "a full window limits nothing, and is repeated to accept it"
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
            assert_eq!(answer(bad, BOTH), None, "{bad}");
        }
        assert_eq!(
            answer(
                "permessage-deflate; server_max_window_bits=99, permessage-deflate",
                CLIENT
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            PerMessageDeflate::negotiate(["foo", "permessage-deflate"], BOTH)
                .map(|p| p.max_compressed()),
            Some(1 << 15)
        );
    }
}
