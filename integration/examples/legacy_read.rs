//! Feeds an mfio file to legacy code that only knows `std::io::Read` (and
//! `Seek`), through `IoCursor`.
//!
//! `cargo run -p mfio-integration --example legacy_read`

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use mfio_backends::{OpenOptions, Runtime};
use mfio_core::{IoBackendExt, IoCursor};

/// Pretend legacy code: counts lines and words of any reader.
fn count(reader: impl Read) -> std::io::Result<(usize, usize)> {
    let mut lines = 0;
    let mut words = 0;
    for line in BufReader::new(reader).lines() {
        lines += 1;
        words += line?.split_whitespace().count();
    }
    Ok((lines, words))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("text.txt");
    let text = "the quick brown fox\njumps over\nthe lazy dog\n".repeat(1000);
    std::fs::write(&path, &text)?;
    let rt = Runtime::new()?;
    let file = rt.block_on(rt.open(&path, OpenOptions::new().read(true)))?;
    let mut cursor = IoCursor::new(file, 0);
    let (lines, words) = count(&mut cursor)?;
    assert_eq!((lines, words), (3000, 9000));
    cursor.seek(SeekFrom::End(-4))?;
    let mut tail = String::new();
    cursor.read_to_string(&mut tail)?;
    assert_eq!(tail, "dog\n");
    println!(
        "{lines} lines, {words} words through std::io::Read on the {} backend",
        rt.kind()
    );
    Ok(())
}
