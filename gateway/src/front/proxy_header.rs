//! The PROXY protocol header (v1 text or v2 binary) a load balancer sends before anything else
//! on a connection (`server.proxy_protocol`), naming the client it proxies. Taken only from
//! trusted proxies, and only when the connection starts with one (a trusted proxy that does not
//! send it — nginx with `X-Forwarded-For`, a health check — is served as is). Read with the
//! request deadline and a size bound, exactly to its end — never a byte of what follows, which
//! belongs to TLS or HTTP — and parsed by the `ppp` crate.

use std::io;
use std::net::IpAddr;

use ppp::HeaderResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The most address and TLV bytes a v2 header may announce here (HAProxy sends 12 to 36
/// without TLVs, a few dozen more with them).
const V2_MAX_BODY: usize = 1024;

/// Reads the header if the connection starts with one; the client's address, or `None` when
/// there is no header or the proxy says it has no client (a `LOCAL` or `UNKNOWN` header, e.g.
/// its own health check).
pub async fn read(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<IpAddr>> {
    let read = async {
        if !starts_with_header(stream).await? {
            return Ok(None);
        }
        parse(&read_header(stream).await?)
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no request in time",
        )),
    }
}

/// Whether the first bytes (peeked, left in the socket) are a PROXY signature; waits while
/// they could still become one.
async fn starts_with_header(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 6];
    loop {
        stream.readable().await?;
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(false);
        }
        let seen = &first[..n];
        let v1 = b"PROXY ".starts_with(seen);
        let v2 = V2_SIGNATURE.starts_with(seen);
        if n == first.len() || !(v1 || v2) {
            return Ok(v1 || v2);
        }
        // A prefix of a signature: the rest is on its way (a proxy sends it in one packet).
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The header's bytes, read exactly to its end.
async fn read_header(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; 6];
    stream.read_exact(&mut head).await?;
    if head == b"PROXY " {
        // v1: to the CRLF, a byte at a time (once per connection, from a trusted proxy).
        while !head.ends_with(b"\r\n") {
            if head.len() >= V1_MAX {
                return Err(invalid("a PROXY v1 header longer than 107 bytes"));
            }
            head.push(stream.read_u8().await?);
        }
        return Ok(head);
    }
    if head[..] != V2_SIGNATURE[..6] {
        return Err(invalid("the connection does not start with a PROXY header"));
    }
    head.resize(16, 0);
    stream.read_exact(&mut head[6..]).await?;
    if head[..12] != V2_SIGNATURE[..] {
        return Err(invalid("a broken PROXY v2 signature"));
    }
    let body = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if body > V2_MAX_BODY {
        return Err(invalid("a PROXY v2 header beyond 1 KiB"));
    }
    head.resize(16 + body, 0);
    stream.read_exact(&mut head[16..]).await?;
    Ok(head)
}

/// The client address of a complete header.
fn parse(header: &[u8]) -> io::Result<Option<IpAddr>> {
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some(a.source_address.into()),
            ppp::v1::Addresses::Tcp6(a) => Some(a.source_address.into()),
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => Some(a.source_address.into()),
            (_, ppp::v2::Addresses::IPv6(a)) => Some(a.source_address.into()),
            _ => None,
        }),
        HeaderResult::V1(Err(e)) => Err(invalid(&format!("a bad PROXY v1 header: {e}"))),
        HeaderResult::V2(Err(e)) => Err(invalid(&format!("a bad PROXY v2 header: {e}"))),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn through_socket(bytes: Vec<u8>) -> (io::Result<Option<IpAddr>>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&bytes).await.unwrap();
            c.shutdown().await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        let got = read(&mut s, deadline).await;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        client.await.unwrap();
        (got, rest)
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[tokio::test]
    async fn both_versions_name_the_client_and_leave_the_rest() {
        let mut v1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8080\r\n".to_vec();
        v1.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (ip, rest) = through_socket(v1).await;
        assert_eq!(ip.unwrap(), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let mut addrs = vec![198, 51, 100, 8, 10, 0, 0, 1];
        addrs.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        let mut bytes = v2(1, 0x11, &addrs);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (ip, rest) = through_socket(bytes).await;
        assert_eq!(ip.unwrap(), Some("198.51.100.8".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01", "TLS bytes untouched");

        let (ip, _) = through_socket(v2(0, 0x00, &[])).await;
        assert_eq!(ip.unwrap(), None, "LOCAL: a health check");
        let (ip, _) = through_socket(b"PROXY UNKNOWN\r\n".to_vec()).await;
        assert_eq!(ip.unwrap(), None);
    }

    #[tokio::test]
    async fn without_a_header_nothing_is_read() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02",
            b"GE",
        ] {
            let (ip, rest) = through_socket(bytes.to_vec()).await;
            assert_eq!(ip.unwrap(), None);
            assert_eq!(rest, bytes, "left for HTTP or TLS");
        }
    }

    #[tokio::test]
    async fn broken_headers_are_refused() {
        for bytes in [
            b"PROXY TCP4 nonsense\r\n".to_vec(),
            [b"PROXY ".to_vec(), vec![b'x'; 200]].concat(),
            v2(1, 0x11, &[0; 3000]),
            b"PROXY TCP4 1.2.3.4".to_vec(),
        ] {
            let (ip, _) = through_socket(bytes.clone()).await;
            assert!(ip.is_err(), "{:?}", String::from_utf8_lossy(&bytes));
        }
    }
}
