//! File-system conformance on every backend: a tree of small files, nested
//! and empty directories and 4 × 64 MiB pseudo-random files, read by absolute
//! and by directory-relative path, listed, copied and compared against
//! `std::fs`, sequentially and concurrently; then the path operations.

#[macro_use]
mod util;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use futures::future::try_join_all;
use mfio_backends::{Dir, FileType, OpenOptions, Runtime};
use mfio_core::{IoRead, IoWrite, Result};
use util::{pattern, rw};

const BIG: usize = 64 << 20;

/// The tree, as (relative path, contents); directories end in `/`.
fn tree_spec() -> Vec<(String, Vec<u8>)> {
    let mut spec = vec![
        ("a.txt".to_string(), b"alpha\n".to_vec()),
        ("b.txt".to_string(), b"".to_vec()),
        ("sub1/".to_string(), vec![]),
        ("sub1/c.txt".to_string(), b"gamma, in a subdirectory\n".to_vec()),
        ("sub1/sub2/".to_string(), vec![]),
        ("sub1/sub2/d.txt".to_string(), pattern(70_000, 4)),
        ("sub1/empty2/".to_string(), vec![]),
        ("empty1/".to_string(), vec![]),
        ("big/".to_string(), vec![]),
    ];
    for i in 0..4 {
        spec.push((format!("big/big{i}.bin"), pattern(BIG, 1000 + i)));
    }
    spec
}

fn build_with_std(root: &Path, spec: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for (rel, data) in spec {
        match rel.strip_suffix('/') {
            Some(dir) => std::fs::create_dir_all(root.join(dir))?,
            None => std::fs::write(root.join(rel), data)?,
        }
    }
    Ok(())
}

fn std_names(dir: &Path) -> std::io::Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
}

async fn read_all(rt: &Runtime, dir: Option<&Dir>, path: &Path) -> Result<Vec<u8>> {
    let mut options = OpenOptions::new();
    options.read(true);
    let file = match dir {
        Some(d) => d.open(path, &options).await?,
        None => rt.open(path, &options).await?,
    };
    let (res, data) = file.read_to_end_at(0, Vec::new()).await.into_parts();
    res?;
    Ok(data)
}

async fn check_file(rt: &Runtime, root: &Path, dir: &Dir, rel: &str, data: &[u8]) -> Result<()> {
    let abs = read_all(rt, None, &root.join(rel)).await?;
    assert!(abs == data, "{rel} differs (absolute path)");
    let relative = read_all(rt, Some(dir), Path::new(rel)).await?;
    assert!(relative == data, "{rel} differs (dir-relative path)");
    Ok(())
}

async fn copy_file(rt: &Runtime, from: &Path, to: &Path, rel: &str) -> Result<()> {
    let data = read_all(rt, None, &from.join(rel)).await?;
    let out = rt
        .open(to.join(rel), OpenOptions::new().write(true).create_new(true))
        .await?;
    out.write_all_at(0, data).await.0?;
    out.sync_all().await
}

/// Reads every file by absolute and dir-relative path and lists every
/// directory; `concurrent` runs all reads at once.
fn check_tree(rt: &Runtime, root: &Path, spec: &[(String, Vec<u8>)], concurrent: bool) -> Result<()> {
    util::run(rt, async {
        let dir = rt.open_dir(root).await?;
        let files: Vec<&(String, Vec<u8>)> = spec.iter().filter(|(p, _)| !p.ends_with('/')).collect();
        if concurrent {
            try_join_all(files.iter().map(|(rel, data)| check_file(rt, root, &dir, rel, data))).await?;
        } else {
            for (rel, data) in &files {
                check_file(rt, root, &dir, rel, data).await?;
            }
        }
        for (rel, _) in spec
            .iter()
            .filter(|(p, _)| p.ends_with('/'))
            .chain([&(String::new(), vec![])])
        {
            let path = root.join(rel.trim_end_matches('/'));
            let listed: BTreeSet<OsString> = rt
                .read_dir(&path)
                .await?
                .into_iter()
                .map(|e| e.file_name().to_os_string())
                .collect();
            assert_eq!(listed, std_names(&path)?, "listing of {rel:?}");
        }
        let top: BTreeSet<OsString> = dir
            .entries()
            .await?
            .iter()
            .map(|e| e.file_name().to_os_string())
            .collect();
        assert_eq!(top, std_names(root)?);
        Ok(())
    })
}

/// Copies the tree with mfio (directories and files), then compares with std.
fn copy_tree(rt: &Runtime, from: &Path, to: &Path, spec: &[(String, Vec<u8>)], concurrent: bool) -> Result<()> {
    util::run(rt, async {
        rt.create_dir(to).await?;
        for (rel, _) in spec.iter().filter(|(p, _)| p.ends_with('/')) {
            rt.create_dir(to.join(rel.trim_end_matches('/'))).await?;
        }
        let files = spec.iter().filter(|(p, _)| !p.ends_with('/'));
        if concurrent {
            try_join_all(files.map(|(rel, _)| copy_file(rt, from, to, rel))).await?;
        } else {
            for (rel, _) in files {
                copy_file(rt, from, to, rel).await?;
            }
        }
        Ok::<(), mfio_core::Error>(())
    })?;
    for (rel, data) in spec.iter().filter(|(p, _)| !p.ends_with('/')) {
        assert!(std::fs::read(to.join(rel))? == *data, "copy of {rel} differs");
    }
    Ok(())
}

fn tree_read_and_copy(rt: &Runtime, tmp: &Path) -> Result<()> {
    let spec = tree_spec();
    let root = tmp.join("tree");
    build_with_std(&root, &spec)?;
    check_tree(rt, &root, &spec, false)?;
    check_tree(rt, &root, &spec, true)?;
    copy_tree(rt, &root, &tmp.join("copy-seq"), &spec, false)?;
    copy_tree(rt, &root, &tmp.join("copy-par"), &spec, true)?;
    // The copies read back through mfio as well.
    check_tree(rt, &tmp.join("copy-par"), &spec, true)
}

fn path_operations(rt: &Runtime, tmp: &Path) -> Result<()> {
    util::run(rt, async {
        rt.create_dir(tmp.join("d")).await?;
        let err = rt.create_dir(tmp.join("d")).await.expect_err("exists");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        let f = rt.open(tmp.join("d/f"), &rw()).await?;
        f.write_all_at(0, b"0123456789".to_vec()).await.0?;
        f.set_len(4).await?;
        assert_eq!(std::fs::read(tmp.join("d/f"))?, b"0123");
        f.allocate(0, 1 << 16).await?;
        assert_eq!(f.metadata().await?.len(), 1 << 16);
        let err = rt.read_dir(tmp.join("d/f")).await.expect_err("a file, not a directory");
        assert_eq!(
            (err.raw_os_error(), err.op()),
            (Some(libc::ENOTDIR), Some(mfio_core::Op::ReadDir))
        );
        let meta = rt.metadata(tmp.join("d")).await?;
        assert_eq!(meta.file_type(), FileType::Dir);
        std::os::unix::fs::symlink(tmp.join("d/f"), tmp.join("link"))?;
        assert_eq!(rt.metadata(tmp.join("link")).await?.file_type(), FileType::File);
        assert_eq!(
            rt.symlink_metadata(tmp.join("link")).await?.file_type(),
            FileType::Symlink
        );
        let err = rt.remove_dir(tmp.join("d")).await.expect_err("not empty");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
        rt.rename(tmp.join("d/f"), tmp.join("moved")).await?;
        assert!(!tmp.join("d/f").exists() && tmp.join("moved").exists());
        rt.remove_dir(tmp.join("d")).await?;
        rt.remove_file(tmp.join("moved")).await?;
        let err = rt.remove_file(tmp.join("moved")).await.expect_err("gone");
        assert_eq!(
            (err.kind(), err.raw_os_error()),
            (ErrorKind::NotFound, Some(libc::ENOENT))
        );
        let dir = rt.open_dir(tmp).await?;
        dir.create_dir("rel").await?;
        dir.rename("rel", "rel2").await?;
        assert_eq!(dir.metadata("rel2").await?.file_type(), FileType::Dir);
        dir.remove_dir("rel2").await?;
        Ok(())
    })
}

backend_tests!(tree_read_and_copy, path_operations);

#[test]
fn paths_are_checked_before_submitting() {
    // Opens descriptors: not while the suites above count theirs.
    util::serial(paths_are_checked_before_submitting_body);
}

fn paths_are_checked_before_submitting_body() {
    let rt = Runtime::new().expect("runtime");
    let err = util::run(&rt, rt.create_dir(PathBuf::from("bad\0name"))).expect_err("NUL byte");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
