// The runtime under another name (as with `my_kconc = { package = "kconc-runtime" }`
// in Cargo.toml): `crate = ".."` says where the generated code finds it.
extern crate kconc_runtime as my_kconc;

use my_kconc::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", crate = "my_kconc")]
async fn bill(_order: Message) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
