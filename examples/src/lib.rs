//! Examples for the domain-events workspace; see the `examples/*.rs` files.
