//! The error type: every variant names the file.

use std::fmt;
use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// What kind of directory entry a path names (without following a final symbolic link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A FIFO (named pipe).
    Fifo,
    /// A character device (`/dev/null`, a terminal).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// A Unix socket.
    Socket,
    /// Anything else.
    Other,
}

impl FileKind {
    /// The kind of `file_type`.
    pub fn of(file_type: FileType) -> Self {
        if file_type.is_file() {
            Self::Regular
        } else if file_type.is_dir() {
            Self::Directory
        } else if file_type.is_symlink() {
            Self::Symlink
        } else if file_type.is_fifo() {
            Self::Fifo
        } else if file_type.is_char_device() {
            Self::CharDevice
        } else if file_type.is_block_device() {
            Self::BlockDevice
        } else if file_type.is_socket() {
            Self::Socket
        } else {
            Self::Other
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Regular => "a regular file",
            Self::Directory => "a directory",
            Self::Symlink => "a symbolic link",
            Self::Fifo => "a FIFO",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
            Self::Socket => "a socket",
            Self::Other => "not a regular file",
        })
    }
}

/// Why others could change an entry on the way to a file: a directory, a link, or the file
/// itself (what [`FsError::NotHeld`] names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unheld {
    /// Owned by a user who is neither the one reading or writing, nor root (nor, for root
    /// reading a credential directory, that directory's owner).
    Owner {
        /// Its owner.
        uid: u32,
    },
    /// Owned by the credential directory's owner (whom root reading it takes as its holder),
    /// but in a directory others can write (a sticky one such as `/tmp`): anyone could have
    /// made that name there, so root does not take it as the service user's.
    OwnerInSharedDir {
        /// Its owner.
        uid: u32,
    },
    /// A directory whose entries group or others can create, rename or remove: write
    /// permission for them without the sticky bit.
    OpenDir {
        /// Its mode bits.
        mode: u32,
    },
    /// A file that group or others can write.
    WritableFile {
        /// Its mode bits.
        mode: u32,
    },
}

impl fmt::Display for Unheld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owner { uid } => write!(f, "is owned by another user (uid {uid})"),
            Self::OwnerInSharedDir { uid } => write!(
                f,
                "is owned by uid {uid} in a directory others can write, where anyone could have made it"
            ),
            Self::OpenDir { mode } => write!(
                f,
                "has mode {mode:03o}: group or others can replace its files"
            ),
            Self::WritableFile { mode } => {
                write!(f, "has mode {mode:03o}: group or others can write it")
            }
        }
    }
}

/// What to run about an entry [`FsError::NotHeld`] names.
fn held_fix(path: &Path, why: &Unheld, reader: u32, dir_owner: Option<u32>) -> String {
    let p = path.display();
    match why {
        Unheld::OpenDir { .. } => format!("run `chmod go-w {p}`"),
        Unheld::WritableFile { .. } => {
            format!("run `chmod go-w {p}`, then check what it holds")
        }
        Unheld::OwnerInSharedDir { .. } => format!(
            "as root, a service user's credentials are read only outside directories others can write (such as /tmp): move the directory below one of the service user's or root's, or run `chown 0 {p}`"
        ),
        Unheld::Owner { .. } => match dir_owner {
            Some(owner) => format!(
                "as root, credentials are read only through entries owned by root or by their directory's owner (uid {owner}): run `chown {owner} {p}`, or move the directory"
            ),
            None if reader == 0 => format!(
                "as root, credentials are read only through entries owned by root or by their directory's owner: run `chown 0 {p}`, or move the directory"
            ),
            None => format!(
                "credentials are read only through entries owned by you (uid {reader}) or root: have root run `chown {reader} {p}`, or move the directory below directories of yours"
            ),
        },
    }
}

/// Why a file could not be read or written.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The operating system refused or failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than the reader accepts.
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A file that must be created new already exists (possibly as a link planted there).
    #[error("{} already exists: refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The destination is something that is neither replaced nor written through: a symbolic
    /// link, a directory, a block device or a socket.
    #[error("{} is {kind}: refusing to replace it or to write through it", path.display())]
    NotWritable {
        /// The destination.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// A FIFO that another user (not root) owns, where an output is to be written in place:
    /// whoever planted it (in a shared directory) would take the output, or leave the writer
    /// waiting for ever, and answer later reads of that name with their own content.
    #[error(
        "{} is {kind} owned by another user (uid {uid}): refusing to write to it (whoever made it would answer later reads of this name); remove it or choose another path",
        path.display()
    )]
    NotOwned {
        /// The destination.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
        /// Its owner.
        uid: u32,
    },
    /// A public file would replace a file that holds a private key (an `--out` naming a key
    /// by mistake): a key lost that way is not to be had again.
    #[error(
        "{} holds a private key: refusing to replace it with a public file; name another file",
        path.display()
    )]
    HoldsKey {
        /// The destination.
        path: PathBuf,
    },
    /// A secret is not a regular file.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// A secret can be accessed by group or others.
    #[error(
        "{} has mode {mode:03o}: a private key must not be accessible to group or others (chmod 600)",
        path.display()
    )]
    InsecureMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret would be created in a directory that others control: owned by another user
    /// (not root), or one whose entries group or others can create, rename or remove (write
    /// permission without the sticky bit), or below a directory or through a link others
    /// control (they could rename the directory away, or point the link elsewhere, and put
    /// their own in its place). They could replace or remove the secret, or the files written
    /// beside it (a trust bundle, a certificate).
    #[error(
        "{} {why}: a secret written there could be replaced by others; choose a directory that only you can write (a new one, or `chmod go-w` if you own it)",
        path.display()
    )]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A file of a credential directory (its trust bundle, certificate, key or chain; a token
    /// file) that others could have put there: the file, or a directory or link on the way to it
    /// from `/`, is owned by a user the reader does not take as the directory's holder, or group
    /// or others can write it. Whoever controls that entry could make the reader trust their CA
    /// or present their key (see [`crate::read_held`]).
    #[error(
        "{} {why} (on the way to {}): whoever controls it could put their own trust anchors, certificate or key there; {}",
        path.display(),
        file.display(),
        held_fix(path, why, *reader, *dir_owner)
    )]
    NotHeld {
        /// The entry others control: the file, or a directory or link on the way to it.
        path: PathBuf,
        /// The file being read.
        file: PathBuf,
        /// What is wrong with `path`.
        why: Unheld,
        /// The reader's effective user id.
        reader: u32,
        /// For a reader that is root: the credential directory's owner, whose entries are taken
        /// as held too.
        dir_owner: Option<u32>,
    },
    /// A file another user may have written and handed over (a CSR) that others than its
    /// owner could have changed: the file is writable by group or others, or a directory on the
    /// way to it from `/` is one whose entries group or others can replace (write permission
    /// without the sticky bit). Whoever could replace it could have the CA certify their key
    /// in place of the one handed over (see [`crate::read_handed`]).
    #[error(
        "{} {why} (on the way to {}): others than whoever wrote it could have replaced it; {}",
        path.display(),
        file.display(),
        held_fix(path, why, *reader, None)
    )]
    Changeable {
        /// The entry others can change: the file, or a directory on the way to it.
        path: PathBuf,
        /// The file being read.
        file: PathBuf,
        /// What is wrong with `path`.
        why: Unheld,
        /// The reader's effective user id.
        reader: u32,
    },
    /// The file was read but is not a PKCS#8 PEM private key.
    #[error("{}: not a PKCS#8 PEM private key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl FsError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::TooLarge { path, .. }
            | Self::AlreadyExists { path }
            | Self::NotWritable { path, .. }
            | Self::NotOwned { path, .. }
            | Self::HoldsKey { path }
            | Self::NotRegular { path, .. }
            | Self::InsecureMode { path, .. }
            | Self::InsecureDir { path, .. }
            | Self::NotHeld { path, .. }
            | Self::Changeable { path, .. }
            | Self::BadKey { path, .. } => path,
        }
    }

    /// What to run about this error, when there is a command to run: the `chmod` or `chown` of
    /// an entry [`FsError::NotHeld`] or [`FsError::Changeable`] names (also at the end of its
    /// message).
    pub fn next_step(&self) -> Option<String> {
        match self {
            Self::NotHeld {
                path,
                why,
                reader,
                dir_owner,
                ..
            } => Some(held_fix(path, why, *reader, *dir_owner)),
            Self::Changeable {
                path, why, reader, ..
            } => Some(held_fix(path, why, *reader, None)),
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
