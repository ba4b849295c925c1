//! Bundle manifests as the controller reads them from an uploaded bundle: decoded and checked,
//! never a panic; a manifest that passes writes back into one that reads and passes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qb_api::BundleManifest;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = serde_json::from_slice::<BundleManifest>(data) else {
        return;
    };
    if manifest.validate().is_ok() {
        let text = serde_json::to_vec(&manifest).expect("a manifest read serializes");
        let again: BundleManifest =
            serde_json::from_slice(&text).expect("a manifest written reads back");
        assert!(
            again.validate().is_ok(),
            "a valid manifest is no longer valid"
        );
        assert_eq!(
            serde_json::to_vec(&again).expect("serializes"),
            text,
            "a manifest changed on its way through JSON"
        );
    }
});
