//! The `permessage-deflate` part of the upgrade: what the client offers and the check of the
//! server's answer, which says whether the server keeps its compression context between
//! messages (then the client must keep its window too).

/// Chromium's offer (the default): the server may keep its context, and so send messages that
/// refer back into earlier ones; we never compress, so any client window suits us.
pub const OFFER_BROWSER: &str = "permessage-deflate; client_max_window_bits";

/// The offer of `--ws-no-server-context`: every message must inflate from an empty window (the
/// self-contained messages alone, as before servers kept context).
pub const OFFER_NO_SERVER_CONTEXT: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// The `Sec-WebSocket-Extensions` offer; `no_server_context`: ask for
/// `server_no_context_takeover`.
pub fn offer(no_server_context: bool) -> &'static str {
    if no_server_context {
        OFFER_NO_SERVER_CONTEXT
    } else {
        OFFER_BROWSER
    }
}

/// The values of header `name` in a raw response head.
pub fn header_values<'a>(head: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    head.split(|&b| b == b'\n').filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Checks the server's `Sec-WebSocket-Extensions` answer to [`offer`]`(no_server_context)`:
/// one `permessage-deflate`, nothing unknown, and `server_no_context_takeover` if we asked for
/// it (RFC 7692 §7.1.1.1: the server must then answer it). Returns whether the server keeps its
/// context (answered without `server_no_context_takeover`), so the reader knows how to inflate;
/// errors say why, for the failure report.
pub fn check_answer<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    no_server_context: bool,
) -> Result<bool, String> {
    let mut keeps_context = None;
    for ext in values.into_iter().flat_map(|v| v.split(|&b| b == b',')) {
        let text = String::from_utf8_lossy(ext);
        let mut parts = text.split(';').map(str::trim);
        if !parts
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
        {
            return Err(format!("unexpected extension {}", text.trim()));
        }
        if keeps_context.is_some() {
            return Err("permessage-deflate answered twice".into());
        }
        let mut server_nct = false;
        for p in parts {
            let name = p
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match name.as_str() {
                "server_no_context_takeover" => server_nct = true,
                // We never compress what we send, and inflate with a full window whatever
                // window the server compresses with.
                "client_no_context_takeover"
                | "server_max_window_bits"
                | "client_max_window_bits" => {}
                _ => return Err(format!("unknown permessage-deflate parameter {p}")),
            }
        }
        if no_server_context && !server_nct {
            return Err(
                "permessage-deflate without the server_no_context_takeover asked for".into(),
            );
        }
        keeps_context = Some(!server_nct);
    }
    keeps_context.ok_or_else(|| "permessage-deflate declined".into())
}
