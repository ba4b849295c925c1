//! Plans as the agent reads them from the controller: a signed plan's envelope and its
//! signature check (PEM chain, hex signature), then the plan itself, whose values are checked
//! as they decode. A plan read writes back into the same plan.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qb_agent_proto::plan::{Plan, SignedPlan};
use qb_pki::Pin;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = serde_json::from_slice::<SignedPlan>(data) {
        let pins = [Pin::of_spki(b"no CA signs what the fuzzer makes")];
        let verified = qb_pki::verify_plan_signature(
            signed.plan.as_bytes(),
            &signed.signature,
            &signed.signer_pem,
            &pins,
            time::OffsetDateTime::now_utc(),
        );
        assert!(verified.is_err(), "a plan signed by no one was accepted");
    }
    if let Ok(plan) = serde_json::from_slice::<Plan>(data) {
        let text = serde_json::to_vec(&plan).expect("a plan read serializes");
        let again: Plan = serde_json::from_slice(&text).expect("a plan written reads back");
        assert_eq!(again, plan, "a plan changed on its way through JSON");
    }
});
