//! Every buffer kind goes through packets and comes back intact; plain-old-data helpers.

mod util;

use bytemuck::{Pod, Zeroable};
use bytes::{Bytes, BytesMut};
use mfio_core::mem::MemBackend;
use mfio_core::{AlignedBuf, IoBackendExt, IoRead, IoWrite, Result};

#[test]
fn read_into_every_buffer_kind() -> Result<()> {
    let be = MemBackend::builder().split_at(5).out_of_order(2).build()?;
    let data = util::pattern(100, 1);
    let f = be.file(data.clone());
    be.block_on(async {
        // Uninitialised capacity is filled without zeroing first.
        let (r, v) = f.read_at(10, Vec::with_capacity(20)).await.into_parts();
        assert_eq!((r?, v.as_slice()), (20, &data[10..30]));
        let (r, b) = f.read_at(0, vec![0u8; 7].into_boxed_slice()).await.into_parts();
        assert_eq!((r?, &b[..]), (7, &data[..7]));
        let (r, bm) = f.read_at(90, BytesMut::with_capacity(32)).await.into_parts();
        assert_eq!((r?, &bm[..]), (10, &data[90..]));
        let (r, al) = f.read_at(3, AlignedBuf::with_capacity(4096, 4096)?).await.into_parts();
        assert_eq!(r?, 97);
        assert_eq!(al.as_ptr() as usize % 4096, 0);
        assert_eq!(&al[..], &data[3..]);
        Ok(())
    })
}

#[test]
fn write_from_every_buffer_kind() -> Result<()> {
    let be = MemBackend::builder().split_at(3).build()?;
    let f = be.file(Vec::new());
    let mut aligned = AlignedBuf::with_capacity(512, 512)?;
    aligned.extend_from_slice(b"aligned");
    be.block_on(async {
        f.write_all_at(0, b"vec".to_vec()).await.0?;
        f.write_all_at(3, b"box".to_vec().into_boxed_slice()).await.0?;
        f.write_all_at(6, Bytes::from_static(b"bytes")).await.0?;
        f.write_all_at(11, BytesMut::from(&b"mut"[..])).await.0?;
        f.write_all_at(14, aligned).await.0?;
        f.write_all_at(21, &b"static"[..]).await.0
    })?;
    assert_eq!(f.contents(), b"vecboxbytesmutalignedstatic");
    Ok(())
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
struct Header {
    magic: u32,
    version: u16,
    flags: u16,
    length: u64,
}

#[test]
fn pod_round_trip_and_short_pod_read() -> Result<()> {
    let be = MemBackend::new()?;
    let f = be.file(Vec::new());
    let h = Header {
        magic: 0x4d46_494f,
        version: 1,
        flags: 0xa5a5,
        length: 1 << 40,
    };
    be.block_on(f.write_pod_at(5, &h))?;
    assert_eq!(f.contents().len(), 5 + 16);
    assert_eq!(&f.contents()[5..9], &0x4d46_494fu32.to_ne_bytes());
    let back: Header = be.block_on(f.read_pod_at(5))?;
    assert_eq!(back, h);
    let short = be.block_on(f.read_pod_at::<Header>(6)).expect_err("one byte short");
    assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
    Ok(())
}

#[test]
fn futures_are_send_where_the_handle_is_sync() {
    fn assert_send<T: Send>(_: &T) {}
    let be = MemBackend::new().expect("backend");
    let f = be.file(Vec::new());
    assert_send(&f.read_at(0, Vec::with_capacity(1)));
    assert_send(&f.read_exact_at(0, Vec::with_capacity(1)));
    assert_send(&f.read_to_end_at(0, Vec::new()));
    assert_send(&f.write_all_at(0, vec![1]));
    assert_send(&f);
    fn assert_sync<T: Sync>(_: &T) {}
    assert_sync(&f);
    assert_sync(&be);
}
