//! The one integration-test binary: real servers on 127.0.0.1:0, one module per area.

mod support;

mod admin;
mod configs;
mod durability;
mod events;
mod hints;
mod identity;
mod proxy;
mod tamper;
mod viewer;
