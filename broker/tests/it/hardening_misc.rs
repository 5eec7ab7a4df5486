//! Issue 12 hardening over real sockets: forged fencing tokens, many lock waiters
//! timing out, non-finite numbers, invalid UTF-8 frames, large values.

use serde_json::json;

use crate::support::TestBroker;

#[test]
fn a_forged_fencing_token_is_fenced_and_does_not_raise_the_mark() {
    let b = TestBroker::start(&[]);
    let mut c = b.client();
    let forged = u64::MAX;
    for op in [
        json!({"t":"fset","key":"never","token":forged,"k":"v","value":1}),
        json!({"t":"fcas","key":"never","token":forged,"k":"v","prev":null,"next":1}),
        json!({"t":"fdel","key":"never","token":forged,"k":"v"}),
    ] {
        assert_eq!(c.err_code(op.clone()), "EFENCED", "{op}");
    }
    assert_eq!(c.ok(json!({"t":"get","key":"v"})), json!(null));
    // A real holder is not fenced out by the forged token.
    let r = c.ok(json!({"t":"lock","key":"never","ttl":60_000}));
    let tok = r["token"].as_u64().expect("granted");
    assert_eq!(
        c.err_code(json!({"t":"fset","key":"never","token":tok + 1,"k":"v","value":2})),
        "EFENCED",
        "a token above the counter was accepted"
    );
    assert_eq!(
        c.ok(json!({"t":"fset","key":"never","token":tok,"k":"v","value":3})),
        json!(true)
    );
    assert_eq!(c.ok(json!({"t":"get","key":"v"})), json!(3));
}
