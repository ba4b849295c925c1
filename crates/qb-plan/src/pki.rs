//! Cluster PKI (to be written).
