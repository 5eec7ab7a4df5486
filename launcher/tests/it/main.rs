//! Integration tests: the real `procmesh-launch` binary starting real `procmesh`
//! brokers on real sockets in a per-test temp dir (`TMPDIR`), no mocks.

mod mesh;
mod restart;
mod support;
