//! Address strings against a real broker: a `unix:` address with its token,
//! the same address from an environment variable, and clear errors.

use procmesh::{Client, ClientBuilder, ErrorCode};

use crate::support::InProc;

#[test]
fn an_address_string_carries_the_socket_and_token() {
    let b = InProc::start_with(|b| b.token(Some("s3cret".into())));
    let path = &b.path;
    let addr = format!("unix:{}?token=s3cret&codec=json", path.display());
    let c = ClientBuilder::from_address(&addr)
        .unwrap()
        .auto_spawn(false)
        .connect()
        .unwrap();
    c.set("k", &1).unwrap();
    assert_eq!(c.codec(), procmesh::Codec::Json);
    // The wrong token is refused by the broker, as with `token()`.
    let wrong = format!("unix:{}?token=nope", path.display());
    let e = ClientBuilder::from_address(&wrong)
        .unwrap()
        .auto_spawn(false)
        .connect()
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Auth), "{e}");
    // From an environment variable (a name no other test uses).
    std::env::set_var("PROCMESH_IT_ADDRESS_URL", &addr);
    let c2 = Client::from_env("PROCMESH_IT_ADDRESS_URL").unwrap();
    assert_eq!(c2.get::<i32>("k").unwrap(), Some(1));
    let e = Client::from_env("PROCMESH_IT_ADDRESS_UNSET").unwrap_err();
    assert!(
        e.to_string()
            .contains("PROCMESH_IT_ADDRESS_UNSET is not set"),
        "{e}"
    );
}
