//! Remote reads over UCX: a server process answers range requests by
//! reading a file with the io_uring runtime and sending the bytes with a
//! UCX tag send from the same buffer (rendezvous for large ranges, so the
//! bytes land straight in the client's buffer); the client fetches ranges
//! with many requests in flight and checks every byte.
//!
//! ```text
//! cargo run -p mfio-net --example remote_read            # client; starts the server
//! cargo run -p mfio-net --example remote_read -- --tcp   # over TCP on loopback
//! ```
//!
//! The two processes swap worker addresses over the server's stdin and
//! stdout (hex), then everything else goes over UCX. The server's file
//! reads and its UCX sends run under one `block_on`, on one descriptor
//! (`Composite` of the runtime and the worker).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use futures::stream::{FuturesUnordered, StreamExt};
use mfio_backends::{Composite, OpenOptions, Runtime};
use mfio_core::{Error, IoBackendExt, IoRead, IoWrite, Result};
use mfio_net::ucx::{Context, Tag, TagMatch, Worker, WorkerAddress};

/// Tag of a request: offset (8 bytes LE), length (8), reply tag (8).
const REQUEST: u64 = 1;
/// Reply tags start here (one per request in flight).
const REPLY_BASE: u64 = 1 << 32;
const FILE_LEN: usize = 64 << 20;
const MAX_RANGE: u64 = 4 << 20;
const IN_FLIGHT: usize = 16;
const REQUESTS: u64 = 200;

fn context(tcp: bool) -> Result<Context> {
    let builder = if tcp {
        Context::builder().set("TLS", "tcp").set("NET_DEVICES", "lo")
    } else {
        Context::builder().set("TLS", "sm,self")
    };
    builder.build()
}

/// The byte at `offset` of the test file.
fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn serve(path: &Path, tcp: bool) -> Result<()> {
    let runtime = Runtime::new()?;
    let worker = context(tcp)?.worker()?;
    println!("ADDR {}", worker.address().to_hex());
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let peer = WorkerAddress::from_hex(&line)?;
    let client = worker.connect(&peer)?;
    let both = Composite::new(vec![Box::new(runtime.clone()), Box::new(worker.clone())])?;
    both.block_on(async {
        let file = runtime.open(path, OpenOptions::new().read(true)).await?;
        loop {
            let (got, request) = worker
                .read_at(TagMatch::exact(REQUEST), Vec::with_capacity(24))
                .await
                .into_parts();
            if got? != 24 {
                return Err(Error::new(std::io::ErrorKind::InvalidData, "short request"));
            }
            let word = |i: usize| u64::from_le_bytes(request[i..i + 8].try_into().unwrap_or([0; 8]));
            let (offset, len, reply) = (word(0), word(8), word(16));
            if len == 0 {
                return Ok(());
            }
            // Read with io_uring, send the same buffer with UCX.
            let (read, buf) = file
                .read_exact_at(offset, Vec::with_capacity(len as usize))
                .await
                .into_parts();
            read?;
            let (sent, _) = client.write_at(Tag(reply), buf).await.into_parts();
            sent?;
        }
    })
}

fn client(tcp: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data");
    let data: Vec<u8> = (0..FILE_LEN as u64).map(byte_at).collect();
    std::fs::write(&path, &data)?;
    let exe = std::env::current_exe()?;
    let mut args = vec!["serve".to_string(), path.display().to_string()];
    if tcp {
        args.push("--tcp".into());
    }
    let mut server = Command::new(exe)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let (Some(mut to_server), Some(from_server)) = (server.stdin.take(), server.stdout.take()) else {
        return Err(Error::new(std::io::ErrorKind::Other, "no pipes to the server"));
    };
    // UCX may print its own lines to stdout: the address is the line we marked.
    let mut lines = BufReader::new(from_server).lines();
    let address = loop {
        match lines.next() {
            Some(line) => {
                if let Some(hexed) = line?.strip_prefix("ADDR ") {
                    break WorkerAddress::from_hex(hexed)?;
                }
            }
            None => return Err(Error::new(std::io::ErrorKind::UnexpectedEof, "the server exited")),
        }
    };
    let worker = context(tcp)?.worker()?;
    writeln!(to_server, "{}", worker.address().to_hex())?;
    to_server.flush()?;
    let server_ep = worker.connect(&address)?;
    let started = std::time::Instant::now();
    let fetched = fetch(&worker, &server_ep, &data)?;
    let secs = started.elapsed().as_secs_f64();
    // A zero-length request ends the server.
    let (sent, _) = worker
        .block_on(server_ep.write_at(Tag(REQUEST), [0u8; 24].to_vec()))
        .into_parts();
    sent?;
    let status = server.wait()?;
    if !status.success() {
        return Err(Error::new(
            std::io::ErrorKind::Other,
            format!("server failed: {status}"),
        ));
    }
    println!(
        "remote_read: {REQUESTS} ranges, {:.1} MiB fetched over {} and verified ({:.0} MiB/s)",
        fetched as f64 / (1 << 20) as f64,
        if tcp { "tcp" } else { "shared memory" },
        fetched as f64 / (1 << 20) as f64 / secs
    );
    Ok(())
}

/// Fetches `REQUESTS` ranges, `IN_FLIGHT` at a time; returns the bytes fetched.
fn fetch(worker: &Worker, server: &mfio_net::ucx::Endpoint, data: &[u8]) -> Result<u64> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    worker.block_on(async {
        let mut pending = FuturesUnordered::new();
        let mut issued = 0u64;
        let mut total = 0u64;
        loop {
            while issued < REQUESTS && pending.len() < IN_FLIGHT {
                let len = 1 + next() % MAX_RANGE;
                let offset = next() % (FILE_LEN as u64 - len);
                let reply = REPLY_BASE + issued;
                issued += 1;
                pending.push(async move {
                    // Post the receive first: the reply lands in this buffer.
                    let recv = worker.tag_recv(TagMatch::exact(reply), Vec::with_capacity(len as usize));
                    let mut request = Vec::with_capacity(24);
                    for word in [offset, len, reply] {
                        request.extend_from_slice(&word.to_le_bytes());
                    }
                    let send = server.write_at(Tag(REQUEST), request);
                    let (got, sent) = futures::join!(recv, send);
                    sent.0?;
                    let (info, buf) = got.into_parts();
                    let info = info?;
                    if info.len as u64 != len || buf[..] != data[offset as usize..(offset + len) as usize] {
                        return Err(Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("range {offset}+{len} differs"),
                        ));
                    }
                    Ok(len)
                });
            }
            match pending.next().await {
                Some(done) => total += done?,
                None => return Ok(total),
            }
        }
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tcp = args.iter().any(|a| a == "--tcp");
    match args.first().map(String::as_str) {
        Some("serve") => {
            let path = args
                .get(1)
                .ok_or_else(|| Error::new(std::io::ErrorKind::InvalidInput, "serve <file>"))?;
            serve(Path::new(path), tcp)
        }
        _ => client(tcp),
    }
}
