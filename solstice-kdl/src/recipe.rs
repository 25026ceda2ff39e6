//! Image recipes: the KDL file that says how a VM's golden image is built
//! (`images/debian-12/image.kdl` in the repository). Parsed like a
//! workflow, behind the same guards and with the same diagnostics; the
//! build itself is `solstice image build` (in `solstice-vmm`).
//!
//! ```
//! let text = r#"
//! image name="debian-12" {
//!     label "debian-12"
//!     debootstrap suite="bookworm"
//!     disk_gib 8
//!     packages "build-essential" "git" "python3"
//!     user "ci"
//!     run "echo 'built by solstice' > /etc/motd"
//! }
//! "#;
//! let recipe = solstice_kdl::recipe::parse_recipe("image.kdl", text).unwrap();
//! assert_eq!(recipe.name, "debian-12");
//! assert_eq!(recipe.packages.len(), 3);
//! assert_eq!(recipe.user.as_deref(), Some("ci"));
//!
//! let broken = solstice_kdl::recipe::parse_recipe("image.kdl", "image name=\"x\" { lable \"x\" }");
//! let typo = broken.unwrap_err();
//! assert!(typo.problems().iter().any(|p| p.help.as_deref() == Some("did you mean `label`?")));
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ParseError, ParseOptions, read_document};

/// Most packages a recipe may name (all `packages` nodes together).
pub const MAX_PACKAGES: usize = 1_000;
/// Most `copy` and `run` steps a recipe may have.
pub const MAX_RECIPE_STEPS: usize = 256;
/// Most labels one image may serve.
pub const MAX_IMAGE_LABELS: usize = 16;
/// The largest root disk a recipe may ask for, in GiB.
pub const MAX_DISK_GIB: u32 = 1_024;
/// The longest path (`copy`'s `from` and `to`, `from`), in bytes.
pub const MAX_RECIPE_PATH: usize = 4_096;

/// A parsed image recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Recipe {
    /// The image's name (letters, digits, `.`, `_`, `-`): its directory in
    /// the image cache.
    pub name: String,
    /// The `runs_on` labels the image serves (at least one).
    pub labels: Vec<String>,
    /// What the root file system starts from.
    pub base: Base,
    /// The size of a VM's root disk in GiB: the golden disk is only as big
    /// as its files, and each VM's overlay is grown to this size.
    pub disk_gib: u32,
    /// Debian packages installed (without their recommendations) before
    /// the steps run.
    pub packages: Vec<String>,
    /// Files copied in and commands run, in the recipe's order.
    pub steps: Vec<RecipeStep>,
    /// The user the runner and so every step runs as (with password-less
    /// `sudo` for root); `None`: root.
    pub user: Option<String>,
}

/// Where an image's root file system starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Base {
    /// A fresh Debian root made by `debootstrap --variant=minbase`.
    Debootstrap {
        /// The release (`bookworm`).
        suite: String,
        /// The mirror; `None`: `http://deb.debian.org/debian`.
        mirror: Option<String>,
    },
    /// The root file system of another recipe (a directory holding
    /// `image.kdl`, or the file), relative to this recipe's directory:
    /// its packages, files, user and kernel, then this recipe's.
    Recipe {
        /// The path as written.
        path: String,
    },
}

/// One build step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RecipeStep {
    /// Copy a host file or directory into the image.
    Copy {
        /// The host path: relative to the recipe's directory or absolute;
        /// `${VAR}` is the builder's environment variable `VAR` and a
        /// leading `~/` its home directory.
        from: String,
        /// The absolute path in the image.
        to: String,
    },
    /// Run a command in the image (`/bin/sh -c`, as root, in a chroot,
    /// without network but for the package mirror).
    Run {
        /// The command.
        command: String,
    },
}

/// Parses and validates a recipe; `name` is used in diagnostics.
pub fn parse_recipe(name: &str, text: &str) -> Result<Recipe, ParseError> {
    let options = ParseOptions::default();
    let source: Arc<str> = Arc::from(text);
    let (doc, _) =
        read_document(text, &options).map_err(|p| ParseError::new(name, source.clone(), p))?;
    let mut problems = Vec::new();
    let mut omitted = 0;
    crate::schema::recipe(&doc, &mut problems, &mut omitted)
        .ok_or_else(|| ParseError::with_omitted(name, source.clone(), problems, omitted))
}

/// Parses raw bytes (size and encoding checked first, as for a workflow).
pub fn parse_recipe_bytes(name: &str, bytes: &[u8]) -> Result<Recipe, ParseError> {
    let text = crate::decode(name, bytes, &ParseOptions::default())?;
    parse_recipe(name, text)
}

/// A Debian package name (`[a-z0-9][a-z0-9+.-]+`), optionally with
/// `=VERSION` (letters, digits, `.+~:-`).
pub fn valid_package(p: &str) -> bool {
    let (name, version) = match p.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (p, None),
    };
    let name_ok = name.len() >= 2
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'-')
        });
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.len() <= 128
            && v.as_bytes()[0].is_ascii_digit()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-'))
    });
    name_ok && version_ok
}

/// A user name `useradd` takes: `[a-z_][a-z0-9_-]*`, at most 32 bytes.
pub fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && (u.as_bytes()[0].is_ascii_lowercase() || u.as_bytes()[0] == b'_')
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in [
            "gcc",
            "build-essential",
            "libstdc++6",
            "g++",
            "python3.11",
            "curl=7.88.1-10+deb12u5",
        ] {
            assert!(valid_package(ok), "{ok}");
        }
        for bad in [
            "", "a", "-rf", "Gcc", "gcc;rm", "gcc =1", "gcc=", "gcc=x1", "a b", "--force",
        ] {
            assert!(!valid_package(bad), "{bad}");
        }
    }

    #[test]
    fn user_names() {
        assert!(valid_user("ci"));
        assert!(valid_user("_build-1"));
        for bad in ["", "Ci", "1ci", "c i", "ci;", &"a".repeat(33)] {
            assert!(!valid_user(bad), "{bad}");
        }
    }
}
