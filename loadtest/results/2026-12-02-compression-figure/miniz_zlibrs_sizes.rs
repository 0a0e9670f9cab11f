// Piece sizes, compress and inflate times with flate2's two pure-Rust backends, for the loadtest
// --realistic payload (write_rows copied from loadtest/src/payload.rs). A standalone program:
// Cargo.toml with `flate2 = { version = "1.1", default-features = false, features =
// ["rust_backend"] }` and a feature `zrs = ["flate2/zlib-rs"]`; run with and without
// `--features zrs` in release mode.
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::io::Write;
use std::time::Instant;

fn rows(out: &mut Vec<u8>, seq: u64, ts_us: u64, size: usize) {
    const S: [&str; 16] = ["AAPL","MSFT","NVDA","AMZN","GOOGL","META","TSLA","BRK.B","AVGO","JPM","LLY","V","XOM","UNH","MA","COST"];
    const V: [&str; 4] = ["XNAS","XNYS","ARCX","BATS"];
    let start = out.len();
    let _ = write!(out, r#"{{"seq":{seq},"ts":{ts_us},"rows":["#);
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut first = true;
    while out.len() - start + 100 < size {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if !first { out.push(b','); }
        first = false;
        let bid = 5_000 + (x >> 8) % 95_000;
        let _ = write!(out, r#"{{"symbol":"{}","bid":{}.{:02},"ask":{}.{:02},"size":{},"venue":"{}","time":{}}}"#,
            S[(x % 16) as usize], bid / 100, bid % 100, (bid + 1 + (x >> 40) % 9) / 100, (bid + 1 + (x >> 40) % 9) % 100,
            100 * (1 + (x >> 20) % 50), V[((x >> 30) % 4) as usize], ts_us / 1000 - (x >> 50) % 500);
    }
    out.extend_from_slice(b"]}");
}
fn sse(seq: u64) -> Vec<u8> {
    let mut d = Vec::new(); rows(&mut d, seq, 1_764_650_000_000_000 + seq * 100_000, 1024);
    let mut o = format!("id: 19ad3f2c1b0:{}\ndata: ", seq + 1).into_bytes(); o.extend_from_slice(&d); o.extend_from_slice(b"\n\n"); o
}
fn ws(seq: u64) -> Vec<u8> {
    let mut d = Vec::new(); rows(&mut d, seq, 1_764_650_000_000_000 + seq * 100_000, 1024);
    let mut o = format!(r#"{{"type":"event","channel":"lt-0","id":"19ad3f2c1b0:{}","data":"#, seq + 1).into_bytes(); o.extend_from_slice(&d); o.push(b'}'); o
}
fn piece(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    c.reset();
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    out
}
fn main() {
    let backend = if cfg!(feature = "zrs") { "zlib-rs" } else { "miniz_oxide" };
    let frames: Vec<Vec<u8>> = (1000..1300).map(sse).collect();
    let msgs: Vec<Vec<u8>> = (1000..1300).map(ws).collect();
    let avg = |v: &[Vec<u8>]| v.iter().map(|x| x.len()).sum::<usize>() as f64 / v.len() as f64;
    println!("{backend}: sse frame {:.1} B, ws message {:.1} B", avg(&frames), avg(&msgs));
    for level in [1u32, 6, 9] {
        let mut c = Compress::new(Compression::new(level), false);
        let ps: Vec<Vec<u8>> = frames.iter().map(|f| piece(&mut c, f)).collect();
        let ws: Vec<Vec<u8>> = msgs.iter().map(|f| piece(&mut c, f)).collect();
        let t = Instant::now();
        let n = 3000;
        for i in 0..n { std::hint::black_box(piece(&mut c, &frames[i % frames.len()])); }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("  level {level}: sse piece {:.1} B ({:.3}x of frame), ws payload {:.1} B ({:.3}x); {us:.1} us/piece",
            avg(&ps), avg(&frames) / avg(&ps), avg(&ws) - 4.0, avg(&msgs) / (avg(&ws) - 4.0));
    }
    {
        let mut c = Compress::new(Compression::new(6), false);
        let mut f = std::fs::File::create(format!("pieces-{backend}.bin")).unwrap();
        for fr in &frames { let p = piece(&mut c, fr); f.write_all(&(p.len() as u32).to_le_bytes()).unwrap(); f.write_all(&p).unwrap(); }
    }
    // inflate: per-connection state (N states, round robin) vs one state reset per piece
    let mut c = Compress::new(Compression::new(6), false);
    let ps: Vec<Vec<u8>> = frames.iter().map(|f| piece(&mut c, f)).collect();
    for conns in [1usize, 1000, 10000] {
        let mut ds: Vec<Decompress> = (0..conns).map(|_| Decompress::new(false)).collect();
        let mut out = Vec::with_capacity(4096);
        let t = Instant::now();
        let n = 200_000;
        for i in 0..n {
            out.clear();
            let d = &mut ds[i % conns];
            d.decompress_vec(&ps[(i / conns) % ps.len()], &mut out, FlushDecompress::Sync).unwrap();
        }
        println!("  inflate, {conns} streams kept: {:.2} us/piece", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(4096);
    let t = Instant::now();
    let n = 200_000;
    for i in 0..n { out.clear(); d.reset(false); d.decompress_vec(&ps[i % ps.len()], &mut out, FlushDecompress::Sync).unwrap(); }
    println!("  inflate, one state reset per piece: {:.2} us/piece", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
