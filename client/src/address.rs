//! Address strings: one string (say, from an environment variable) that names
//! a mesh with its shards, token and codec, for twelve-factor configuration.
//!
//! Owns the grammar and its errors; builds a [`ClientBuilder`] and knows
//! nothing else about connecting. The forms:
//!
//! ```text
//! procmesh://NAME?shards=N&token=T&codec=json|msgpack   a named mesh (NAME may be empty: "default")
//! unix:/path/a.sock[,/path/b.sock…][?token=T&codec=…]  explicit sockets, one per shard
//! redis://…                                             the Redis backend (feature `redis`)
//! ```
//!
//! Values in the query are percent-decoded (`%2F`, `%26`, …), so a token may
//! hold any byte. An unknown option, a repeated one, a bad number or an
//! unknown scheme is an error that names it; nothing is silently ignored.

use std::path::PathBuf;

use crate::builder::ClientBuilder;
use crate::error::{ClientError, Result};
use crate::{Client, Codec};

/// The options an address may carry, besides where the mesh is.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    shards: Option<usize>,
    token: Option<String>,
    codec: Option<Codec>,
}

/// Where an address points.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Mesh(String),
    Sockets(Vec<PathBuf>),
    /// A Redis URL, handed to `ClientBuilder::redis` as is.
    #[cfg(feature = "redis")]
    Redis(String),
}

fn bad(addr: &str, why: impl std::fmt::Display) -> ClientError {
    ClientError::Config(format!(
        "invalid procmesh address `{}`: {why}",
        redact(addr)
    ))
}

/// `addr` with any token value hidden, for error messages.
fn redact(addr: &str) -> String {
    let Some((head, query)) = addr.split_once('?') else {
        return addr.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("token", _)) => "token=***".to_owned(),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}?{}", parts.join("&"))
}

/// Percent-decodes `s` (`+` stays a plus).
fn decode(addr: &str, s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(addr, "a `%` not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(addr, "a percent-encoded value is not UTF-8"))
}

fn parse_query(addr: &str, query: Option<&str>) -> Result<Options> {
    let mut o = Options::default();
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(o);
    };
    for kv in q.split('&') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(addr, format!("option `{kv}` has no `=value`")))?;
        let v = decode(addr, v)?;
        let dup = || bad(addr, format!("option `{k}` given twice"));
        match k {
            "shards" => {
                let n: usize =
                    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(addr, format!("shards=`{v}` is not a positive number"))
                    })?;
                if o.shards.replace(n).is_some() {
                    return Err(dup());
                }
            }
            "token" => {
                if o.token.replace(v).is_some() {
                    return Err(dup());
                }
            }
            "codec" => {
                let c = match v.as_str() {
                    "json" => Codec::Json,
                    "msgpack" => Codec::MsgPack,
                    other => {
                        return Err(bad(addr, format!("codec=`{other}` (known: json, msgpack)")))
                    }
                };
                if o.codec.replace(c).is_some() {
                    return Err(dup());
                }
            }
            other => {
                return Err(bad(
                    addr,
                    format!("unknown option `{other}` (known: shards, token, codec)"),
                ))
            }
        }
    }
    Ok(o)
}

/// Parses an address string into where it points and its options.
fn parse(addr: &str) -> Result<(Target, Options)> {
    let a = addr.trim();
    if let Some(rest) = a.strip_prefix("procmesh://") {
        let (name, query) = match rest.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (rest, None),
        };
        let name = decode(addr, name.trim_end_matches('/'))?;
        if name.contains('/') {
            return Err(bad(
                addr,
                "a mesh name cannot contain `/` (for a socket path use `unix:/path`)",
            ));
        }
        let name = if name.is_empty() {
            procmesh_proto::addr::DEFAULT_NAME.to_owned()
        } else {
            name
        };
        return Ok((Target::Mesh(name), parse_query(addr, query)?));
    }
    if let Some(rest) = a.strip_prefix("unix:") {
        let (paths, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let paths: Vec<PathBuf> = paths
            .trim_start_matches("//")
            .split(',')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if paths.is_empty() {
            return Err(bad(addr, "no socket path after `unix:`"));
        }
        let o = parse_query(addr, query)?;
        if o.shards.is_some_and(|n| n != paths.len()) {
            return Err(bad(
                addr,
                "shards= differs from the number of socket paths (list one path per shard)",
            ));
        }
        return Ok((Target::Sockets(paths), o));
    }
    if a.starts_with("redis://") || a.starts_with("rediss://") {
        // Redis backend arm: the whole string goes to `ClientBuilder::redis`.
        #[cfg(feature = "redis")]
        return Ok((Target::Redis(a.to_owned()), Options::default()));
        #[cfg(not(feature = "redis"))]
        return Err(bad(addr, "procmesh was built without the redis feature"));
    }
    let scheme = a.split_once(':').map_or(a, |(s, _)| s);
    Err(bad(
        addr,
        format!("unknown scheme `{scheme}` (known: procmesh://NAME, unix:/path)"),
    ))
}

impl ClientBuilder {
    /// A builder from an address string (see the forms below), with every other
    /// option at its default; further builder calls may still change them.
    ///
    /// - `procmesh://NAME?shards=N&token=T&codec=json|msgpack`: the mesh `NAME`
    ///   (empty: `default`), optionally sharded over `N` brokers;
    /// - `unix:/path/a.sock[,/path/b.sock…][?token=T&codec=…]`: explicit socket
    ///   paths, one per shard in shard order;
    /// - `redis://…` / `rediss://…`: the Redis backend (feature `redis`; an error
    ///   without it), the URL as `ClientBuilder::redis` takes it.
    ///
    /// Query values are percent-decoded. An unknown option or scheme, a
    /// repeated option or a bad value fails with [`ClientError::Config`]
    /// naming it (a token never appears in the message).
    ///
    /// ```
    /// use procmesh::ClientBuilder;
    /// let b = ClientBuilder::from_address("procmesh://jobs?shards=4&token=s3cret")?;
    /// # drop(b);
    /// assert!(ClientBuilder::from_address("procmesh://jobs?shard=4").is_err());
    /// # Ok::<(), procmesh::ClientError>(())
    /// ```
    pub fn from_address(addr: &str) -> Result<ClientBuilder> {
        let (target, o) = parse(addr)?;
        let mut b = ClientBuilder::default();
        match target {
            Target::Mesh(name) => {
                b = b.name(name);
                if let Some(n) = o.shards {
                    b = b.shards(n);
                }
            }
            Target::Sockets(paths) => {
                b = b.addresses(paths);
            }
            #[cfg(feature = "redis")]
            Target::Redis(url) => {
                b = b.redis(url);
            }
        }
        if let Some(t) = o.token {
            b = b.token(t);
        }
        if let Some(c) = o.codec {
            b = b.codec(c);
        }
        Ok(b)
    }

    /// [`ClientBuilder::from_address`] with the address in the environment
    /// variable `var`; an error names the variable when it is unset or empty.
    pub fn from_env(var: &str) -> Result<ClientBuilder> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => ClientBuilder::from_address(&v),
            Ok(_) => Err(ClientError::Config(format!(
                "environment variable {var} is empty (expected a procmesh address such as procmesh://NAME)"
            ))),
            Err(std::env::VarError::NotPresent) => Err(ClientError::Config(format!(
                "environment variable {var} is not set (expected a procmesh address such as procmesh://NAME)"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(ClientError::Config(format!(
                "environment variable {var} is not UTF-8"
            ))),
        }
    }
}

impl Client {
    /// Connects to the address in `s` (see [`ClientBuilder::from_address`]).
    pub fn from_address(s: &str) -> Result<Client> {
        ClientBuilder::from_address(s)?.connect()
    }

    /// Connects to the address in the environment variable `var`, e.g.
    /// `PROCMESH_URL=procmesh://jobs?shards=4` (see [`ClientBuilder::from_env`]).
    pub fn from_env(var: &str) -> Result<Client> {
        ClientBuilder::from_env(var)?.connect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(a: &str) -> String {
        parse(a).unwrap_err().to_string()
    }

    #[test]
    fn mesh_addresses_carry_name_shards_token_and_codec() {
        let (t, o) = parse("procmesh://jobs?shards=4&token=a%26b%3Dc&codec=json").unwrap();
        assert_eq!(t, Target::Mesh("jobs".into()));
        assert_eq!(
            o,
            Options {
                shards: Some(4),
                token: Some("a&b=c".into()),
                codec: Some(Codec::Json),
            }
        );
        assert_eq!(
            parse("procmesh://").unwrap(),
            (Target::Mesh("default".into()), Options::default())
        );
        assert_eq!(parse("procmesh://x/").unwrap().0, Target::Mesh("x".into()));
    }

    #[test]
    fn unix_addresses_list_one_socket_per_shard() {
        let (t, o) = parse("unix:/tmp/a.sock,/tmp/b.sock?token=t").unwrap();
        assert_eq!(
            t,
            Target::Sockets(vec!["/tmp/a.sock".into(), "/tmp/b.sock".into()])
        );
        assert_eq!(o.token.as_deref(), Some("t"));
        assert_eq!(
            parse("unix:///run/m.sock").unwrap().0,
            Target::Sockets(vec!["/run/m.sock".into()])
        );
    }

    #[test]
    fn bad_addresses_are_clear_errors_and_hide_the_token() {
        assert!(err("procmesh://m?shard=2").contains("unknown option `shard`"));
        assert!(err("procmesh://m?shards=0").contains("not a positive number"));
        assert!(err("procmesh://m?shards=x").contains("shards=`x`"));
        assert!(err("procmesh://m?token=a&token=b").contains("given twice"));
        assert!(err("procmesh://m?codec=xml").contains("known: json, msgpack"));
        assert!(err("procmesh://m?token").contains("no `=value`"));
        assert!(err("procmesh://m?token=%zz").contains("two hex digits"));
        assert!(err("procmesh://a/b").contains("cannot contain `/`"));
        assert!(err("unix:").contains("no socket path"));
        assert!(err("unix:/a,/b?shards=3").contains("number of socket paths"));
        #[cfg(not(feature = "redis"))]
        assert!(err("redis://localhost:6379").contains("without the redis feature"));
        #[cfg(feature = "redis")]
        assert_eq!(
            parse("redis://localhost:6379/").unwrap().0,
            Target::Redis("redis://localhost:6379/".into())
        );
        assert!(err("http://x").contains("unknown scheme `http`"));
        let e = err("procmesh://m?token=s3cret&bogus=1");
        assert!(!e.contains("s3cret") && e.contains("token=***"), "{e}");
    }
}
