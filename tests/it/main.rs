//! The one integration-test binary: real servers on 127.0.0.1:0, one module per area.

mod support;

mod configs;
mod durability;
mod faults;
mod hostile;
mod proxy;
mod viewer;
