//! [`ClientBuilder`]: every option of a client, with the Node.js package's
//! defaults, and how they resolve to socket addresses; and the constructors
//! of [`Client`] (`connect`, `sharded`, `builder`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procmesh_proto::{addr, Codec};

use crate::conn::{Settings, SpawnSettings};
use crate::dispatch::EventCallback;
use crate::error::{ClientError, Result};
use crate::event::Event;
use crate::Client;

/// Options for a [`Client`]. Start with [`Client::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use procmesh::{Client, Codec};
///
/// let client = Client::builder()
///     .name("jobs")
///     .codec(Codec::Json)
///     .call_timeout(Duration::from_secs(5))
///     .on_event(|e| eprintln!("procmesh: {e:?}"))
///     .connect()?;
/// # Ok::<(), procmesh::ClientError>(())
/// ```
#[must_use = "a builder does nothing until `connect()`"]
pub struct ClientBuilder {
    name: String,
    address: Option<PathBuf>,
    addresses: Option<Vec<PathBuf>>,
    shards: Option<usize>,
    codec: Codec,
    /// No codec was set: negotiate it per connection.
    negotiate: bool,
    auto_spawn: bool,
    reconnect: bool,
    call_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Option<Duration>,
    token: Option<String>,
    idle_timeout: Duration,
    max_keys: Option<u64>,
    default_ttl: Option<Duration>,
    max_bytes: Option<u64>,
    broker_options: serde_json::Map<String, serde_json::Value>,
    broker_bin: Option<PathBuf>,
    handler_threads: usize,
    callbacks: Vec<EventCallback>,
    near_cache: Option<(usize, usize)>,
    idempotent: bool,
    producer_id: Option<String>,
    sequences: std::collections::HashMap<String, u64>,
    publish_retries: u32,
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::RedisTarget>,
}

impl Client {
    /// Connects to the mesh `"default"` with default options, starting a
    /// broker if none is running.
    pub fn connect() -> Result<Client> {
        Client::builder().connect()
    }

    /// Connects to the default mesh sharded over `n` brokers.
    pub fn sharded(n: usize) -> Result<Client> {
        Client::builder().shards(n).connect()
    }

    /// A builder for every option.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            name: addr::DEFAULT_NAME.to_owned(),
            address: None,
            addresses: None,
            shards: None,
            codec: Codec::MsgPack,
            negotiate: true,
            auto_spawn: true,
            reconnect: true,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(5)),
            token: None,
            idle_timeout: Duration::from_secs(60),
            max_keys: None,
            default_ttl: None,
            max_bytes: None,
            broker_options: serde_json::Map::new(),
            broker_bin: None,
            handler_threads: std::thread::available_parallelism()
                .map_or(4, |n| n.get().clamp(2, 16)),
            callbacks: Vec::new(),
            near_cache: None,
            idempotent: false,
            producer_id: None,
            sequences: std::collections::HashMap::new(),
            publish_retries: 3,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl ClientBuilder {
    /// The mesh name (default `"default"`): the address is
    /// `<tmpdir>/procmesh-<name>.sock`, or `PROCMESH_SOCKET` when set.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// An explicit socket address for a plain (one-shard) client.
    pub fn address(mut self, path: impl Into<PathBuf>) -> Self {
        self.address = Some(path.into());
        self
    }

    /// Explicit socket addresses, one per shard, in shard order. Every process
    /// of the mesh must list the same addresses in the same order.
    pub fn addresses<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.addresses = Some(paths.into_iter().map(Into::into).collect());
        self
    }

    /// Shard the mesh over `n` brokers named `<name>#0` … `<name>#n-1`.
    /// Cannot be combined with `PROCMESH_SOCKET`.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Fixes the wire codec. Without it the client negotiates: `hello` in JSON, then
    /// MessagePack when the broker lists it in `welcome` (ours), JSON when it lists nothing
    /// (a Node.js broker), msgpackr records when the broker closes on JSON (a Node.js broker
    /// with `codec: 'msgpack'`). Values are encoded in MessagePack either way (transcoded on
    /// the wire when needed). JSON and MessagePack clients share one mesh.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self.negotiate = false;
        self
    }

    /// Start a broker when none listens (default on).
    pub fn auto_spawn(mut self, on: bool) -> Self {
        self.auto_spawn = on;
        self
    }

    /// Reconnect after a lost connection (default on).
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// How long a request waits for its reply before `ETIMEOUT` (default 30 s).
    /// Also the default timeout of [`Client::call`].
    pub fn call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }

    /// How long to wait for a (spawned) broker to accept and answer `hello`
    /// (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Ping the broker after this much silence and drop the connection when
    /// nothing arrives for twice as long (default 5 s; `None` turns it off).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.ping_interval = every;
        self
    }

    /// The broker's token, sent in `hello` (and given to a spawned broker).
    /// Without it the client uses `PROCMESH_TOKEN` when that is set and not
    /// empty, as the `procmesh` CLI does.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A spawned broker exits after this long without connections (default
    /// 60 s; zero keeps it running).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// A spawned broker's entry limit (`--max-keys`; LRU eviction beyond it).
    pub fn max_keys(mut self, n: u64) -> Self {
        self.max_keys = Some(n);
        self
    }

    /// A spawned broker's default expiry for entries set without a ttl.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// A spawned broker's cache size limit in bytes (replaces the entry limit).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// Any other broker option for a spawned broker, by its
    /// `PROCMESH_BROKER_OPTS` name (e.g. `"heartbeatInterval"`).
    pub fn broker_option(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.broker_options.insert(key.into(), value.into());
        self
    }

    /// The broker binary to spawn, instead of searching for it.
    pub fn broker_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.broker_bin = Some(path.into());
        self
    }

    /// Threads running RPC handlers (default: the number of cores, 2 to 16).
    pub fn handler_threads(mut self, n: usize) -> Self {
        self.handler_threads = n.max(1);
        self
    }

    /// Keeps a near cache of up to `max_entries` keys this client read, served
    /// locally until the broker says they changed (default: off). See the crate
    /// docs, "Near cache", for what it guarantees.
    pub fn near_cache(mut self, max_entries: usize) -> Self {
        let bytes = self.near_cache.map_or(0, |(_, b)| b);
        self.near_cache = Some((max_entries.max(1), bytes));
        self
    }

    /// Also bounds the near cache by the bytes of the values it holds (default: no
    /// byte bound; the entry bound of [`ClientBuilder::near_cache`] applies, 10 000
    /// when that was not called).
    pub fn near_cache_bytes(mut self, max_bytes: usize) -> Self {
        let entries = self.near_cache.map_or(10_000, |(e, _)| e);
        self.near_cache = Some((entries, max_bytes));
        self
    }

    /// Calls `f` for every connection event, on the client's dispatch thread
    /// (including the first `Connected` of each shard).
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.callbacks.push(Arc::new(f));
        self
    }

    /// Publish idempotently by default (default off; [`PublishOptions::idempotent`]
    /// decides per call): every publish carries this client's producer id and the
    /// channel's next sequence number, so a retry is delivered at most once. An
    /// unacknowledged idempotent publish is retried after a reconnect (see
    /// [`ClientBuilder::publish_retries`]). See "Delivery guarantees" in the crate docs.
    ///
    /// [`PublishOptions::idempotent`]: crate::PublishOptions::idempotent
    pub fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    /// A stable producer id, presented in `hello` (and again after every reconnect),
    /// so that the broker deduplicates this producer's publishes across processes:
    /// a restarted producer with the same id and its [`ClientBuilder::sequences`]
    /// continues where the last one stopped. Without it the broker mints an id at the
    /// first connect, which the client keeps for its life. Turns
    /// [`ClientBuilder::idempotent`] on.
    pub fn producer_id(mut self, id: impl Into<String>) -> Self {
        self.producer_id = Some(id.into());
        self.idempotent = true;
        self
    }

    /// The last sequence number already used per channel, so that a restarted
    /// producer (same [`ClientBuilder::producer_id`]) continues above it: the next
    /// idempotent publish on `channel` carries `n + 1`.
    pub fn sequences<I, C>(mut self, seqs: I) -> Self
    where
        I: IntoIterator<Item = (C, u64)>,
        C: Into<String>,
    {
        self.sequences
            .extend(seqs.into_iter().map(|(c, n)| (c.into(), n)));
        self
    }

    /// How many times an idempotent publish cut off by a disconnect (`EDISCONNECTED`
    /// before its answer) is sent again, each after the reconnect, within its call
    /// timeout (default 3; 0 never retries).
    pub fn publish_retries(mut self, n: u32) -> Self {
        self.publish_retries = n;
        self
    }

    /// Use the Redis server at `url` (`redis://host:6379/`, `rediss://…`,
    /// `redis+unix:///path/redis.sock`) instead of a broker: the same API, the
    /// mesh's keys under `{name}:` (see the crate docs, "Past one machine:
    /// Redis", for the differences). Socket, shard and spawn options are ignored.
    ///
    /// ```no_run
    /// use procmesh::Client;
    ///
    /// let client = Client::builder()
    ///     .name("jobs")
    ///     .redis("redis://127.0.0.1:6379/")
    ///     .connect()?;
    /// client.set("greeting", &"hello")?;
    /// # Ok::<(), procmesh::ClientError>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(crate::redis::RedisTarget {
            urls: vec![url.into()],
            cluster: false,
        });
        self
    }

    /// Use the Redis Cluster reached through these seed nodes (`redis://…`
    /// URLs) instead of a broker; see [`ClientBuilder::redis`].
    #[cfg(feature = "redis")]
    pub fn redis_cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis = Some(crate::redis::RedisTarget {
            urls: urls.into_iter().map(Into::into).collect(),
            cluster: true,
        });
        self
    }

    /// The `(socket path, mesh name)` of each shard.
    pub(crate) fn targets(&self) -> Result<Vec<(PathBuf, String)>> {
        if let Some(list) = &self.addresses {
            if list.is_empty() {
                return Err(ClientError::Config("an empty address list".into()));
            }
            if list.len() == 1 {
                return Ok(vec![(list[0].clone(), self.name.clone())]);
            }
            return Ok(list
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), addr::shard_name(&self.name, i)))
                .collect());
        }
        if let Some(n) = self.shards {
            if n == 0 {
                return Err(ClientError::Config("a shard count of 0".into()));
            }
            if self.address.is_some() {
                return Err(ClientError::Config(
                    "a shard count together with one address; use `addresses` for explicit shards"
                        .into(),
                ));
            }
            let paths = addr::AddrEnv::from_lookup(std::env::var_os)
                .shard_paths(&self.name, n)
                .map_err(ClientError::Config)?;
            return Ok(paths
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, addr::member_name(&self.name, i, n)))
                .collect());
        }
        let path = self.address.clone().unwrap_or_else(|| {
            addr::AddrEnv::from_lookup(std::env::var_os).socket_path(&self.name)
        });
        Ok(vec![(path, self.name.clone())])
    }

    /// The options forwarded to a spawned broker in `PROCMESH_BROKER_OPTS`.
    fn spawn_opts(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut opts = self.broker_options.clone();
        let mut cache = match opts.remove("cache") {
            Some(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        if let Some(t) = self.default_ttl {
            cache.insert("ttl".into(), crate::client::ms(t).into());
        }
        if let Some(b) = self.max_bytes {
            cache.insert("maxSize".into(), b.into());
        }
        if !cache.is_empty() {
            opts.insert("cache".into(), cache.into());
        }
        opts
    }

    /// Connects to every shard (spawning brokers when allowed), fails if any
    /// shard cannot be reached.
    pub fn connect(self) -> Result<Client> {
        #[cfg(feature = "redis")]
        if let Some(target) = self.redis.clone() {
            let settings = Settings {
                codec: self.codec,
                negotiate: false,
                token: self.token,
                call_timeout: self.call_timeout,
                connect_timeout: self.connect_timeout,
                ping_interval: None,
                reconnect: self.reconnect,
                spawn: None,
                handler_threads: self.handler_threads,
                // Kept so `near_cache_stats` reports it as off (see `open_redis`).
                near_cache: self.near_cache,
                // One Redis server, no broker welcome to check against.
                shards: 1,
                producer: crate::producer::Producer::new(
                    self.idempotent,
                    self.producer_id,
                    self.publish_retries,
                    self.sequences,
                ),
            };
            return Client::open_redis(settings, self.callbacks, target, self.name);
        }
        let targets = self.targets()?;
        let spawn = self.auto_spawn.then(|| SpawnSettings {
            program: self.broker_bin.clone(),
            idle_timeout: self.idle_timeout,
            max_keys: self.max_keys,
            opts: self.spawn_opts(),
        });
        let settings = Settings {
            codec: self.codec,
            negotiate: self.negotiate,
            token: self.token.or_else(|| env_token(|k| std::env::var(k).ok())),
            call_timeout: self.call_timeout,
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
            reconnect: self.reconnect,
            spawn,
            handler_threads: self.handler_threads,
            near_cache: self.near_cache,
            shards: targets.len(),
            producer: crate::producer::Producer::new(
                self.idempotent,
                self.producer_id,
                self.publish_retries,
                self.sequences,
            ),
        };
        Client::open(settings, self.callbacks, targets)
    }
}

/// `PROCMESH_TOKEN` (read through `var`), when set and not empty.
fn env_token(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    var("PROCMESH_TOKEN").filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_names_and_shards() {
        let t = ClientBuilder::default()
            .address("/x/a.sock")
            .targets()
            .unwrap();
        assert_eq!(t, vec![(PathBuf::from("/x/a.sock"), "default".to_owned())]);
        let t = ClientBuilder::default()
            .name("m")
            .addresses(["/a", "/b"])
            .targets()
            .unwrap();
        assert_eq!(t[1], (PathBuf::from("/b"), "m#1".to_owned()));
        assert!(ClientBuilder::default().shards(0).targets().is_err());
        assert!(ClientBuilder::default()
            .shards(2)
            .address("/a")
            .targets()
            .is_err());
        if std::env::var_os("PROCMESH_SOCKET").is_none() {
            let t = ClientBuilder::default()
                .name("m")
                .shards(3)
                .targets()
                .unwrap();
            assert_eq!(t.len(), 3);
            assert!(
                t[2].0.to_string_lossy().ends_with("/procmesh-m#2.sock"),
                "{t:?}"
            );
            assert_eq!(t[2].1, "m#2");
        }
    }

    #[test]
    fn procmesh_token_is_the_default_token() {
        let env = |k: &str| (k == "PROCMESH_TOKEN").then(|| "from-env".to_owned());
        assert_eq!(env_token(env).as_deref(), Some("from-env"));
        assert_eq!(env_token(|_| Some(String::new())), None, "empty is unset");
        assert_eq!(env_token(|_| None), None);
    }

    #[test]
    fn cache_bounds_go_to_broker_opts() {
        let b = ClientBuilder::default()
            .default_ttl(Duration::from_secs(2))
            .max_bytes(1000)
            .broker_option("heartbeatInterval", 100);
        let o = serde_json::Value::Object(b.spawn_opts());
        assert_eq!(
            o,
            serde_json::json!({"heartbeatInterval": 100, "cache": {"ttl": 2000, "maxSize": 1000}})
        );
    }
}
