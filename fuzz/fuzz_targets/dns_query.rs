//! DNS queries as the cluster DNS reads them from any pod: the fast path (answers written
//! ahead, the common query recognized byte by byte) must answer every query exactly as the
//! general path (hickory's message reader and writer) does, over UDP and TCP.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &[u8]| qb_dns::fuzz_query(query));
