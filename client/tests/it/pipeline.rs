//! Pipelines on the blocking client: typed results in command order, one
//! command's error kept to that command, commands spread over shards.

use procmesh::{Client, ErrorCode, PipelineResult};

use crate::support::{InProc, CODECS};

/// A value whose serialization fails.
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value cannot be encoded"))
    }
}

#[test]
fn pipeline_returns_typed_results_in_order() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        let (n, name, had, gone, swapped, again): (i64, Option<String>, bool, bool, bool, i64) = c
            .pipeline()
            .set("user", &"ann")
            .ignore()
            .incr("visits", 5)
            .get("user")
            .has("user")
            .del("user")
            .cas("visits", Some(&5), Some(&7))
            .incr("visits", 1)
            .query()
            .unwrap();
        assert_eq!(
            (n, name.as_deref(), had, gone, swapped, again),
            (5, Some("ann"), true, true, true, 8),
            "{codec:?}"
        );
        // The commands ran in order: the deleted key is gone afterwards.
        assert_eq!(c.get::<String>("user").unwrap(), None);
        // A pipeline may be run again.
        let p = c.pipeline().incr("runs", 1);
        assert_eq!(p.query::<(i64,)>().unwrap(), (1,));
        assert_eq!(p.query::<(i64,)>().unwrap(), (2,));
    }
}

#[test]
fn an_error_inside_a_pipeline_is_that_commands_result_only() {
    for codec in CODECS {
        let b = InProc::start();
        let c = b.client(codec);
        let results: Vec<PipelineResult> = c
            .pipeline()
            .set("s", &"text")
            .incr("s", 1) // ENOTNUMBER
            .incr("n", 2)
            .set("bad", &Unencodable) // never sent: its result is the encode error
            .get("s")
            .run()
            .unwrap();
        assert_eq!(results.len(), 5);
        let ops: Vec<&str> = results.iter().map(|r| r.op()).collect();
        assert_eq!(ops, ["set", "incr", "incr", "set", "get"]);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].error().and_then(|e| e.code()),
            Some(ErrorCode::NotNumber),
            "{codec:?}"
        );
        let mut it = results.into_iter();
        it.next();
        it.next();
        assert_eq!(it.next().unwrap().value::<i64>().unwrap(), 2);
        let bad = it.next().unwrap();
        assert!(
            matches!(bad.error(), Some(procmesh::ClientError::Encode(m)) if m.contains("cannot be encoded")),
            "{bad:?}"
        );
        assert_eq!(
            it.next()
                .unwrap()
                .value::<Option<String>>()
                .unwrap()
                .as_deref(),
            Some("text"),
            "the commands after the error ran"
        );
        // `query` fails with the first error, not with a later command's value.
        let e = c
            .pipeline()
            .incr("s", 1)
            .get("s")
            .query::<(i64, Option<String>)>()
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotNumber));
    }
}

#[test]
fn a_pipeline_over_shards_keeps_command_order() {
    let brokers: Vec<InProc> = (0..3).map(|_| InProc::start()).collect();
    let c = Client::builder()
        .addresses(brokers.iter().map(|b| b.path.clone()))
        .auto_spawn(false)
        .connect()
        .unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let mut p = c.pipeline();
    for (i, k) in keys.iter().enumerate() {
        p = p.set(k, &i).ignore().incr(k, 1000);
    }
    let shards: std::collections::HashSet<_> = keys.iter().map(|k| c.shard_of(k)).collect();
    assert_eq!(shards.len(), 3, "the keys span every shard");
    let r: Vec<PipelineResult> = p.query().unwrap();
    let got: Vec<i64> = r.into_iter().map(|r| r.value().unwrap()).collect();
    let want: Vec<i64> = (0..40).map(|i| i + 1000).collect();
    assert_eq!(got, want);
    // Each value landed on its key's shard.
    for (i, k) in keys.iter().enumerate() {
        let own = procmesh::Client::builder()
            .address(&brokers[c.shard_of(k).0].path)
            .auto_spawn(false)
            .connect()
            .unwrap();
        assert_eq!(own.get::<i64>(k).unwrap(), Some(i as i64 + 1000));
    }
}
