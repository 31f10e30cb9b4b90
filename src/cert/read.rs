//! Reading the small files wssd trusts: certificates, private keys, CA bundles.
//!
//! Whoever can rename a file into a watched directory decides what wssd opens, so a read
//! takes only what such a file can be: a regular file (after following symlinks) of at
//! most [`MAX_PEM_FILE`] bytes. A FIFO would block the reader until a writer appears, a
//! device such as /dev/zero never ends, and a huge file would be read whole; each is
//! refused before its contents are read. The file is opened non-blocking and checked
//! again through the open descriptor, so a swap between the check and the open changes
//! nothing.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest PEM file read. A chain of a few certificates is a few KiB; Mozilla's whole
/// root bundle is ~200 KiB.
pub const MAX_PEM_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a regular file (it is {kind})", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is larger than {} MiB; a certificate or key file is a few KiB", path.display(), MAX_PEM_FILE >> 20)]
    TooLarge { path: PathBuf },
}

impl ReadError {
    /// Is the file simply not there (yet)?
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads `path`, a regular file of at most [`MAX_PEM_FILE`] bytes.
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let check = |meta: &std::fs::Metadata| {
        let kind = kind_of(meta.file_type());
        if kind != "a regular file" {
            return Err(ReadError::NotRegular {
                path: path.to_path_buf(),
                kind,
            });
        }
        if meta.len() > MAX_PEM_FILE {
            return Err(ReadError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(io)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    check(&file.metadata().map_err(io)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    // It grew between the check and the read.
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_everything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, b"pem").unwrap();
        assert_eq!(read_pem_file(&file).unwrap(), b"pem");
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(
            read_pem_file(&link).unwrap(),
            b"pem",
            "symlinks are followed"
        );

        let zero = dir.path().join("zero.pem");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_pem_file(&zero),
            Err(ReadError::NotRegular {
                kind: "a device",
                ..
            })
        ));
        assert!(matches!(
            read_pem_file(dir.path()),
            Err(ReadError::NotRegular {
                kind: "a directory",
                ..
            })
        ));
        let big = dir.path().join("big.pem");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_PEM_FILE + 1)
            .unwrap();
        assert!(matches!(
            read_pem_file(&big),
            Err(ReadError::TooLarge { .. })
        ));
        let exact = dir.path().join("exact.pem");
        std::fs::File::create(&exact)
            .unwrap()
            .set_len(MAX_PEM_FILE)
            .unwrap();
        assert_eq!(read_pem_file(&exact).unwrap().len() as u64, MAX_PEM_FILE);
        let missing = read_pem_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(missing.is_not_found());
    }
}
