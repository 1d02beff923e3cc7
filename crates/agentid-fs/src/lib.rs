//! The one place where agentid reads and writes files: the CA directory, the credential
//! directories the CLI writes, and the CLI's `--out` files.
//!
//! # Security model
//!
//! - **Writes never follow a planted link.** A file is written to a temporary file created
//!   exclusively (`O_CREAT | O_EXCL`, so a symbolic link or anything else already at that name
//!   makes the creation fail) under a random name in the destination's directory, made durable,
//!   then renamed over the destination. Readers see the old or the new contents, never a mix.
//! - **What is not a regular file is never replaced.** A destination that is a FIFO or a
//!   character device (`/dev/null`, a terminal) is written in place, the way a shell redirection
//!   would; a symbolic link (including `/dev/stdout`), a directory, a block device or a socket is
//!   refused. Renaming over any of them would replace a system file when run as root. A FIFO
//!   another user owns (planted at an output's name in a shared directory) is refused: its
//!   owner would take the output, or block the writer, and answer later reads of the name.
//! - **Secrets are 0600 from creation on and never overwritten.** [`create_secret`] writes a
//!   temporary file that is 0600 from its creation and links it to its name only if that name
//!   is free.
//! - **Secrets are created only in directories others cannot change.** [`create_secret`]
//!   refuses a directory owned by another user (not root), or whose entries group or others
//!   can replace (write permission without the sticky bit), and every directory and link on
//!   the way to it must be held as firmly: see [`check_secret_dir`].
//! - **Secrets are refused when group or others can access them.** [`read_secret`] checks the
//!   mode of the handle it reads (the file checked is the file read) and does not block on a
//!   FIFO planted where a key should be.
//! - **A credential directory is read only if the reader holds it.** [`read_held`],
//!   [`read_held_secret`] and [`read_held_private_key`] (every file of a credential directory:
//!   `bundle.json`, the trust anchors; `cert.pem`; `key.pem`; the chain; and token files) refuse
//!   a file that others could have put there: see [`check_held`]. The file and every directory
//!   and link on the way to it from `/` must be owned by the reader or root (and, when root
//!   reads, by the credential directory's owner: root acting for a service user, outside
//!   directories others can write such as `/tmp`), no directory
//!   on the way writable by group or others unless sticky (as `/tmp`), the file itself not
//!   writable by them, and a regular file (a FIFO there is refused without blocking). Whoever
//!   could replace `bundle.json` could make the reader trust their CA. The same rule holds for
//!   every trust or key input outside a credential directory: a CA directory's files (its
//!   configuration, policy, certificates, keys, public keys and signed bundle), a `--bundle`
//!   file, a revocation list, a retiring key file and a private key named on the command line.
//! - **A file handed over by another user is read only if nobody else could have changed
//!   it.** [`read_handed`] and [`open_handed`] (a CSR given to `agentid cert sign`, `task open`
//!   or `task child`: the agent that made it may be another user; the delegatee's certificate
//!   of `delegate --to-cert`; an audit export kept by an auditor) take the file as its owner
//!   wrote it, but refuse it when group or others can write it, or a directory on the way to
//!   it lets them replace its entries (write permission without the sticky bit): whoever could
//!   put their own request there would have the CA certify their key as the agent's. (In a
//!   sticky directory such as `/tmp`, whoever made the name owns the file: these reads cannot
//!   tell who that was.)
//! - **Reads are bounded.** Every read refuses more than a caller-given limit
//!   ([`MAX_FILE_BYTES`] for all of agentid's files; [`open_handed`] leaves the bound to its
//!   caller, which reads a stream).
//!
//! Unix only: modes and file kinds are Unix notions.
#![forbid(unsafe_code)]
#![cfg(unix)]

mod error;
mod pem;
mod read;
mod write;

pub use error::{FileKind, FsError, Unheld};
pub use pem::{pem_encode, read_held_private_key, read_private_key, write_private_key};
pub use read::{
    check_held, open_handed, read_bounded, read_handed, read_held, read_held_secret, read_regular,
    read_secret, MAX_FILE_BYTES,
};
pub use write::{
    check_public_destination, check_secret_dir, create_public, create_secret, ensure_dir,
    make_private_dir, write_private, write_public, Outcome,
};
