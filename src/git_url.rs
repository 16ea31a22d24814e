//! What a job may name for git to fetch: a repository URL and a revision
//! or branch name.
//!
//! A job is untrusted input, and git runs commands for some URLs (`ext::`)
//! and takes an argument starting with `-` for an option. The rule lives
//! here, in the data layer, so that the job parser refuses a bad URL at
//! submit with its key path, and the git cache (which also checks a
//! `file://` path against its roots on disk) applies the very same rule
//! before it runs git.
//!
//! Allowed: `https://`, `http://`, `git://` and `ssh://` with a valid host
//! (and port); `user@host:path` for ssh; `file:///path` with no host and no
//! `%`. Refused: any other transport, `<transport>::`, bare or relative
//! paths, `host:path` without a user, a URL, user or host starting with
//! `-`, control characters, URLs over 4 KiB. A revision or branch is a
//! plain git ref name (which a sha is too).

/// The longest URL accepted: far beyond any real one, short enough to keep
/// errors and the environment small.
pub const MAX_URL_BYTES: usize = 4096;

/// How a URL that passed [`check_url`] reaches the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `file:///path`: the path, still to be checked against the roots.
    File(String),
    /// A network URL; the user information, if any (`user`, `user:pass`).
    Net { userinfo: Option<String> },
}

/// The URL rule (see the module's docs). Pure: no file system, no git.
/// Returns why a URL is refused.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

pub fn parse_url(url: &str) -> Result<Kind, String> {
    if url.is_empty() {
        return Err("the URL is empty".into());
    }
    if url.len() > MAX_URL_BYTES {
        return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
    }
    if url.starts_with('-') {
        return Err("a URL may not start with `-` (git would take it for an option)".into());
    }
    if url.chars().any(char::is_control) {
        return Err("a URL may not hold control characters".into());
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "https" | "http" | "git" | "ssh" | "file") {
            return Err(format!(
                "transport {:?} is not allowed; use https, http, git, ssh or file",
                scheme
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if scheme == "file" {
            if !authority.is_empty() {
                return Err("a file URL names no host: file:///path".into());
            }
            // git does not undo percent-escapes in a file URL the way a
            // browser would; refusing them keeps the path checked against
            // `file_roots` the path git opens.
            if path.contains('%') {
                return Err("a file URL may not hold `%` escapes".into());
            }
            return Ok(Kind::File(path.to_owned()));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if let Some(user) = userinfo {
            if user.starts_with('-') {
                return Err("a user may not start with `-`".into());
            }
        }
        check_host_port(hostport)?;
        return Ok(Kind::Net {
            userinfo: userinfo.map(str::to_owned),
        });
    }
    // git's scp-like syntax is ssh: `user@host:path`, the user spelled
    // out, with no `/` before the colon (that would be a local path).
    let scp = url
        .split_once(':')
        .filter(|(head, _)| !head.contains('/'))
        .and_then(|(head, path)| head.split_once('@').map(|(u, h)| (u, h, path)));
    let Some((user, host, path)) = scp else {
        return Err(
            "not a URL git may fetch: use https://, http://, git://, ssh://, file:/// or user@host:path"
                .into(),
        );
    };
    if user.is_empty()
        || user.starts_with('-')
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{user:?} is not a user name for ssh (letters, digits, `.`, `_`, `-`; not first `-`)"
        ));
    }
    check_host(host)?;
    if path.is_empty() || path.starts_with(':') {
        return Err("an ssh URL user@host:path needs a path".into());
    }
    Ok(Kind::Net { userinfo: None })
}

/// `host` or `host:port` or `[v6]` or `[v6]:port`.
fn check_host_port(hostport: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{hostport:?}: an IPv6 host lacks its `]`"))?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("{hostport:?} is not an IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            p => (
                None,
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{hostport:?}: junk after `]`"))?,
            ),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (Some(h), p),
            None => (Some(hostport), ""),
        }
    };
    if let Some(h) = host {
        check_host(h)?;
    }
    if !port.chars().all(|c| c.is_ascii_digit()) || port.len() > 5 {
        return Err(format!("{port:?} is not a port"));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    if host.starts_with('-') {
        return Err("a host may not start with `-` (ssh would take it for an option)".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("{host:?} is not a host name"));
    }
    Ok(())
}

/// Why `name` may not be a revision or branch, if it may not: it must be a
/// plain git ref name (which a sha is too), so that it is never an option,
/// a revision expression (`^`, `~`, `@{`, `:`) or a pattern.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    if name.starts_with('-') {
        return Err("may not start with `-`");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may hold only visible ASCII characters");
    }
    if name.contains(['~', '^', ':', '?', '*', '[', '\\'])
        || name.contains("..")
        || name.contains("@{")
    {
        return Err("may not hold `~ ^ : ? * [ \\`, `..` or `@{`");
    }
    if name == "@"
        || name.ends_with(".lock")
        || name.ends_with('.')
        || name.split('/').any(|c| c.is_empty() || c.starts_with('.'))
    {
        return Err("is not a valid git ref name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_rule() {
        for ok in [
            "https://git.linaro.org/qa/test-definitions.git",
            "http://example.com/r.git",
            "git://example.com:9418/r.git",
            "ssh://git@example.com:2222/r.git",
            "ssh://[::1]/r.git",
            "ssh://[::1]:22/r.git",
            "file:///srv/git/r.git",
            "git@github.com:Linaro/test-definitions.git",
            "https://user:pa:ss@example.com/r.git",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ext::sh -c touch% /tmp/pwned",
            "ext::ssh -o ProxyCommand=x host",
            "fd::17",
            "--upload-pack=touch /tmp/pwned",
            "-oProxyCommand=x",
            "ftp://example.com/r.git",
            "HTTPS://example.com/r.git",
            "ssh://-oProxyCommand=x/r.git",
            "ssh://-user@host/r.git",
            "-user@host:r.git",
            "user@-host:r.git",
            "user@host::r",
            "user@host:",
            "host:r.git",
            "/srv/git/r.git",
            "./r.git",
            "file://host/srv/r.git",
            "file:///srv/%2e%2e/r.git",
            "https://",
            "https://exa mple.com/r.git",
            "https://example.com/r.git\nx",
            "https://example.com:80x/r.git",
            "ssh://[::1/r.git",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn names_are_plain_refs() {
        for ok in ["master", "v1.0", "feature/x", "4212946b", "2023.01-rc1"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-b",
            "--upload-pack=x",
            "HEAD~1",
            "a^",
            "a:b",
            "a..b",
            "@",
            "a@{1}",
            "a b",
            "x.lock",
            "/x",
            "x/",
            ".x",
            "a//b",
            "a*",
            "a\\b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} passed");
        }
    }
}
