//! Who sent a request: the ordered actor sources ([`actor`]) and the client's address
//! ([`client_ip`]), read from the request as it arrived.

pub mod actor;
pub mod client_ip;
