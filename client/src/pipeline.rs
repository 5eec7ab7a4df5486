//! Pipelines: [`Pipeline`], [`PipelineResult`] and [`FromPipeline`]; many
//! commands sent in one write per shard, their replies read back in order.
//!
//! Owns the batching of commands: each command is routed like its one-off
//! method (by key, or by channel for `publish`), the commands of one shard are
//! encoded back to back and written at once (`Conn::start_batch`), and each
//! reply is matched to its command by request id, so results come back in the
//! order the commands were added whatever the shards answer first. Commands
//! are not a transaction: each is applied on its own, in order per shard, and
//! an error (a bad value, `ENOTNUMBER`) is that command's result without
//! touching the others'. Shared by both clients: the blocking [`Client`]'s
//! `run` is here, the async client's in `aio`.

use std::time::Duration;

use procmesh_proto::{hash, Acks, Codec, Num, Raw, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::ms;
use crate::conn::Reply;
use crate::error::{ClientError, Result};
use crate::value::encode;
use crate::Client;

/// One queued command, with its values already encoded.
enum Cmd {
    Get(String),
    Set(String, Vec<u8>, Option<u64>),
    Del(String),
    Has(String),
    Add(String, Num, bool),
    Cas(String, Option<Vec<u8>>, Option<Vec<u8>>),
    Publish(String, Vec<u8>),
    /// A command whose value could not be encoded: never sent, its result is the error.
    Invalid(&'static str, String),
}

impl Cmd {
    /// The key (or channel) that routes the command.
    fn route(&self) -> &str {
        match self {
            Cmd::Get(k)
            | Cmd::Set(k, ..)
            | Cmd::Del(k)
            | Cmd::Has(k)
            | Cmd::Add(k, ..)
            | Cmd::Cas(k, ..)
            | Cmd::Publish(k, _) => k,
            Cmd::Invalid(..) => "",
        }
    }

    /// The key this command changes (its near-cache copy is dropped around it).
    fn written_key(&self) -> Option<&str> {
        match self {
            Cmd::Set(k, ..) | Cmd::Del(k) | Cmd::Add(k, ..) | Cmd::Cas(k, ..) => Some(k),
            Cmd::Get(_) | Cmd::Has(_) | Cmd::Publish(..) | Cmd::Invalid(..) => None,
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Cmd::Get(_) => "get",
            Cmd::Set(..) => "set",
            Cmd::Del(_) => "del",
            Cmd::Has(_) => "has",
            Cmd::Add(_, _, false) => "incr",
            Cmd::Add(_, _, true) => "decr",
            Cmd::Cas(..) => "cas",
            Cmd::Publish(..) => "pub",
            Cmd::Invalid(op, _) => op,
        }
    }

    fn request(&self, codec: Codec) -> Option<Request<'_>> {
        Some(match self {
            Cmd::Get(k) => Request::Get { key: k.into() },
            Cmd::Set(k, v, ttl) => Request::Set {
                key: k.into(),
                value: Raw::new(codec, v),
                ttl_ms: *ttl,
            },
            Cmd::Del(k) => Request::Del { key: k.into() },
            Cmd::Has(k) => Request::Has { key: k.into() },
            Cmd::Add(k, by, false) => Request::Incr {
                key: k.into(),
                by: *by,
            },
            Cmd::Add(k, by, true) => Request::Decr {
                key: k.into(),
                by: *by,
            },
            Cmd::Cas(k, p, n) => Request::Cas {
                key: k.into(),
                prev: p.as_deref().map(|b| Raw::new(codec, b)),
                next: n.as_deref().map(|b| Raw::new(codec, b)),
            },
            Cmd::Publish(ch, p) => Request::Pub {
                channel: ch.into(),
                payload: Some(Raw::new(codec, p)),
                acks: Acks::One,
                pid: None,
                seq: None,
            },
            Cmd::Invalid(..) => return None,
        })
    }
}

/// A batch of cache, atomic and publish commands, sent with one write per
/// shard: [`Client::pipeline`] (and `aio::Client::pipeline`).
///
/// Results come back in the order the commands were added, each its own
/// [`PipelineResult`]; read them typed with [`Pipeline::query`] (a tuple, as
/// redis-rs `pipe().query()`), or all with `run`. The pipeline is kept after a
/// run and may be run again.
///
/// ```no_run
/// # let client = procmesh::Client::connect()?;
/// let (n, name): (i64, Option<String>) = client
///     .pipeline()
///     .set("user:1", &"ann")
///     .ignore()
///     .incr("visits", 1)
///     .get("user:1")
///     .query()?;
/// assert_eq!(name.as_deref(), Some("ann"));
/// # let _ = n;
/// # Ok::<(), procmesh::ClientError>(())
/// ```
#[must_use = "a pipeline does nothing until it is run"]
pub struct Pipeline<C = Client> {
    pub(crate) client: C,
    codec: Codec,
    cmds: Vec<Cmd>,
    /// Indexes of commands left out of `query`'s typed results.
    ignored: Vec<bool>,
}

impl<C> Pipeline<C> {
    pub(crate) fn new(client: C, codec: Codec) -> Self {
        Pipeline {
            client,
            codec,
            cmds: Vec::new(),
            ignored: Vec::new(),
        }
    }

    fn push(mut self, c: Cmd) -> Self {
        self.cmds.push(c);
        self.ignored.push(false);
        self
    }

    fn enc<V: Serialize + ?Sized>(&self, v: &V) -> std::result::Result<Vec<u8>, String> {
        encode(self.codec, v).map_err(|e| e.to_string())
    }

    /// Commands queued.
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    /// Whether no command is queued.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Leaves the last command's result out of [`Pipeline::query`] (it is
    /// still in `run`'s list, and its error still fails `query`).
    pub fn ignore(mut self) -> Self {
        if let Some(last) = self.ignored.last_mut() {
            *last = true;
        }
        self
    }

    /// `get key`: result `Option<T>`.
    pub fn get(self, key: &str) -> Self {
        self.push(Cmd::Get(key.to_owned()))
    }

    /// `set key value`: result `()`.
    pub fn set<V: Serialize + ?Sized>(self, key: &str, value: &V) -> Self {
        match self.enc(value) {
            Ok(v) => self.push(Cmd::Set(key.to_owned(), v, None)),
            Err(e) => self.push(Cmd::Invalid("set", e)),
        }
    }

    /// `set key value` expiring after `ttl`: result `()`.
    pub fn set_with_ttl<V: Serialize + ?Sized>(self, key: &str, value: &V, ttl: Duration) -> Self {
        match self.enc(value) {
            Ok(v) => self.push(Cmd::Set(key.to_owned(), v, Some(ms(ttl)))),
            Err(e) => self.push(Cmd::Invalid("set", e)),
        }
    }

    /// `del key`: result `bool` (it existed).
    pub fn del(self, key: &str) -> Self {
        self.push(Cmd::Del(key.to_owned()))
    }

    /// `has key`: result `bool`.
    pub fn has(self, key: &str) -> Self {
        self.push(Cmd::Has(key.to_owned()))
    }

    /// `incr key by`: result `i64` (the new value).
    pub fn incr(self, key: &str, by: i64) -> Self {
        self.push(Cmd::Add(key.to_owned(), Num::Int(by), false))
    }

    /// `decr key by`: result `i64`.
    pub fn decr(self, key: &str, by: i64) -> Self {
        self.push(Cmd::Add(key.to_owned(), Num::Int(by), true))
    }

    /// `incr key by` with a fractional `by`: result `f64`.
    pub fn incr_float(self, key: &str, by: f64) -> Self {
        self.push(Cmd::Add(key.to_owned(), Num::Float(by), false))
    }

    /// Compare-and-swap (see [`Client::cas`]): result `bool`.
    pub fn cas<V: Serialize>(self, key: &str, prev: Option<&V>, next: Option<&V>) -> Self {
        let p = prev.map(|v| self.enc(v)).transpose();
        let n = next.map(|v| self.enc(v)).transpose();
        match (p, n) {
            (Ok(p), Ok(n)) => self.push(Cmd::Cas(key.to_owned(), p, n)),
            (Err(e), _) | (_, Err(e)) => self.push(Cmd::Invalid("cas", e)),
        }
    }

    /// `publish channel payload`: result `u64` (connections it reached).
    pub fn publish<V: Serialize + ?Sized>(self, channel: &str, payload: &V) -> Self {
        match self.enc(payload) {
            Ok(p) => self.push(Cmd::Publish(channel.to_owned(), p)),
            Err(e) => self.push(Cmd::Invalid("pub", e)),
        }
    }

    /// The commands of each shard (of `shards`), by index; commands that cannot
    /// be sent are in no group.
    /// The keys the pipeline writes, in order (read-your-writes: their near-cache
    /// copies are dropped before the pipeline is sent and again once it is answered).
    pub(crate) fn written_keys(&self) -> Vec<&str> {
        self.cmds.iter().filter_map(Cmd::written_key).collect()
    }

    pub(crate) fn groups(&self, shards: usize) -> Vec<(usize, Vec<usize>)> {
        let mut by: Vec<Vec<usize>> = vec![Vec::new(); shards];
        for (i, c) in self.cmds.iter().enumerate() {
            if !matches!(c, Cmd::Invalid(..)) {
                by[hash::shard_index(c.route(), shards)].push(i);
            }
        }
        by.into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }

    /// The requests of commands `idx`.
    pub(crate) fn requests(&self, idx: &[usize]) -> Vec<Request<'_>> {
        idx.iter()
            .filter_map(|&i| self.cmds[i].request(self.codec))
            .collect()
    }

    /// One result per command, from the outcomes of the sent ones (`got[i]`).
    pub(crate) fn results(&self, mut got: Vec<Option<Result<Reply>>>) -> Vec<PipelineResult> {
        self.cmds
            .iter()
            .enumerate()
            .map(|(i, c)| PipelineResult {
                op: c.op(),
                outcome: match c {
                    Cmd::Invalid(_, e) => Err(ClientError::Encode(e.clone())),
                    _ => got[i].take().unwrap_or_else(|| {
                        Err(ClientError::disconnected("the pipeline was not sent"))
                    }),
                },
            })
            .collect()
    }

    /// `results` without the ignored ones, as `T`; the first error fails it.
    pub(crate) fn typed<T: FromPipeline>(&self, results: Vec<PipelineResult>) -> Result<T> {
        let mut kept = Vec::with_capacity(results.len());
        for (r, &ignored) in results.into_iter().zip(&self.ignored) {
            let reply = r.outcome?;
            if !ignored {
                kept.push(PipelineResult {
                    op: r.op,
                    outcome: Ok(reply),
                });
            }
        }
        T::from_results(kept)
    }
}

impl Pipeline<Client> {
    /// Sends the commands (one write per shard) and returns every result in order.
    /// Fails as a whole only when a shard could not be written to; a command the
    /// broker refused carries its error in its own result.
    pub fn run(&self) -> Result<Vec<PipelineResult>> {
        let c = &self.client;
        let written = self.written_keys();
        let near = c.near().filter(|_| !written.is_empty());
        let invalidate = || {
            if let Some(n) = near {
                written.iter().for_each(|k| n.invalidate(k));
            }
        };
        invalidate();
        let r = self.run_sent();
        invalidate();
        r
    }

    fn run_sent(&self) -> Result<Vec<PipelineResult>> {
        let c = &self.client;
        let mut got: Vec<Option<Result<Reply>>> = (0..self.cmds.len()).map(|_| None).collect();
        let mut sent = Vec::new();
        let groups = self.groups(c.shard_count());
        for (s, idx) in &groups {
            let reqs = self.requests(idx);
            let tickets = c.conn(*s).start_batch(&reqs, c.timeout())?;
            sent.push((idx, tickets));
        }
        for (idx, tickets) in sent {
            for (&i, tk) in idx.iter().zip(tickets) {
                got[i] = Some(tk.wait());
            }
        }
        Ok(self.results(got))
    }

    /// Runs the pipeline and converts the results not [ignored](Pipeline::ignore)
    /// into `T` (a tuple, one element per command, or `Vec<PipelineResult>`);
    /// the first failed command's error fails the whole query.
    pub fn query<T: FromPipeline>(&self) -> Result<T> {
        let r = self.run()?;
        self.typed(r)
    }
}

/// The result of one pipelined command.
#[derive(Debug)]
pub struct PipelineResult {
    op: &'static str,
    outcome: Result<Reply>,
}

impl PipelineResult {
    /// The command (`"get"`, `"incr"`, …).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// Whether the command succeeded.
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The command's error, if it failed.
    pub fn error(&self) -> Option<&ClientError> {
        self.outcome.as_ref().err()
    }

    /// The command's result as `T`: `Option<V>` for `get`, `()` for `set`,
    /// `bool` for `del`/`has`/`cas`, `i64` (or `f64`) for `incr`/`decr`, `u64`
    /// for `publish`; the command's error if it failed.
    pub fn value<T: DeserializeOwned>(self) -> Result<T> {
        let reply = self.outcome?;
        if self.op == "set" {
            // `set` answers with no value of interest (the one-off method returns `()`).
            return crate::value::decode(crate::value::null(reply.codec()));
        }
        if self.op == "pub" {
            // A deduplicated publish has no count: it reached nobody new.
            if !matches!(reply.raw_value(), Some(r) if !r.is_nil()) {
                let zero = encode(reply.codec(), &0u64)?;
                return crate::value::decode(Raw::new(reply.codec(), &zero));
            }
        }
        reply.value()
    }
}

/// Types a pipeline's results convert into (see [`Pipeline::query`]): tuples of
/// up to eight elements, each decoded like [`PipelineResult::value`], and
/// `Vec<PipelineResult>` for every result as is.
pub trait FromPipeline: Sized {
    /// Converts the results (errors already taken out).
    fn from_results(results: Vec<PipelineResult>) -> Result<Self>;
}

impl FromPipeline for Vec<PipelineResult> {
    fn from_results(results: Vec<PipelineResult>) -> Result<Self> {
        Ok(results)
    }
}

impl FromPipeline for () {
    fn from_results(_: Vec<PipelineResult>) -> Result<Self> {
        Ok(())
    }
}

macro_rules! tuple_from_pipeline {
    ($n:literal: $($t:ident),+) => {
        impl<$($t: DeserializeOwned),+> FromPipeline for ($($t,)+) {
            fn from_results(results: Vec<PipelineResult>) -> Result<Self> {
                if results.len() != $n {
                    return Err(ClientError::Decode(format!(
                        "a pipeline of {} results read as a tuple of {}",
                        results.len(),
                        $n
                    )));
                }
                let mut it = results.into_iter();
                Ok(($(it.next().expect("invariant: length checked").value::<$t>()?,)+))
            }
        }
    };
}

tuple_from_pipeline!(1: A);
tuple_from_pipeline!(2: A, B);
tuple_from_pipeline!(3: A, B, C);
tuple_from_pipeline!(4: A, B, C, D);
tuple_from_pipeline!(5: A, B, C, D, E);
tuple_from_pipeline!(6: A, B, C, D, E, F);
tuple_from_pipeline!(7: A, B, C, D, E, F, G);
tuple_from_pipeline!(8: A, B, C, D, E, F, G, H);

impl Client {
    /// A new, empty [`Pipeline`] on this client.
    pub fn pipeline(&self) -> Pipeline<Client> {
        Pipeline::new(self.clone(), self.codec())
    }
}
