//! Copies a file with the blocking API (`SyncIoRead`/`SyncIoWrite`) on the
//! native runtime, in 1 MiB chunks, and checks the copy.
//!
//! `cargo run -p mfio-integration --example blocking_copy [SRC DST]`

use mfio_backends::{OpenOptions, Runtime};
use mfio_core::{IoBackendExt, SyncIoFlush, SyncIoRead, SyncIoWrite};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (src, dst) = match args.as_slice() {
        [src, dst] => (src.into(), dst.into()),
        _ => {
            let src = dir.path().join("source.bin");
            std::fs::write(&src, (0..5_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>())?;
            (src, dir.path().join("copy.bin"))
        }
    };
    let rt = Runtime::new()?;
    let input = rt.block_on(rt.open(&src, OpenOptions::new().read(true)))?;
    let output = rt.block_on(rt.open(&dst, OpenOptions::new().write(true).create(true).truncate(true)))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = input.blocking_read_at(pos, &mut chunk)?;
        if n == 0 {
            break;
        }
        output.blocking_write_all_at(pos, &chunk[..n])?;
        pos += n as u64;
    }
    output.blocking_flush()?;
    assert_eq!(std::fs::read(&src)?, std::fs::read(&dst)?, "copy differs");
    println!("copied {pos} bytes on the {} backend", rt.kind());
    Ok(())
}
