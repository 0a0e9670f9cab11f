//! Test helpers shared by the reader's and writer's tests: loopback sockets and frames as a
//! client sends and reads them.

use std::time::Duration;

use actix_http::ws::{OpCode, Parser};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::{MessageStream, Session};

/// The frame and message limit the tests' readers use.
pub(super) const MAX: usize = 1024;

/// A connected loopback pair: (server side, client side).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.unwrap().0, client.unwrap())
}

/// Both halves of a server socket, and the client's end.
pub(super) async fn raw() -> (MessageStream, Session, TcpStream) {
    let (server, client) = pair().await;
    let (r, w) = server.into_split();
    (
        MessageStream::new(Box::new(r), MAX),
        Session::new(Box::new(w)),
        client,
    )
}

/// A masked client frame.
pub(super) fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Parser::write_message(&mut buf, payload, op, fin, true);
    buf.to_vec()
}

/// Every server frame the client has received until EOF.
pub(super) async fn server_frames(client: &mut TcpStream) -> Vec<(OpCode, Vec<u8>)> {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut frames = Vec::new();
    while let Some((fin, op, payload)) = Parser::parse(&mut buf, false, usize::MAX).unwrap() {
        assert!(fin);
        frames.push((op, payload.map(|p| p.to_vec()).unwrap_or_default()));
    }
    assert!(buf.is_empty(), "trailing bytes");
    frames
}
