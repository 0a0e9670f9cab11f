//! The front door: every accepted connection starts here.
//!
//! A connection whose first request is `GET /sse` or a `GET /ws` upgrade is served natively on
//! the raw socket, so an idle stream holds only its own state (a few hundred bytes) instead of
//! actix's HTTP/1 dispatcher with its two 8 KiB buffers. Everything else, including any later
//! request on a keep-alive connection, goes to the actix-web app with the bytes already read
//! replayed in front of the socket, so those routes behave exactly as before.

pub mod head;

use std::io;

use tokio::net::TcpStream;

/// Writes all of `bytes` to a raw socket (responses that are not part of a stream's hot path).
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
