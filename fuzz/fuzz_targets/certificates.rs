//! Certificates and CSRs as the controller reads them from agents: a presented certificate's
//! identity, replica mark and key pin; a CSR signed for a node. Any input gives an answer or an
//! error, never a panic, and a CSR the CA signs yields a certificate that reads back as the node.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use qb_api::{NodeId, TenantId};
use qb_pki::{CertificateAuthority, NodeIdentity};

static CA: LazyLock<CertificateAuthority> = LazyLock::new(|| {
    CertificateAuthority::generate("fuzz CA", time::Duration::days(1)).expect("a CA")
});
static NODE: LazyLock<NodeIdentity> = LazyLock::new(|| NodeIdentity {
    tenant: TenantId::new(),
    node: NodeId::new(),
});

fuzz_target!(|data: &[u8]| {
    let _ = qb_pki::node_cert_info(data);
    let _ = qb_pki::replica_of(data);
    let _ = qb_pki::spki_pin(data);
    let Ok(csr_pem) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cert) = CA.sign_node_csr(csr_pem, &NODE, time::Duration::hours(1)) {
        let der = pem::parse(&cert.cert_pem)
            .expect("the CA writes PEM")
            .into_contents();
        let info = qb_pki::node_cert_info(&der).expect("a certificate the CA signed reads");
        assert_eq!(info.identity, *NODE, "the certificate names another node");
        assert_eq!(
            qb_pki::replica_of(&der),
            None,
            "a node certificate passes for a replica"
        );
    }
});
