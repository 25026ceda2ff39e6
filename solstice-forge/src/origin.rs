//! Where a forge's credentials may go. A clone URL comes from a webhook
//! body (a stranger's text even when signed: a fork's owner picks their
//! repository's name, and Forgejo relays what its users configure); a
//! token is attached to a clone only when the URL's scheme, host and port
//! are the forge's own, read the way git and curl read them.
//!
//! Parsers disagree on odd URLs (`http://evil#@forge/`: the last `@` is a
//! userinfo end to a naive splitter, the `#` a fragment to curl), so a URL
//! that is not already in its canonical form gets no credentials at all:
//! no user information, no query, no fragment, no percent-encoded or
//! upper-case host, nothing a WHATWG parser would rewrite.
//!
//! ```
//! use solstice_forge::{ForgeOrigin, credentials_may_go_to};
//!
//! let forge = ForgeOrigin::parse("https://codeberg.org").unwrap();
//! assert!(credentials_may_go_to("https://codeberg.org/owner/repo.git", &forge));
//! assert!(!credentials_may_go_to("http://127.0.0.1:9#@codeberg.org/owner/repo.git", &forge));
//! assert!(!credentials_may_go_to("https://codeberg.org.evil.example/owner/repo.git", &forge));
//! ```

use reqwest::Url;

/// The scheme, host and port a forge's repositories are cloned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl ForgeOrigin {
    /// The origin of a configured base URL (`https://codeberg.org`,
    /// `http://[::1]:3000/`); `None` unless it is an http(s) URL with a
    /// host.
    pub fn parse(base: &str) -> Option<ForgeOrigin> {
        let url = Url::parse(base).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        Some(ForgeOrigin {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_string(),
            port: url.port_or_known_default()?,
        })
    }

    /// The same origin on another host (github.com for api.github.com).
    pub fn with_host(&self, host: &str) -> ForgeOrigin {
        ForgeOrigin {
            host: host.to_string(),
            ..self.clone()
        }
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `scheme://host[:port]/`, the prefix of the forge's clone URLs.
    pub fn prefix(&self) -> String {
        let default = match self.scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        if self.port == default {
            format!("{}://{}/", self.scheme, self.host)
        } else {
            format!("{}://{}:{}/", self.scheme, self.host, self.port)
        }
    }
}

/// Whether the credentials of the forge at `forge` may be sent to a clone
/// of `clone_url`: it is an http(s) URL in canonical form, without user
/// information, query or fragment, whose scheme, host and port are the
/// forge's.
pub fn credentials_may_go_to(clone_url: &str, forge: &ForgeOrigin) -> bool {
    let Ok(url) = Url::parse(clone_url) else {
        return false;
    };
    // Anything a parser rewrote (a percent-encoded or upper-case host,
    // backslashes, dot segments, odd spacing) may be read differently by
    // another parser: no credentials for it.
    if url.as_str() != clone_url {
        return false;
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || clone_url.contains('%')
    {
        return false;
    }
    url.scheme() == forge.scheme
        && url.host_str() == Some(forge.host.as_str())
        && url.port_or_known_default() == Some(forge.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_forges_own_canonical_urls_get_credentials() {
        let forge = ForgeOrigin::parse("http://forge.example:3000/").expect("origin");
        assert_eq!(forge.prefix(), "http://forge.example:3000/");
        let ok = [
            "http://forge.example:3000/owner/repo.git",
            "http://forge.example:3000/o/r",
        ];
        for url in ok {
            assert!(credentials_may_go_to(url, &forge), "{url}");
        }
        let refused = [
            // The issue's: the host after the last `@` is the forge's, but
            // git and curl connect to 127.0.0.1.
            "http://127.0.0.1:4444#@forge.example:3000/owner/repo.git",
            "http://127.0.0.1:4444?@forge.example:3000/owner/repo.git",
            "http://127.0.0.1:4444/#@forge.example:3000/owner/repo.git",
            // User information, query, fragment.
            "http://user@forge.example:3000/owner/repo.git",
            "http://user:pw@forge.example:3000/owner/repo.git",
            "http://forge.example:3000/owner/repo.git?x=1",
            "http://forge.example:3000/owner/repo.git#frag",
            // Percent-encoded or upper-case host, backslash, dot segments.
            "http://%66orge.example:3000/owner/repo.git",
            "http://FORGE.example:3000/owner/repo.git",
            "http://forge.example:3000\\@evil/owner/repo.git",
            "http://forge.example:3000/a/../owner/repo.git",
            "http://forge.example:3000/owner/repo%2egit",
            // Another scheme, host or port.
            "https://forge.example:3000/owner/repo.git",
            "http://forge.example/owner/repo.git",
            "http://forge.example:3001/owner/repo.git",
            "http://forge.example.evil:3000/owner/repo.git",
            "http://evil.forge.example:3000/owner/repo.git",
            "ssh://forge.example:3000/owner/repo.git",
            "file:///owner/repo.git",
            "not a url",
            "",
        ];
        for url in refused {
            assert!(!credentials_may_go_to(url, &forge), "{url}");
        }
    }

    #[test]
    fn ip_literals_and_default_ports() {
        let v6 = ForgeOrigin::parse("http://[::1]:3000").expect("origin");
        assert!(credentials_may_go_to("http://[::1]:3000/o/r.git", &v6));
        assert!(!credentials_may_go_to("http://[::2]:3000/o/r.git", &v6));
        assert!(!credentials_may_go_to(
            "http://[0:0:0:0:0:0:0:1]:3000/o/r.git",
            &v6
        ));
        let gh = ForgeOrigin::parse("https://api.github.com")
            .expect("origin")
            .with_host("github.com");
        assert_eq!(gh.prefix(), "https://github.com/");
        assert!(credentials_may_go_to("https://github.com/o/r.git", &gh));
        assert!(!credentials_may_go_to(
            "https://github.com:443/o/r.git",
            &gh
        ));
        assert!(!credentials_may_go_to(
            "https://api.github.com/o/r.git",
            &gh
        ));
        assert!(ForgeOrigin::parse("ftp://x").is_none());
        assert!(ForgeOrigin::parse("nonsense").is_none());
    }
}
