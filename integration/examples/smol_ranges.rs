//! Reads many ranges of a file concurrently from a smol program, with the
//! backend driven by smol's reactor, and checks every range.
//!
//! `cargo run -p mfio-integration --features smol --example smol_ranges`

use futures::future::try_join_all;
use mfio_backends::{OpenOptions, Runtime};
use mfio_core::IoRead;
use mfio_integration::Smol;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data.bin");
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&path, &data)?;
    let rt = Runtime::new()?;
    smol::block_on(Smol::run(&rt, async {
        let file = rt.open(&path, OpenOptions::new().read(true)).await?;
        let ranges = (0..1000u64).map(|i| ((i * 7919) % 7_990_000, 4096 + (i as usize % 3) * 1000));
        let reads = ranges.map(|(pos, len)| {
            let file = &file;
            let data = &data;
            async move {
                let (res, buf) = file.read_exact_at(pos, Vec::with_capacity(len)).await.into_parts();
                res?;
                assert_eq!(
                    buf[..],
                    data[pos as usize..pos as usize + len],
                    "range at {pos} differs"
                );
                Ok::<usize, mfio_core::Error>(len)
            }
        });
        let bytes: usize = try_join_all(reads).await?.into_iter().sum();
        println!(
            "read 1000 ranges ({bytes} bytes) concurrently on the {} backend under smol",
            rt.kind()
        );
        Ok::<(), mfio_core::Error>(())
    }))?;
    Ok(())
}
