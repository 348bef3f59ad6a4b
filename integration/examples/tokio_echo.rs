//! A TCP echo server on the io_uring backend (poll where io_uring is
//! unavailable), running inside tokio: the backend is driven by a tokio task,
//! and each connection is served by a spawned tokio task. A few clients
//! check the echo, then the program exits.
//!
//! `cargo run -p mfio-integration --features tokio --example tokio_echo`

use mfio_backends::{Runtime, TcpListener, TcpStream};
use mfio_core::{IoReadStream, IoWriteStream};
use mfio_integration::Tokio;

async fn serve(stream: TcpStream) -> mfio_core::Result<()> {
    loop {
        let (res, buf) = stream.read(Vec::with_capacity(16 * 1024)).await.into_parts();
        if res? == 0 {
            return Ok(());
        }
        stream.write_all(buf).await.0?;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::new()?;
    // One task drives the backend; every other task just awaits its I/O.
    let driver = tokio::spawn(Tokio::driver(rt.clone()));
    let listener = TcpListener::bind(&rt, "127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        for _ in 0..4 {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(serve(stream));
        }
        Ok::<(), mfio_core::Error>(())
    });
    let mut clients = Vec::new();
    for i in 0..4u8 {
        clients.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let msg = vec![i; 100_000];
            s.write_all(&msg).await?;
            s.shutdown().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            assert_eq!(back, msg, "echo differs");
            Ok::<(), std::io::Error>(())
        }));
    }
    for c in clients {
        c.await??;
    }
    server.await??;
    driver.abort();
    println!("echoed 4 connections on the {} backend inside tokio", rt.kind());
    Ok(())
}
